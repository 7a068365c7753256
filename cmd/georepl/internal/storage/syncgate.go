package storage

import (
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/georepl/georepl/kmod"
)

// SyncGate is the one owner of the flushes (fdatasync) of a node's backing
// disk: the data area, and the metadata when it is internal, since both
// are one open file. Linux reports a writeback error to one fdatasync of
// the file only, and may drop the pages it could not write; the next
// fdatasync succeeds; a durable write (RWF_DSYNC, a FUA write) is such a
// flush too. The engine (OpFlush, FUA operations), the activity
// log, the metadata and the shutdown all flush this disk, often at the
// same time: a failure one of them takes may concern the writes another
// relies on. So every flush goes through the gate, and the rule is:
//
// A flush succeeds only if it succeeded itself, no other flush of the disk
// failed while it ran, and every earlier failure had been handled by the
// engine when it began. Otherwise it fails with an error that names the
// failure (FlushDoubtError).
//
// The engine handles a failure once it was told: through the LocalDone of
// the engine operation whose flush failed (SyncOp, then Delivered), or
// with Engine.FlushFailed for every other failure, which the gate hands to
// the resource's reporter (SetReport, TakeUnreported). Handling marks what
// the failure may have lost, or detaches the disk; until then nothing may
// take a flush for proof of durability: not an application flush, not the
// activity log retiring an extent.
//
// A metadata write (syncSince) concerns only what it wrote itself: it
// fails if a flush of the disk failed since its first write, whether or
// not the engine has handled that failure yet.
type SyncGate struct {
	mu  sync.Mutex
	dev interface{ Sync() error } // the disk; set once, by NewSyncGate
	// report wakes the reporter after a failure that no engine operation
	// claimed; nil until the resource sets it.
	report func()
	count  uint64       // failures so far (SyncFailure.n)
	last   *SyncFailure // the latest failure
	// unhandled are the failures the engine has not handled yet, oldest
	// first.
	unhandled []*SyncFailure
}

// NewSyncGate returns the gate of the disk dev flushes. Its reporter is
// set later (SetReport): the resource that handles failures starts after
// the disk is open.
func NewSyncGate(dev interface{ Sync() error }) *SyncGate {
	return &SyncGate{dev: dev}
}

// SyncFailure is a failed flush of the disk, the error it returned.
type SyncFailure struct {
	n   uint64 // its number among the gate's failures
	err error
	// claimed: an engine operation's flush, reported through its
	// LocalDone (SyncOp), not by the reporter.
	claimed bool
}

func (f *SyncFailure) Error() string { return f.err.Error() }
func (f *SyncFailure) Unwrap() error { return f.err }

// FlushDoubtError fails a flush that succeeded itself but may have
// succeeded only because another flush failed and took the error.
type FlushDoubtError struct {
	failure *SyncFailure // the failure it names
	// while: that failure happened while the flush ran (else the engine
	// had not handled it when the flush began).
	while bool
	// hides are the failures not yet handled that the flush may hide:
	// reporting this error through LocalDone handles them (Delivered).
	hides []*SyncFailure
	// claimed: an engine operation's flush (SyncOp).
	claimed bool
}

func (e *FlushDoubtError) Error() string {
	if e.while {
		return fmt.Sprintf("another flush of the disk failed while this one ran and may have taken its error: %v", e.failure.err)
	}
	return fmt.Sprintf("an earlier flush of the disk failed and is not handled yet: %v", e.failure.err)
}

func (e *FlushDoubtError) Unwrap() error { return e.failure.err }

// Sync flushes the disk for a caller outside the engine (the activity log,
// the shutdown, a rollback); the gate reports its failure to the engine.
func (g *SyncGate) Sync() error { return g.flush(false) }

// SyncOp flushes the disk for an engine operation (an OpFlush; a
// write-zeroes, trim or checksum with FUA; a FUA write flushes with
// WriteOp): its error goes to the engine through the operation's
// LocalDone, after which the caller calls Delivered.
func (g *SyncGate) SyncOp() error { return g.flush(true) }

// WriteOp performs write, a durable write (kmod.Region.WriteAtFUA) of an
// engine operation, as a flush of the disk: Linux flushes its range as
// fdatasync would, and reports to it, once, a writeback error of any part
// of the disk. So its failure (one that wraps kmod.ErrDurableWrite) is a
// failed flush, claimed as SyncOp's; and its success proves its own data
// durable only as a flush's would: if no other flush failed while it
// ran, and every earlier failure was handled when it began (else it
// fails with a FlushDoubtError, though the write is done). A write
// refused before it reached the disk fails with its own error.
func (g *SyncGate) WriteOp(write func() error) error {
	g.mu.Lock()
	var earlier *FlushDoubtError
	if len(g.unhandled) > 0 {
		earlier = &FlushDoubtError{failure: g.unhandled[0], hides: slices.Clone(g.unhandled), claimed: true}
	}
	start := g.count
	g.mu.Unlock()
	err := write()
	if err != nil && !errors.Is(err, kmod.ErrDurableWrite) {
		return err
	}
	if err = g.done(err, start, true); err == nil && earlier != nil {
		return earlier
	}
	return err
}

