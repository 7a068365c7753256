package node

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/georepl/georepl/cmd/georepl/internal/storage"
	"github.com/georepl/georepl/core"
	"github.com/georepl/georepl/core/meta"
	"github.com/georepl/georepl/kmod/nbd"
)

// activityLog is the driver's activity log of one resource (core/doc.go):
// the set of 4 MiB extents that may hold writes not yet known to be
// identical on every node, kept durably in the metadata so that after an
// unclean shutdown those extents are resynchronised.
//
// An extent becomes active, durably, before a write on it: before Submit
// for an application request on a Primary (acquire, which pins the extent
// until the request completes), and before any write of a LocalOp reaches
// the data area (gate, through alRegion: a received write on a Secondary,
// a resync write on a sync target). Activations are written by one writer
// goroutine, batched: whoever activates waits for the transaction that
// holds its extent, never the loop goroutine.
//
// An extent is retired in three steps, oldest use first and only when a
// slot is needed (or at a clean shutdown):
//
//  1. observe (on the loop, with the engine, after persistBitmaps wrote
//     every dirty bitmap page): Engine.Settled reports the extent's range
//     settled and nothing used the extent since the observation began;
//  2. the writer flushes the data disk, and once a flush that began
//     after the observation completed (a volatile cache may still hold
//     the writes: a flush already running when they settled may miss
//     them), the extent becomes evictable if still unused. A failed flush
//     of the disk, the writer's or any other (storage.SyncGate), voids the
//     observations made before it: the writes may be lost, and only an
//     observation after the engine handled the failure, whose marks
//     persistBitmaps then wrote, counts;
//  3. an activation that needs its slot removes it; the next transaction
//     no longer holds it.
//
// Any activation of an extent (a new write on it) sends it back to step 1.
// Capacity: acquire waits while the log holds al_extents extents and none
// is evictable, and then asks the resource to reclaim (close the open
// epoch with a flush, observe again). gate never waits for a slot, only
// for the hard limit of one transaction (meta.MaxActivityLogExtents): the
// writes holding the slots may settle only after the write being gated.
//
// The extents, their order and their states are a storage.ALTable, which
// does no I/O and starts no goroutine; activityLog holds it under mu and
// does the waiting, the flushes and the metadata writes it asks for.
type activityLog struct {
	store   *meta.Store
	sync    *storage.SyncGate // flushes the data disk
	extents atomic.Uint64     // extents of the data area; a resize grows it

	mu      sync.Mutex
	changed *sync.Cond       // state changed: a transaction done, an extent evictable, closing
	t       *storage.ALTable // the extents and their state
	// failures counts failed transactions; failErr is the last error.
	failures     uint64
	failErr      error
	waitingSlots int  // acquires waiting for a slot
	reclaiming   bool // a reclaim is running
	writes       uint64
	closed       bool
	// detached: the disk was detached after an I/O error; activations
	// succeed at once and nothing is written (see detach).
	detached bool
	reclaim  func() // set by the resource; nil until then

	wake       chan struct{} // wakes the writer
	writerDone chan struct{}
}

// errALClosed is returned to activations after the resource went down.
var errALClosed = errors.New("activity log closed: the resource is going down")

// errALWrite is wrapped by the error of an activation whose transaction
// could not be written: the metadata disk is failing.
var errALWrite = errors.New("activity log write failed")

// reclaimInterval paces reclaim while acquires wait for a slot.
const reclaimInterval = 20 * time.Millisecond

func newActivityLog(store *meta.Store, gate *storage.SyncGate, capacity int) *activityLog {
	a := &activityLog{
		store:      store,
		sync:       gate,
		t:          storage.NewALTable(min(max(capacity, 1), meta.MaxActivityLogExtents)),
		wake:       make(chan struct{}, 1),
		writerDone: make(chan struct{}),
	}
	a.extents.Store(store.ActivityLogExtents())
	a.changed = sync.NewCond(&a.mu)
	go a.writer()
	return a
}

// extentRange returns the extents [first, last] that [off, off+length)
// touches; length must be positive.
func extentRange(off, length uint64) (first, last uint64) {
	return off / meta.ActivityLogExtentSize, (off + length - 1) / meta.ActivityLogExtentSize
}

