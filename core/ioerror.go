package core

import (
	"errors"
	"fmt"

	"github.com/georepl/georepl/core/wire"
)

// Detach makes the local disk Diskless, as a failed local operation does
// under DetachOnIOError: the driver calls it when an operation it performs
// outside the engine (a read served from the disk directly) failed, or
// when the operator detaches the disk. why says what happened, for the
// event. Detaching a Diskless disk does nothing. See Diskless for what
// follows.
func (e *Engine) Detach(why string) {
	defer e.finish()
	e.detach(why)
}

// FlushFailed reports a failed flush (fdatasync) of the local disk that
// no LocalDone carries: the driver flushed the disk for itself (its
// activity log, its metadata on the same disk, a shutdown), or the flush
// of a local operation failed only because another flush failed first and
// took the error. Linux reports a writeback error to one fdatasync of the
// file only and may drop the pages it could not write, so the driver must
// report every failure of every flush of the disk, here or through the
// LocalDone of the OpFlush or FUA operation that failed, and must not take
// a flush for a success while a failure it has not reported yet may have
// taken its error.
//
// It does what a failed OpFlush does. Under DetachOnIOError the disk is
// detached. Under PassOnIOError (see syncFailed) what was written since
// the last flush known to have succeeded, and what is in flight, is marked
// for every peer; a Primary fails the writes and flushes the failure may
// concern, and, unless an application's flush in flight fails with it,
// the next application flush (Request.Internal not set) fails with ErrIO:
// the application learns that writes it completed may be lost, as it
// would from its own failed flush. A Secondary drops its Primary, so that
// no later barrier is acknowledged for writes the failure may have lost.
// A Diskless disk ignores it.
func (e *Engine) FlushFailed(err error) {
	defer e.finish()
	switch {
	case e.disk == Diskless:
	case e.onIOError == DetachOnIOError:
		e.detach(fmt.Sprintf("a flush of the local disk failed: %v", err))
	default:
		e.syncFailed("flush of the local disk", err)
		for _, p := range e.peers {
			if e.role != Primary && p.role == Primary && p.conn == Connected {
				e.dropPeer(p, fmt.Errorf("%w: a flush of the local disk failed: %w", ErrIO, err), false)
			}
		}
	}
}

// ioFailed handles a failed local operation: under DetachOnIOError it
// detaches the disk and reports true, under PassOnIOError it reports
// false and the caller passes the error on. An operation that found no
// space (ErrNoSpace) is passed on under either policy: the disk is not
// failing.
func (e *Engine) ioFailed(what string, off, length uint64, err error) bool {
	if e.onIOError != DetachOnIOError || errors.Is(err, ErrNoSpace) {
		return false
	}
	e.detach(fmt.Sprintf("%s of [%d, +%d) failed: %v", what, off, length, err))
	return true
}

// detach makes the disk Diskless. Nothing may be read from it any more:
//
//   - writes and flushes not yet completed need a peer in sync instead
//     (write.needPeer), and reads go to one: their local operation, which
//     may never report on a failing disk, no longer counts;
//   - a verify from this node stops, and so does a resync (their reads
//     would come from the disk): the sync target's connection drops
//     (ErrResyncAborted) and the next handshake finds nothing to resync
//     from a Diskless node;
//   - a Secondary drops the connection to its Primary (ErrIO), which marks
//     every write this node did not acknowledge behind a barrier, and
//     sends it nothing more once it hears (hello) that it is Diskless;
//   - a Primary starts a new generation, so that the disk it detached,
//     should it come back with metadata that still says UpToDate, is never
//     taken for a copy of the data its peers go on to hold (its current
//     id is only in their history: a full resync).
func (e *Engine) detach(why string) {
	if e.disk == Diskless {
		return
	}
	e.setDisk(Diskless, why)
	e.unsynced.owed = nil // what this disk lost, the peers in sync have
	for _, rx := range e.draining {
		rx.dropUnissued(true)
	}
	e.pumpAll()
	for _, w := range e.writes {
		if !w.completed {
			w.needPeer, w.localDone = true, true
		}
	}
	for _, f := range e.flushes {
		f.needPeer, f.localDone, f.localErr = true, true, nil
	}
	for _, p := range e.peers {
		e.stopVerify(p, "the local disk was detached")
		switch {
		case p.conn != Connected:
		case p.rs != nil:
			e.dropPeer(p, fmt.Errorf("%w: the local disk of node %d was detached", ErrResyncAborted, e.self), false)
		case e.role != Primary && p.role == Primary:
			e.dropPeer(p, fmt.Errorf("%w: the local disk of node %d was detached (%s)", ErrIO, e.self, why), false)
		}
	}
	if e.role == Primary {
		e.newGeneration()
		for _, w := range e.writes {
			e.maybeComplete(w)
		}
		e.maybeCompleteFlushes()
		// Writes held behind a local operation in flight no longer wait
		// for it (it may never return from a failing disk): the peers
		// apply them in sequence order anyway.
		e.releaseHeld()
		for _, rq := range append([]*readReq(nil), e.reads...) {
			if rq.local {
				rq.local = false
				e.readFromPeer(rq)
			}
		}
	}
}

