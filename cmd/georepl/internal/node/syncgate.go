package node

import (
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/georepl/georepl/kmod"
)

// syncGate is the one owner of the flushes (fdatasync) of a node's backing
// disk: the data area, and the metadata when it is internal, since both
// are one open file. Linux reports a writeback error to one fdatasync of
// the file only, and may drop the pages it could not write; the next
// fdatasync succeeds. The engine (OpFlush, FUA operations), the activity
// log, the metadata and the shutdown all flush this disk, often at the
// same time: a failure one of them takes may concern the writes another
// relies on. So every flush goes through the gate, and the rule is:
//
// A flush succeeds only if it succeeded itself, no other flush of the disk
// failed while it ran, and every earlier failure had been handled by the
// engine when it began. Otherwise it fails with an error that names the
// failure (flushDoubtError).
//
// The engine handles a failure once it was told: through the LocalDone of
// the engine operation whose flush failed (syncOp, then delivered), or
// with Engine.FlushFailed for every other failure, which the gate hands to
// the resource's reporter (setReport, takeUnreported). Handling marks what
// the failure may have lost, or detaches the disk; until then nothing may
// take a flush for proof of durability: not an application flush, not the
// activity log retiring an extent.
//
// A metadata write (syncSince) concerns only what it wrote itself: it
// fails if a flush of the disk failed since its first write, whether or
// not the engine has handled that failure yet.
type syncGate struct {
	mu  sync.Mutex
	dev interface{ Sync() error } // guarded by mu only for tests, which swap it
	// report wakes the reporter after a failure that no engine operation
	// claimed; nil until the resource sets it.
	report func()
	count  uint64       // failures so far (syncFailure.n)
	last   *syncFailure // the latest failure
	// unhandled are the failures the engine has not handled yet, oldest
	// first.
	unhandled []*syncFailure
}

func newSyncGate(dev interface{ Sync() error }) *syncGate {
	return &syncGate{dev: dev}
}

// syncFailure is a failed flush of the disk, the error it returned.
type syncFailure struct {
	n   uint64 // its number among the gate's failures
	err error
	// claimed: an engine operation's flush, reported through its
	// LocalDone (syncOp), not by the reporter.
	claimed bool
}

func (f *syncFailure) Error() string { return f.err.Error() }
func (f *syncFailure) Unwrap() error { return f.err }

// flushDoubtError fails a flush that succeeded itself but may have
// succeeded only because another flush failed and took the error.
type flushDoubtError struct {
	failure *syncFailure // the failure it names
	// while: that failure happened while the flush ran (else the engine
	// had not handled it when the flush began).
	while bool
	// hides are the failures not yet handled that the flush may hide:
	// reporting this error through LocalDone handles them (delivered).
	hides []*syncFailure
	// claimed: an engine operation's flush (syncOp).
	claimed bool
}

func (e *flushDoubtError) Error() string {
	if e.while {
		return fmt.Sprintf("another flush of the disk failed while this one ran and may have taken its error: %v", e.failure.err)
	}
	return fmt.Sprintf("an earlier flush of the disk failed and is not handled yet: %v", e.failure.err)
}

func (e *flushDoubtError) Unwrap() error { return e.failure.err }

// Sync flushes the disk for a caller outside the engine (the activity log,
// the shutdown, a rollback); the gate reports its failure to the engine.
func (g *syncGate) Sync() error { return g.flush(false) }

// syncOp flushes the disk for an engine operation (an OpFlush, a FUA
// write or checksum): its error goes to the engine through the
// operation's LocalDone, after which the caller calls delivered.
func (g *syncGate) syncOp() error { return g.flush(true) }

func (g *syncGate) flush(claimed bool) error {
	g.mu.Lock()
	if len(g.unhandled) > 0 {
		// It could not succeed: do not even ask the disk.
		err := &flushDoubtError{failure: g.unhandled[0], hides: slices.Clone(g.unhandled), claimed: claimed}
		g.mu.Unlock()
		return err
	}
	start, dev := g.count, g.dev
	g.mu.Unlock()
	return g.done(dev.Sync(), start, claimed)
}

// syncSince flushes the disk for a metadata write that began when
// failures returned start.
func (g *syncGate) syncSince(start uint64) error {
	g.mu.Lock()
	dev := g.dev
	g.mu.Unlock()
	return g.done(dev.Sync(), start, false)
}