// setReclaim installs fn, which the writer calls (at most every
// reclaimInterval) while acquires wait for a slot: it should make settled
// extents observable (close the open epoch, persistBitmaps).
func (a *activityLog) setReclaim(fn func()) {
	a.mu.Lock()
	a.reclaim = fn
	a.mu.Unlock()
}

// acquire makes the extents of [off, off+length) active and durable, and
// pins them until release is called. It waits for a slot when the log is
// full; ctx ends the wait for a slot (not for a transaction under way).
func (a *activityLog) acquire(ctx context.Context, off, length uint64) (release func(), err error) {
	if length == 0 {
		return func() {}, nil
	}
	first, last := extentRange(off, length)
	if err := a.activate(ctx, first, last, true, a.t.Capacity()); err != nil {
		return nil, err
	}
	return func() {
		a.mu.Lock()
		a.t.Unpin(first, last) // an extent activated after detach is not there
		a.mu.Unlock()
	}, nil
}

// detach stops the log for good: the disk was detached after an I/O
// error, so there is no local copy left to protect (its data is only on
// the peers, and the disk is resynchronised fully when it returns).
// Activations, waiting or later, succeed without writing anything, and
// close writes nothing.
func (a *activityLog) detach() {
	a.mu.Lock()
	a.detached = true
	a.changed.Broadcast()
	a.mu.Unlock()
	a.wakeWriter()
}

// gate makes the extents of [off, off+length) active and durable before a
// local write there. The engine has the write in flight, so the extents
// stay unsettled (and active) until it is done.
func (a *activityLog) gate(off, length uint64) error {
	if length == 0 {
		return nil
	}
	first, last := extentRange(off, length)
	return a.activate(context.Background(), first, last, false, meta.MaxActivityLogExtents)
}