// inSync reports whether peer p holds our data, up to the writes in flight
// to it: Established, UpToDate, in our generation and without marks on
// either side (its marks for us do not count once we are Diskless: they
// are for our detached disk). Only such a peer stands in for a detached
// disk.
func (e *Engine) inSync(p *peer) bool {
	return p.conn == Connected && p.repl == Established && p.disk == UpToDate && p.role != Primary &&
		(p.gen.Current == e.current || p.adopting == e.current) && (p.gen.Bitmap == 0 || e.disk == Diskless) &&
		p.bitmapUUID == 0 && p.bitmap.Count() == 0
}

// anyInSync reports whether some peer is in sync (inSync).
func (e *Engine) anyInSync() bool {
	for _, p := range e.peers {
		if e.inSync(p) {
			return true
		}
	}
	return false
}

// readReq is an application read.
type readReq struct {
	id          RequestID
	off, length uint64
	data        []byte // the application's buffer
	peer        *peer  // the peer asked, nil while none is or the local disk reads
	tag         uint64 // the ReadRequest's Seq
	tried       uint64 // peers (bit by index) that failed it
	local       bool   // the local disk reads it (OpRead in flight)
}

func (e *Engine) startRead(r Request) {
	rq := &readReq{id: r.ID, off: r.Offset, length: r.Length, data: r.Data}
	e.reads = append(e.reads, rq)
	if e.disk != Diskless {
		rq.local = true
		e.newOp(LocalOp{Kind: OpRead, Offset: r.Offset, Length: r.Length}, opOwner{read: rq})
		return
	}
	e.readFromPeer(rq)
}

func (e *Engine) appReadDone(rq *readReq, data []byte, err error) {
	if !rq.local {
		return // detach sent it to a peer: what the disk returned no longer counts
	}
	rq.local = false
	if err == nil && uint64(len(data)) != rq.length {
		err = fmt.Errorf("read returned %d bytes, want %d", len(data), rq.length)
	}
	switch {
	case err == nil:
		copy(rq.data, data)
		e.completeRead(rq, nil)
	case e.ioFailed("read", rq.off, rq.length, err):
		e.readFromPeer(rq)
	default:
		e.completeRead(rq, fmt.Errorf("%w: read of [%d, +%d): %w", ErrIO, rq.off, rq.length, err))
	}
}

// readFromPeer asks the first peer in sync that has not failed rq to
// serve it, or fails rq with ErrIO if there is none.
func (e *Engine) readFromPeer(rq *readReq) {
	rq.peer = nil
	for _, p := range e.peers {
		if rq.tried&(1<<p.idx) == 0 && e.inSync(p) {
			e.readTag++
			rq.peer, rq.tag = p, e.readTag
			e.send(p, wire.Frame{Type: wire.TypeReadRequest, Seq: rq.tag, Offset: rq.off, Length: uint32(rq.length)})
			return
		}
	}
	e.completeRead(rq, fmt.Errorf("%w: read of [%d, +%d): the local disk is detached and no peer in sync can serve it", ErrIO, rq.off, rq.length))
}

func (e *Engine) completeRead(rq *readReq, err error) {
	for i, x := range e.reads {
		if x == rq {
			e.reads = append(e.reads[:i], e.reads[i+1:]...)
			break
		}
	}
	e.pending--
	e.rd.Completed = append(e.rd.Completed, Completion{ID: rq.id, Err: err})
}