// done records the result of a flush that began after failure number
// start, and returns what the caller may believe of it.
func (g *syncGate) done(err error, start uint64, claimed bool) error {
	g.mu.Lock()
	if err != nil {
		g.count++
		f := &syncFailure{n: g.count, err: err, claimed: claimed}
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
	doubt := &flushDoubtError{failure: g.last, while: true, claimed: claimed}
	for _, f := range g.unhandled {
		if f.n > start {
			doubt.hides = append(doubt.hides, f)
		}
	}
	return doubt
}

// failures returns the number of failures so far.
func (g *syncGate) failures() uint64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.count
}

// clean returns the number of failures so far, and whether the engine
// has handled every one of them.
func (g *syncGate) clean() (failures uint64, ok bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.count, len(g.unhandled) == 0
}

// delivered notes that the engine got err, an operation's error, through
// its LocalDone. If err is the error of the operation's flush (syncOp),
// the engine handled it as a failed flush, and with it the failures it
// names. Other errors may wrap a failure of another flush (a write whose
// activity-log transaction failed): the reporter tells the engine of
// those. Call it with the engine's lock held, right after LocalDone.
func (g *syncGate) delivered(err error) {
	var handled []*syncFailure
	var f *syncFailure
	var doubt *flushDoubtError
	switch {
	case errors.As(err, &doubt) && doubt.claimed:
		handled = doubt.hides
	case errors.As(err, &f) && f.claimed:
		handled = []*syncFailure{f}
	default:
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.unhandled = slices.DeleteFunc(g.unhandled, func(u *syncFailure) bool { return slices.Contains(handled, u) })
}

// takeUnreported returns the failures not yet handled that no engine
// operation claimed, and counts them as handled: the caller, holding the
// engine's lock, hands each to Engine.FlushFailed.
func (g *syncGate) takeUnreported() []*syncFailure {
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []*syncFailure
	g.unhandled = slices.DeleteFunc(g.unhandled, func(f *syncFailure) bool {
		if !f.claimed {
			out = append(out, f)
		}
		return !f.claimed
	})
	return out
}

// setReport installs fn, called (without locks held) after each failure
// no engine operation claimed; it should run the reporter. Failures
// already waiting are reported at once.
func (g *syncGate) setReport(fn func()) {
	g.mu.Lock()
	g.report = fn
	waiting := slices.ContainsFunc(g.unhandled, func(f *syncFailure) bool { return !f.claimed })
	g.mu.Unlock()
	if waiting {
		fn()
	}
}

// gatedRegion is a view of the backing disk whose Sync goes through the
// gate: the data area.
type gatedRegion struct {
	*kmod.Region
	sync *syncGate
}

func (d *gatedRegion) Sync() error { return d.sync.Sync() }

// gatedMeta is the internal metadata, on the backing disk: its flushes
// go through the gate (syncSince), from the first write they cover.
type gatedMeta struct {
	*kmod.Region
	sync *syncGate

	mu      sync.Mutex
	writing bool   // written since the last Sync
	since   uint64 // failures when the first of those writes began
}

func (d *gatedMeta) WriteAt(p []byte, off int64) (int, error) {
	d.mu.Lock()
	if !d.writing {
		d.writing, d.since = true, d.sync.failures()
	}
	d.mu.Unlock()
	return d.Region.WriteAt(p, off)
}

func (d *gatedMeta) Sync() error {
	d.mu.Lock()
	since, writing := d.since, d.writing
	d.writing = false
	d.mu.Unlock()
	if !writing {
		since = d.sync.failures()
	}
	return d.sync.syncSince(since)
}

// reportSyncFailures tells the engine of g's failures that no engine
// operation reported (Engine.FlushFailed), and performs what that asks:
// the marks are durable, or the disk detached, before the resource's next
// holder of the engine can look. Run on a goroutine of its own: a failure
// may be found with the engine's lock held (a metadata write).
func (r *resource) reportSyncFailures(g *syncGate) {
	r.emu.Lock()
	if r.stopped || r.engine == nil || r.st == nil || r.st.sync != g {
		// Down: the failures stay unhandled, so the last flush fails
		// and the activity log keeps its extents.
		r.unlockEngine()
		return
	}
	eng := r.engine
	for _, f := range g.takeUnreported() {
		r.log.Error("a flush of the data disk failed outside the engine's operations; the engine handles it as a failed flush", "err", f.err)
		eng.FlushFailed(f)
	}
	r.process()
	w := r.takeWork()
	r.unlockEngine()
	r.exec.carryOut(w, loopHolder)
}