func (a *activityLog) activate(ctx context.Context, first, last uint64, pin bool, limit int) error {
	if n := a.extents.Load(); last >= n {
		return fmt.Errorf("activity log: extent %d beyond the %d extents of the data", last, n)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	// stop unregisters the wake-up on ctx's end, registered only when the
	// activation waits for a slot (not on the hot path).
	var stop func() bool
	defer func() {
		if stop != nil {
			stop()
		}
	}()
	for {
		if a.detached {
			return nil
		}
		if a.closed {
			return errALClosed
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if a.t.Admit(first, last, limit) {
			break
		}
		if stop == nil && ctx.Done() != nil {
			stop = context.AfterFunc(ctx, func() {
				a.mu.Lock()
				a.changed.Broadcast()
				a.mu.Unlock()
			})
		}
		a.waitingSlots++
		a.wakeWriter()
		nbd.WillBlock(ctx) // the wait is for other requests: let the export read on
		a.changed.Wait()
		a.waitingSlots--
	}
	if a.t.Activate(first, last, pin) {
		a.wakeWriter()
	}
	failures := a.failures
	for {
		switch {
		case a.t.Durable(first, last) || a.detached:
			return nil
		case a.closed:
			if pin {
				a.t.Unpin(first, last)
			}
			return errALClosed
		case a.failures != failures:
			if pin {
				a.t.Unpin(first, last)
			}
			return fmt.Errorf("%w: %w", errALWrite, a.failErr)
		}
		nbd.WillBlock(ctx) // a metadata write
		a.changed.Wait()
	}
}

// reserve does for [off, off+length) what gate does, except wait: it
// reports false, changing nothing, when the extents need room the log
// does not have now. A write the engine has in flight cannot settle, so
// its reserved extents stay active until its gate, which then waits at
// most for the metadata write that makes them durable, never for room.
func (a *activityLog) reserve(off, length uint64) bool {
	if length == 0 {
		return true
	}
	first, last := extentRange(off, length)
	if last >= a.extents.Load() {
		return false // gate reports the error
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.detached {
		return true // gate lets everything through at once
	}
	if a.closed || !a.t.Admit(first, last, meta.MaxActivityLogExtents) {
		return false
	}
	if a.t.Activate(first, last, false) {
		a.wakeWriter()
	}
	return true
}

// observe checks, for every active extent not pinned and not yet known to
// be settled, whether settled (Engine.Settled, called by the holder of
// the engine's mutex) reports its range settled. Call it only right
// after every dirty bitmap page was written. It observes nothing while a
// failed flush of the data disk is not handled by the engine: the marks
// that cover what the failure may have lost are not written yet.
func (a *activityLog) observe(settled func(off, length uint64) bool) {
	failures, clean := a.sync.Clean()
	if !clean {
		return
	}
	a.mu.Lock()
	cands := a.t.Unsettled()
	a.mu.Unlock()
	if len(cands) == 0 {
		return
	}
	var settledNow []storage.ALCandidate
	for _, c := range cands {
		if settled(c.Extent*meta.ActivityLogExtentSize, meta.ActivityLogExtentSize) {
			settledNow = append(settledNow, c)
		}
	}
	a.mu.Lock()
	// Stamped now, after settled answered: a flush begun before this may
	// have begun before the writes were done.
	a.t.Observe(settledNow, failures)
	if len(settledNow) > 0 && a.waitingSlots > 0 {
		a.wakeWriter()
	}
	a.mu.Unlock()
}

func (a *activityLog) wakeWriter() {
	select {
	case a.wake <- struct{}{}:
	default:
	}
}

// writer writes transactions, and flushes the data disk to retire
// observed extents while the log is under pressure (acquires waiting for
// a slot, or more extents than the capacity), until close.
func (a *activityLog) writer() {
	defer close(a.writerDone)
	var lastReclaim time.Time
	for {
		a.mu.Lock()
		if a.closed || a.detached {
			a.mu.Unlock()
			return
		}
		var flush uint64
		if a.t.NeedsFlush(a.waitingSlots > 0) {
			flush = a.t.BeginFlush()
		}
		a.mu.Unlock()

		if flush != 0 {
			// It retires only what was observed before it began (a
			// volatile cache may still hold the settled writes), and
			// after the last failed flush was handled. A failure, its own
			// or another's, retires nothing: the gate reports it to the
			// engine, which marks what it may have lost, and the extents
			// wait for an observation after that.
			failures := a.sync.Failures()
			err := a.sync.Sync()
			if err != nil {
				time.Sleep(100 * time.Millisecond)
			}
			a.mu.Lock()
			if a.t.Flushed(flush, failures, err) {
				a.changed.Broadcast()
			}
			a.mu.Unlock()
		}

		a.mu.Lock()
		if a.t.Pending() && !a.closed {
			extents, gen := a.t.Transaction()
			a.mu.Unlock()
			err := a.store.WriteActivityLog(extents)
			a.mu.Lock()
			a.t.Written(gen, err)
			if err == nil {
				a.writes++
			} else {
				a.failures++
				a.failErr = err
			}
			a.changed.Broadcast()
			a.mu.Unlock()
			if err != nil {
				time.Sleep(100 * time.Millisecond)
			}
			continue
		}
		waiting := a.waitingSlots > 0
		pressure := waiting || a.t.OverCapacity()
		reclaim := a.reclaim
		start := waiting && reclaim != nil && !a.reclaiming && time.Since(lastReclaim) >= reclaimInterval
		if start {
			a.reclaiming = true
		}
		a.mu.Unlock()

		if start {
			// Off the writer: reclaiming waits for the engine, and
			// transactions must go on meanwhile.
			lastReclaim = time.Now()
			go func() {
				reclaim()
				a.mu.Lock()
				a.reclaiming = false
				a.mu.Unlock()
				a.wakeWriter()
			}()
		}
		if pressure {
			select {
			case <-a.wake:
			case <-time.After(reclaimInterval):
			}
			continue
		}
		<-a.wake
	}
}

// close stops the writer, flushes the data disk if flush, retires every
// extent observed settled if that flush succeeded (through the gate: no
// failure is left unhandled) and writes the final log: empty after a
// clean shutdown. Activations waiting or later fail with errALClosed. It
// returns the number of extents left active, and the flush's error.
func (a *activityLog) close(flush bool) (left int, err error) {
	a.mu.Lock()
	if a.closed {
		n := a.t.Size()
		a.mu.Unlock()
		return n, nil
	}
	a.closed = true
	a.changed.Broadcast()
	a.mu.Unlock()
	a.wakeWriter()
	<-a.writerDone

	a.mu.Lock()
	if a.detached {
		n := a.t.Size()
		a.mu.Unlock()
		return n, nil
	}
	var n uint64
	if flush {
		// Begun after every observation so far, as the writer's next
		// flush would have.
		n = a.t.BeginFlush()
	}
	a.mu.Unlock()
	if flush {
		failures := a.sync.Failures()
		err = a.sync.Sync()
		a.mu.Lock()
		a.t.Flushed(n, failures, err)
		a.mu.Unlock()
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.t.Retire()
	if a.t.Pending() || a.failures > 0 {
		extents, gen := a.t.Transaction()
		werr := a.store.WriteActivityLog(extents)
		a.t.Written(gen, werr)
		if werr == nil {
			a.writes++
		}
		err = errors.Join(err, werr)
	}
	return a.t.Size(), err
}

// stats returns the number of active extents and of transactions written.
func (a *activityLog) stats() (active int, writes uint64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.t.Size(), a.writes
}

// startActivityLog reports the activity log of an unclean shutdown, which
// openStorage marked, and lets the log reclaim slots through the engine.
func (r *resource) startActivityLog(st *localDisk) {
	if n := st.ALRecovered; n > 0 {
		msg := fmt.Sprintf("activity log of an unclean shutdown: %d extents marked (%s) out of sync for every peer; they are resynchronised from or to the peers when they connect",
			n, HumanBytes(uint64(n)*meta.ActivityLogExtentSize))
		r.log.Warn(msg)
		r.d.events.publish(Event{Time: time.Now().UTC(), Resource: r.cfg.Name, Node: r.self.Name, What: "activity-log", Detail: msg})
	}
	st.al.setReclaim(r.reclaimActivityLog)
}

// reclaimActivityLog helps writes that wait for an activity-log slot: on
// a Primary the open epoch's writes settle only once its barrier is
// acknowledged, so a flush closes it; then the loop observes settled
// extents. The flush is Internal: a failed flush of the disk owed to the
// application is not spent on it.
func (r *resource) reclaimActivityLog() {
	if r.isPrimary() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = r.submit(ctx, core.Request{Kind: core.ReqFlush, Internal: true})
		cancel()
	}
	_ = r.call(func() error {
		r.persistBitmaps()
		return nil
	})
}

// activate makes the extents of application request req active, durably,
// before it is submitted; release unpins them once it completed. Requests
// that write nothing, or that the engine refuses as out of range, need no
// extent.
func (r *resource) activate(ctx context.Context, req core.Request) (release func(), err error) {
	end := req.Offset + req.Length
	if req.Kind == core.ReqFlush || req.Kind == core.ReqRead || req.Length == 0 || end < req.Offset || end > r.st.size.Load() {
		return func() {}, nil
	}
	release, err = r.st.al.acquire(ctx, req.Offset, req.Length)
	if errors.Is(err, errALWrite) && r.cfg.Disk.OnIOError == core.DetachOnIOError {
		// The metadata disk fails: detach it (the activity log then
		// lets everything through) and go on through the peers.
		r.detachDisk(err.Error())
		return func() {}, nil
	}
	return release, err
}

// alRegion is the data area behind the activity log: every write, zeroing
// or trim activates its extents (gate) before it reaches the disk.
type alRegion struct {
	*storage.GatedRegion
	al *activityLog
}

func (d *alRegion) WriteAt(p []byte, off int64) (int, error) {
	if err := d.al.gate(uint64(off), uint64(len(p))); err != nil {
		return 0, err
	}
	return d.Region.WriteAt(p, off)
}

func (d *alRegion) WriteAtFUA(p []byte, off int64) (int, error) {
	if err := d.al.gate(uint64(off), uint64(len(p))); err != nil {
		return 0, err
	}
	return d.GatedRegion.WriteAtFUA(p, off)
}

func (d *alRegion) WriteZeroes(off, length int64) error {
	if err := d.al.gate(uint64(off), uint64(length)); err != nil {
		return err
	}
	return d.Region.WriteZeroes(off, length)
}

func (d *alRegion) Punch(off, length int64) error {
	if err := d.al.gate(uint64(off), uint64(length)); err != nil {
		return err
	}
	return d.Region.Punch(off, length)
}