// readReply handles ReadReply from p.
func (e *Engine) readReply(p *peer, f *wire.Frame) {
	var rq *readReq
	for _, x := range e.reads {
		if x.peer == p && x.tag == f.Seq {
			rq = x
		}
	}
	if rq == nil || f.Offset != rq.off || uint64(f.Length) != rq.length {
		e.violation(p, f, "read reply for no read asked")
		return
	}
	if f.Flags&wire.FlagNegative != 0 {
		rq.tried |= 1 << p.idx
		e.peerEvent(p, "read", "", "", fmt.Sprintf("the peer could not serve the read of [%d, +%d)", rq.off, rq.length))
		e.readFromPeer(rq)
		return
	}
	copy(rq.data, f.Payload)
	e.completeRead(rq, nil)
}

// readsLost asks another peer for the reads p was serving.
func (e *Engine) readsLost(p *peer) {
	// readFromPeer may complete (and remove) a read: iterate over a copy.
	for _, rq := range append([]*readReq(nil), e.reads...) {
		if rq.peer == p {
			rq.tried |= 1 << p.idx
			e.readFromPeer(rq)
		}
	}
}

// receiveReadRequest queues a ReadRequest from our Primary behind every
// write it sent before, or refuses it at once if this disk cannot serve
// it.
func (e *Engine) receiveReadRequest(p *peer, f *wire.Frame) {
	if p.repl != Established || e.disk != UpToDate {
		e.send(p, wire.Frame{Type: wire.TypeReadReply, Flags: wire.FlagNegative, Seq: f.Seq, Offset: f.Offset, Length: f.Length})
		return
	}
	e.queue(p.rx, &rxWrite{readTag: f.Seq, op: LocalOp{Kind: OpRead, Offset: f.Offset, Length: uint64(f.Length)}})
}

// rxReadDone answers a ReadRequest whose read finished.
func (e *Engine) rxReadDone(w *rxWrite, data []byte, err error) {
	p := w.seg.rx.peer
	if err == nil && uint64(len(data)) != w.op.Length {
		err = fmt.Errorf("read returned %d bytes, want %d", len(data), w.op.Length)
	}
	reply := wire.Frame{Type: wire.TypeReadReply, Seq: w.readTag, Offset: w.op.Offset, Length: uint32(w.op.Length)}
	if err != nil {
		reply.Flags |= wire.FlagNegative
		e.event(Event{What: "disk", Detail: fmt.Sprintf("read of [%d, +%d) for node %d failed: %v", w.op.Offset, w.op.Length, p.cfg.ID, err)})
	} else {
		reply.Payload = data
	}
	e.send(p, reply)
	if err != nil {
		e.ioFailed("read", w.op.Offset, w.op.Length, err)
	}
}

// unsyncedGrains bounds the bits of the map of what the local disk wrote
// since its last successful flush: a grain is a run of blocks.
const unsyncedGrains = 1 << 16

// unsyncedWrites remembers, in grains, where the local disk was written
// and no successful flush is known to cover it yet: what a failed flush
// may have lost. A failed fdatasync must be taken at its word: Linux
// reports a writeback error to one fsync only and may drop the pages it
// could not write, so the next flush succeeds although the data never
// reached the disk, while the peers have it.
type unsyncedWrites struct {
	grain uint64 // bytes per bit, a multiple of the block size
	// cur holds the writes done since the tracking flush was issued (or
	// since the last one succeeded, while none is in flight), prev those
	// done before it: the tracking flush covers them if it succeeds.
	cur, prev *Bitmap
	tracking  bool // a tracking flush is in flight
	// failures counts syncFailed (errFlushOverlapped).
	failures uint64
	// owed is a failure of a Primary's flush that no application request
	// failed with: the next application flush (flushReq.owed) does.
	owed error
}

// errFlushOverlapped fails a Primary's write or flush whose local
// operation was in flight, or done, when a flush of the local disk failed:
// a flush (or FUA write) may succeed only because the failed one was told
// about the lost writes, and a write's data may be among them.
var errFlushOverlapped = errors.New("a flush of the local disk failed meanwhile")