func (g *SyncGate) flush(claimed bool) error {
	g.mu.Lock()
	if len(g.unhandled) > 0 {
		// It could not succeed: do not even ask the disk.
		err := &FlushDoubtError{failure: g.unhandled[0], hides: slices.Clone(g.unhandled), claimed: claimed}
		g.mu.Unlock()
		return err
	}
	start := g.count
	g.mu.Unlock()
	return g.done(g.dev.Sync(), start, claimed)
}

// syncSince flushes the disk for a metadata write that began when
// Failures returned start.
func (g *SyncGate) syncSince(start uint64) error {
	return g.done(g.dev.Sync(), start, false)
}

// done records the result of a flush that began after failure number
// start, and returns what the caller may believe of it.
func (g *SyncGate) done(err error, start uint64, claimed bool) error {
	g.mu.Lock()
	if err != nil {
		g.count++
		f := &SyncFailure{n: g.count, err: err, claimed: claimed}
		g.last = f
		g.unhandled = append(g.unhandled, f)
		report := g.report
		g.mu.Unlock()
		if !claimed && report != nil {
			report()
		}
		return f
	}
	defer g.mu.Unlock()
	if g.count == start {
		return nil
	}
	doubt := &FlushDoubtError{failure: g.last, while: true, claimed: claimed}
	for _, f := range g.unhandled {
		if f.n > start {
			doubt.hides = append(doubt.hides, f)
		}
	}
	return doubt
}

// Failures returns the number of failures so far.
func (g *SyncGate) Failures() uint64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.count
}

// Clean returns the number of failures so far, and whether the engine
// has handled every one of them.
func (g *SyncGate) Clean() (failures uint64, ok bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.count, len(g.unhandled) == 0
}

// Delivered notes that the engine got err, an operation's error, through
// its LocalDone. If err is the error of the operation's flush (SyncOp),
// the engine handled it as a failed flush, and with it the failures it
// names. Other errors may wrap a failure of another flush (a write whose
// activity-log transaction failed): the reporter tells the engine of
// those. Call it with the engine's lock held, right after LocalDone.
func (g *SyncGate) Delivered(err error) {
	var handled []*SyncFailure
	var f *SyncFailure
	var doubt *FlushDoubtError
	switch {
	case errors.As(err, &doubt) && doubt.claimed:
		handled = doubt.hides
	case errors.As(err, &f) && f.claimed:
		handled = []*SyncFailure{f}
	default:
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.unhandled = slices.DeleteFunc(g.unhandled, func(u *SyncFailure) bool { return slices.Contains(handled, u) })
}

// TakeUnreported returns the failures not yet handled that no engine
// operation claimed, and counts them as handled: the caller, holding the
// engine's lock, hands each to Engine.FlushFailed.
func (g *SyncGate) TakeUnreported() []*SyncFailure {
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []*SyncFailure
	g.unhandled = slices.DeleteFunc(g.unhandled, func(f *SyncFailure) bool {
		if !f.claimed {
			out = append(out, f)
		}
		return !f.claimed
	})
	return out
}

// SetReport installs fn, called (without locks held) after each failure
// no engine operation claimed; it should run the reporter. Failures
// already waiting are reported at once.
func (g *SyncGate) SetReport(fn func()) {
	g.mu.Lock()
	g.report = fn
	waiting := slices.ContainsFunc(g.unhandled, func(f *SyncFailure) bool { return !f.claimed })
	g.mu.Unlock()
	if waiting {
		fn()
	}
}

// GatedRegion is a view of the backing disk whose Sync goes through the
// gate: the data area.
type GatedRegion struct {
	*kmod.Region
	Gate *SyncGate
}

// Sync flushes the disk through the gate.
func (d *GatedRegion) Sync() error { return d.Gate.Sync() }

// WriteAtFUA writes p at off durably (kmod.Region.WriteAtFUA) for an
// engine operation (a FUA write), its flush through the gate (WriteOp).
func (d *GatedRegion) WriteAtFUA(p []byte, off int64) (n int, err error) {
	err = d.Gate.WriteOp(func() error {
		n, err = d.Region.WriteAtFUA(p, off)
		return err
	})
	return n, err
}

// GatedMeta is the internal metadata, on the backing disk: its flushes
// go through the gate (syncSince), from the first write they cover.
type GatedMeta struct {
	*kmod.Region
	Gate *SyncGate

	mu      sync.Mutex
	writing bool   // written since the last Sync
	since   uint64 // failures when the first of those writes began
}

// WriteAt writes p at off, noting the gate's failures at the first write
// since the last Sync.
func (d *GatedMeta) WriteAt(p []byte, off int64) (int, error) {
	d.mu.Lock()
	if !d.writing {
		d.writing, d.since = true, d.Gate.Failures()
	}
	d.mu.Unlock()
	return d.Region.WriteAt(p, off)
}

// Sync flushes the disk through the gate: it fails if a flush of the disk
// failed since the first write it covers.
func (d *GatedMeta) Sync() error {
	d.mu.Lock()
	since, writing := d.since, d.writing
	d.writing = false
	d.mu.Unlock()
	if !writing {
		since = d.Gate.Failures()
	}
	return d.Gate.syncSince(since)
}