// noteWritten records that a local write over [off, off+length) is done
// (or failed): it is not known durable until a flush issued after it
// succeeds. plain: it was not FUA, or it failed (plainWritten).
func (e *Engine) noteWritten(off, length uint64, plain bool) {
	if plain {
		e.plainWritten++
	}
	u := &e.unsynced
	if u.cur == nil {
		bs := uint64(e.blockSize)
		blocks := (e.size + bs - 1) / bs
		u.grain = (blocks + unsyncedGrains - 1) / unsyncedGrains * bs
		grains := (e.size + u.grain - 1) / u.grain
		u.cur, u.prev = NewBitmap(grains), NewBitmap(grains)
	}
	first := off / u.grain
	u.cur.SetRange(first, (off+length+u.grain-1)/u.grain-first)
}

// flushIssued notes that a local flush is being issued and reports whether
// it tracks: if it succeeds, every write done before it is durable. Only
// one flush tracks at a time; the others cover nothing here.
func (e *Engine) flushIssued() (tracking bool) {
	u := &e.unsynced
	if u.tracking || u.cur == nil {
		return false
	}
	for g, ok := u.cur.NextSet(0); ok; g, ok = u.cur.NextSet(g) {
		end := u.cur.NextClear(g)
		u.prev.SetRange(g, end-g)
		g = end
	}
	u.cur.ClearRange(0, u.cur.Len())
	u.tracking = true
	return true
}

// flushDone notes the result of a local flush issued with flushIssued.
func (e *Engine) flushDone(tracking bool, err error) {
	u := &e.unsynced
	if !tracking {
		return
	}
	u.tracking = false
	if err == nil {
		u.prev.ClearRange(0, u.prev.Len())
	}
}

// syncFailed handles a failed flush of the local disk (an OpFlush, or a
// FUA operation) that did not detach it: every write not known durable,
// and every write in flight, may be lost here while the peers have it, so
// it is marked for every peer, and the next resync makes them equal to
// what this disk returns. A Secondary's Primary resyncs it: the
// Secondary's marks cover the writes it acknowledged behind barriers
// without a flush, which the Primary forgot (see rxFlushDone).
func (e *Engine) syncFailed(what string, err error) {
	u := &e.unsynced
	if e.disk == Diskless {
		return
	}
	u.failures++
	e.plainWritten++
	mark := func(off, length uint64) {
		for _, p := range e.peers {
			if e.role != Primary && p.bitmapUUID == 0 && e.current != 0 {
				// As after a crash (the activity log's marks): the
				// marks begin at our own generation (marksCover), not
				// at one our Primary moved on to.
				p.bitmapUUID = e.current
				e.persistDirty, e.announce = true, true
			}
			e.markUncovered(p, off, length)
		}
	}
	if u.cur != nil {
		for _, b := range []*Bitmap{u.prev, u.cur} {
			for g, ok := b.NextSet(0); ok; g, ok = b.NextSet(g) {
				end := b.NextClear(g)
				mark(g*u.grain, min(end*u.grain, e.size)-g*u.grain)
				g = end
			}
			b.ClearRange(0, b.Len())
		}
	}
	for _, x := range e.inflight {
		if x.write {
			mark(x.off, x.end-x.off)
		}
	}
	e.event(Event{What: "disk", Detail: fmt.Sprintf("%s failed: %v; what was written since the last successful flush is marked out of sync for every peer",
		what, err)})
	// A write done here and not yet completed (it waits for a peer) may
	// be lost: it fails, and the resync makes the peers equal to this
	// disk. Those in flight fail when they are done (appWriteDone).
	for _, w := range e.writes {
		if w.localDone && !w.completed && !w.needPeer {
			e.complete(w, fmt.Errorf("%w: %v of [%d, +%d): %w", ErrIO, w.kind, w.off, w.length, errFlushOverlapped))
		}
	}
	if e.role != Primary {
		return
	}
	// Writes that completed before may be lost too. An application flush
	// whose local flush is in flight fails (appFlushDone: this one, or
	// errFlushOverlapped) and tells the application; without one, the
	// next application flush must, or it would acknowledge them as
	// durable.
	for _, f := range e.flushes {
		if !f.localDone && !f.internal {
			return
		}
	}
	e.unsynced.owed = fmt.Errorf("an earlier %s failed: %w; writes completed before it may be lost", what, err)
}
