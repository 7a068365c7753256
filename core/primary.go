package core

import (
	"errors"
	"fmt"
	"time"

	"github.com/georepl/georepl/core/wire"
	"github.com/georepl/georepl/protocols"
)

// write is an application write on the primary, tracked from its start
// until it completed and every peer it was sent to wrote it and
// acknowledged the barrier closing its epoch: until then a lost connection
// must mark its range out of sync.
type write struct {
	id          RequestID
	kind        RequestKind
	off, length uint64
	seq, epoch  uint64
	ext         *extent // &local while the local write is in flight
	local       extent
	progBuf     [4]progress // prog's storage for up to four peers
	localDone   bool
	completed   bool
	fua         bool
	syncFails   uint64 // unsynced.failures when it started (errFlushOverlapped)
	// needPeer: the local disk was detached before the write was done
	// there, so a peer in sync must have written it (peerWrote) before
	// it completes.
	needPeer  bool
	peerWrote bool
	prog      []progress    // per peer, by peer index
	doneAt    time.Duration // Engine.ticked when it completed
}

// progress is one write's state towards one peer.
type progress struct {
	sent  bool // sent on the current connection and not yet forgotten
	level protocols.Level
	bytes uint64 // payload bytes still counted in peer.unacked
	// inSync: the peer was in sync with us when the write was sent to it,
	// so its WriteAck can stand in for a detached local disk.
	inSync bool
}

// flushReq is an application flush: a local flush plus the barrier that
// closed its epoch, acknowledged by the protocol C peers.
type flushReq struct {
	id        RequestID
	epoch     uint64
	localDone bool
	localErr  error
	wait      []bool // per peer index: BarrierAck(epoch) outstanding
	// needPeer: the local disk was detached, so a peer that was in sync
	// when the barrier was sent (standIn, per peer index) must acknowledge
	// it (covered) before the flush completes.
	needPeer bool
	standIn  []bool
	covered  bool

	tracking  bool   // its local flush tracks (flushIssued)
	syncFails uint64 // unsynced.failures when it started (errFlushOverlapped)
	plainAt   uint64 // Engine.plainWritten when its local flush was issued
	internal  bool   // Request.Internal
	// owed is a failed flush of the local disk that no application
	// request was told of (unsyncedWrites.owed): this flush fails with it.
	owed error
}

// Submit hands the engine an application request. A request on a node that
// is not Primary completes at once with ErrNotPrimary, an empty or
// out-of-range one with ErrOutOfRange, a malformed one with
// ErrInvalidRequest. Otherwise the request completes (Ready.Completed) when
// its protocol allows:
//
//   - a write when the local disk has it and every replicating peer reached
//     its protocol's level (A: queued within MaxBuffer, B: RecvAck, C:
//     WriteAck), or at once with ErrIO if the local write failed;
//   - a flush when the local flush is done and every protocol C peer that
//     was replicating acknowledged the barrier it sent, or at once when it
//     has nothing to make durable (startFlush);
//   - a read (ReqRead) when the local disk, or on a Diskless Primary a
//     peer in sync, returned the data.
//
// Once the local disk is detached (Diskless, see DetachOnIOError) a
// write or flush also needs a peer that was in sync when it was sent to
// have written it (WriteAck) or acknowledged its barrier, standing in for
// the local disk; if no such peer is left it completes with ErrIO. With
// no peer in sync connected, requests fail at once with ErrIO.
//
// A write overlapping an earlier write that is not yet done locally (or a
// resync read in flight) is held until that finishes, so every node applies
// overlapping writes in the same order.
func (e *Engine) Submit(r Request) {
	defer e.finish()
	if err := e.checkRequest(r); err != nil {
		e.rd.Completed = append(e.rd.Completed, Completion{ID: r.ID, Err: err})
		return
	}
	if r.Kind != ReqRead && e.holdsForQuorum() {
		if e.onNoQuorum == IOErrorOnNoQuorum {
			e.rd.Completed = append(e.rd.Completed, Completion{ID: r.ID, Err: e.noQuorumError(r.ID)})
			return
		}
		e.pending++
		e.suspended = append(e.suspended, r)
		return
	}
	e.admit(r)
}

// admit starts a valid request (Submit, or quorum returning for a
// suspended one).
func (e *Engine) admit(r Request) {
	if e.disk == Diskless && r.Kind != ReqRead && !e.anyInSync() {
		e.rd.Completed = append(e.rd.Completed, Completion{ID: r.ID,
			Err: fmt.Errorf("%w: %v request %d: the local disk is detached and no peer in sync is connected", ErrIO, r.Kind, r.ID)})
		return
	}
	e.pending++
	switch r.Kind {
	case ReqFlush:
		e.startFlush(r)
		return
	case ReqRead:
		e.startRead(r)
		return
	}
	if e.blocked(r, len(e.held)) {
		e.held = append(e.held, r)
		return
	}
	e.startWrite(r)
}

func (e *Engine) checkRequest(r Request) error {
	if e.role != Primary {
		return fmt.Errorf("%w: request %d: this node is %v", ErrNotPrimary, r.ID, e.role)
	}
	switch r.Kind {
	case ReqFlush:
		return nil
	case ReqWrite, ReqZeroes, ReqTrim, ReqRead:
	default:
		return fmt.Errorf("%w: request %d: unknown kind %d", ErrInvalidRequest, r.ID, r.Kind)
	}
	limit := uint64(MaxRequestLength)
	if r.Kind == ReqWrite || r.Kind == ReqRead {
		limit = MaxWriteLength
	}
	end := r.Offset + r.Length
	if r.Length == 0 || r.Length > limit || end < r.Offset || end > e.size {
		return fmt.Errorf("%w: request %d: [%d, +%d) on a device of %d bytes", ErrOutOfRange, r.ID, r.Offset, r.Length, e.size)
	}
	if (r.Kind == ReqWrite || r.Kind == ReqRead) && uint64(len(r.Data)) != r.Length {
		return fmt.Errorf("%w: request %d: %d bytes of data for length %d", ErrInvalidRequest, r.ID, len(r.Data), r.Length)
	}
	return nil
}

// blocked reports whether write r must wait: it overlaps a local operation
// in flight or one of the first n held writes (which arrived before it).
func (e *Engine) blocked(r Request, n int) bool {
	end := r.Offset + r.Length
	// A Diskless Primary issues no local operation: those still in flight
	// on the detached disk order nothing any more.
	if e.disk != Diskless && e.overlapsInflight(r.Offset, end, false) {
		return true
	}
	for _, h := range e.held[:n] {
		if h.Offset < end && r.Offset < h.Offset+h.Length {
			return true
		}
	}
	return false
}

// releaseHeld starts the held writes that no longer overlap anything in
// flight or held before them.
func (e *Engine) releaseHeld() {
	for i := 0; i < len(e.held); {
		r := e.held[i]
		if e.blocked(r, i) {
			i++
			continue
		}
		e.held = append(e.held[:i], e.held[i+1:]...)
		e.startWrite(r)
	}
}

// maybeCloseEpoch closes the open epoch before a write if a write of it
// completed (a later write may depend on it) or it is full.
func (e *Engine) maybeCloseEpoch() {
	if e.epochWrites > 0 && (e.epochCloses || e.epochWrites >= e.epochMax) {
		e.closeEpoch(0)
	}
}

// closeEpoch sends Barrier(epoch) to every replicating peer and opens the
// next epoch; it returns the closed epoch. The barrier's Seq tells the
// secondaries up to which write everything is confirmed on every peer it
// was sent to, and its Offset which nodes hold every write up to there
// (holders): a secondary marks the confirmed writes for every other node.
func (e *Engine) closeEpoch(flags wire.Flags) uint64 {
	closed := e.epoch
	confirmed, holders := e.confirmedSeq(), e.holders()
	for _, p := range e.peers {
		if p.replicating() {
			e.send(p, wire.Frame{Type: wire.TypeBarrier, Flags: flags, Epoch: closed, Seq: confirmed, Offset: holders})
			if flags&wire.FlagFlush != 0 {
				p.flushSent = closed
			}
		}
	}
	e.epoch++
	e.epochWrites = 0
	e.epochCloses = false
	return closed
}

func (e *Engine) startWrite(r Request) {
	n := uint64(len(r.Data))
	e.applyCongestion(n)
	if e.rotatePending {
		// Peers learn the new generation before its first write.
		e.newGeneration()
		e.announceState()
	}
	e.maybeCloseEpoch()
	e.seq++
	e.epochWrites++
	w := &write{id: r.ID, kind: r.Kind, off: r.Offset, length: r.Length, seq: e.seq, epoch: e.epoch,
		fua: r.FUA, syncFails: e.unsynced.failures}
	if len(e.peers) <= len(w.progBuf) {
		w.prog = w.progBuf[:len(e.peers)]
	} else {
		w.prog = make([]progress, len(e.peers))
	}
	op := LocalOp{Offset: r.Offset, Length: r.Length, FUA: r.FUA, Seq: w.seq, Epoch: w.epoch}
	f := wire.Frame{Type: wire.TypeData, Seq: w.seq, Epoch: w.epoch, Offset: r.Offset, Length: uint32(r.Length)}
	switch r.Kind {
	case ReqWrite:
		op.Kind, op.Data, f.Payload = OpWrite, r.Data, r.Data
	case ReqZeroes:
		op.Kind, f.Flags = OpZeroes, wire.FlagZeroes
	case ReqTrim:
		op.Kind, f.Flags = OpTrim, wire.FlagTrim
	}
	if r.FUA {
		f.Flags |= wire.FlagFUA
	}
	if e.disk == Diskless {
		w.localDone, w.needPeer = true, true
	} else {
		w.ext = e.addInflight(&w.local, r.Offset, r.Length, true)
		e.newOp(op, opOwner{write: w})
	}
	for i, p := range e.peers {
		if !p.replicating() {
			e.markOutOfSync(p, r.Offset, r.Length)
			continue
		}
		if p.cfg.OnCongestion == CongestionPullAhead && p.unacked+n > p.cfg.MaxBuffer {
			// A sync source (applyCongestion left it so): the resync
			// sends the block later; the application does not wait.
			before := p.bitmap.Count()
			e.markOutOfSync(p, r.Offset, r.Length)
			p.resyncTotal += e.blocksToBytes(p.bitmap.Count() - before)
			continue
		}
		pf := f
		if p.cfg.Protocol == protocols.B {
			pf.Flags |= wire.FlagWantRecvAck
		}
		if !r.FUA || p.cfg.Protocol != protocols.C {
			p.flushed, p.plainEpoch = false, w.epoch
		}
		e.send(p, pf)
		p.writesSent++
		p.dataSent += n
		p.pace.appSent += n
		p.unacked += n
		pr := &w.prog[i]
		pr.sent, pr.bytes, pr.inSync = true, n, e.inSync(p)
		if p.unacked <= p.cfg.MaxBuffer && len(p.blockedQ) == 0 {
			pr.level = protocols.Queued
		} else {
			p.blockedQ = append(p.blockedQ, w)
			p.blockedBytes += n
		}
	}
	e.writes = append(e.writes, w)
	e.bySeq[w.seq] = w
	if w.localDone {
		e.maybeComplete(w) // Diskless: fails at once if no peer in sync got it
	}
}

// applyCongestion applies the congestion policies before a write of n
// payload bytes: a replicating peer that the write would take beyond its
// MaxBuffer is dropped (CongestionDisconnect), or goes Ahead if it is
// Established (CongestionPullAhead; a sync source stays one, and startWrite
// marks the write for it instead). It runs before the write gets its
// generation and epoch, so that the write already belongs to a generation
// the peer will not have.
func (e *Engine) applyCongestion(n uint64) {
	for _, p := range e.peers {
		if p.cfg.OnCongestion == CongestionBlock || !p.replicating() || p.unacked+n <= p.cfg.MaxBuffer {
			continue
		}
		switch {
		case p.cfg.OnCongestion == CongestionDisconnect:
			e.dropPeer(p, fmt.Errorf("%w: node %d: %d bytes unacknowledged, a write of %d would exceed max_buffer %d",
				ErrCongested, p.cfg.ID, p.unacked, n, p.cfg.MaxBuffer), false)
		case p.repl == Established:
			e.goAhead(p, n)
		}
	}
}

// goAhead stops sending application writes to p: they are marked in its
// bitmap until the catch-up resync (maybeCatchUp). The open epoch closes
// first, so that the peer's last segment ends with a barrier: what it has
// is then a complete prefix of our writes, in epoch order.
func (e *Engine) goAhead(p *peer, n uint64) {
	if e.epochWrites > 0 {
		e.closeEpoch(0)
	}
	if p.bitmapUUID == 0 {
		// The generation the peer confirmed having, as after a lost
		// connection: if it adopts a newer one from a StateChange in
		// flight, marksCover relates the two.
		p.bitmapUUID = p.gen.Current
		if p.bitmapUUID == 0 {
			p.bitmapUUID = e.current
		}
		e.persistDirty = true
	}
	// The peer no longer gets every write: the next one starts a new
	// generation, as when a replicating peer is lost.
	e.rotatePending = true
	// A verify compares the peer's data with ours at one point of the
	// write stream; Behind, the peer accepts no more verify requests.
	e.stopVerify(p, "the peer fell behind (congestion)")
	p.aheadEpisodes++
	e.setRepl(p, Ahead, fmt.Sprintf("congested: %d bytes unacknowledged, a write of %d would exceed max_buffer %d", p.unacked, n, p.cfg.MaxBuffer))
	e.sendState(p)
}

// aheadLowWater is the unacknowledged bytes at or below which an Ahead
// peer is caught up by a resync.
func aheadLowWater(p *peer) uint64 { return p.cfg.MaxBuffer / 4 }

// maybeCatchUp starts the catch-up resync of an Ahead peer once what was
// in flight to it is acknowledged down to the low-water mark. The
// StateChange announcing SyncSource precedes every resync frame. A
// Diskless Primary has nothing to resync from: the peer stays Ahead.
func (e *Engine) maybeCatchUp(p *peer) {
	if p.repl != Ahead || p.conn != Connected || p.unacked > aheadLowWater(p) || e.disk == Diskless {
		return
	}
	e.startResync(p, false, "")
	p.resyncWhy.Ahead = true
	e.sendState(p)
}

func (e *Engine) appWriteDone(w *write, err error) {
	e.removeInflight(w.ext)
	w.ext = nil
	w.localDone = true
	e.noteWritten(w.off, w.length, !w.fua || err != nil)
	overlapped := err == nil && w.syncFails != e.unsynced.failures
	if overlapped {
		err = errFlushOverlapped
	} else if err != nil && e.ioFailed(w.kind.String(), w.off, w.length, err) {
		// detach made w wait for a peer in sync.
		e.maybeComplete(w)
		return
	}
	if err != nil && !w.needPeer {
		// The peers may have the new content where our disk has
		// something unknown: mark the range so that the next resync
		// makes them equal to what this disk returns.
		for _, p := range e.peers {
			e.markOutOfSync(p, w.off, w.length)
		}
		e.event(Event{What: "disk", Detail: fmt.Sprintf("%v of [%d, +%d) failed: %v; marked out of sync for every peer", w.kind, w.off, w.length, err)})
		if errors.Is(err, ErrNoSpace) {
			// The driver's error says ENOSPC to the client. The
			// operation failed before its flush: no flush failed.
			e.complete(w, fmt.Errorf("%v of [%d, +%d): %w", w.kind, w.off, w.length, err))
			return
		}
		e.complete(w, fmt.Errorf("%w: %v of [%d, +%d): %w", ErrIO, w.kind, w.off, w.length, err))
		if w.fua && !overlapped {
			// Its flush may be what failed.
			e.syncFailed(fmt.Sprintf("%v of [%d, +%d) with FUA", w.kind, w.off, w.length), err)
		}
		return
	}
	e.maybeComplete(w)
}

// maybeComplete completes w if its protocols allow it.
func (e *Engine) maybeComplete(w *write) {
	if w.completed || !w.localDone {
		return
	}
	if w.needPeer && !w.peerWrote {
		for _, pr := range w.prog {
			if pr.sent && pr.inSync && pr.level < protocols.Written {
				return // a peer in sync may still write it
			}
		}
		e.event(Event{What: "disk", Detail: fmt.Sprintf("%v of [%d, +%d) failed: the local disk is detached and no peer in sync wrote it", w.kind, w.off, w.length)})
		e.complete(w, fmt.Errorf("%w: %v of [%d, +%d): the local disk is detached and no peer in sync wrote it", ErrIO, w.kind, w.off, w.length))
		return
	}
	e.scratch = e.scratch[:0]
	for i, pr := range w.prog {
		e.scratch = append(e.scratch, protocols.Peer{Protocol: e.peers[i].cfg.Protocol, Connected: pr.sent, Level: pr.level})
	}
	if protocols.MayComplete(true, e.scratch) {
		e.complete(w, nil)
	}
}

func (e *Engine) complete(w *write, err error) {
	w.completed, w.doneAt = true, e.ticked
	e.finishRequest(w.id, err)
	if w.epoch == e.epoch {
		e.epochCloses = true
	}
}

// retired reports whether w needs no more tracking: completed, and written
// by every peer it was sent to, under a barrier that peer acknowledged.
func (e *Engine) retired(w *write) bool {
	if !w.completed {
		return false
	}
	for i, pr := range w.prog {
		if pr.sent && (pr.level != protocols.Written || e.peers[i].ackedEpoch < w.epoch) {
			return false
		}
	}
	return true
}

// Settled reports whether every write overlapping [off, off+length) is
// settled, so that no node can differ from another there because of it.
// On a Primary: completed to the application, and on every peer it was
// sent to behind an acknowledged barrier (or marked in that peer's
// bitmap); held writes are not settled. On a Secondary: done locally, and
// confirmed by the Primary to be on every peer (Barrier.Seq).
//
// The driver keeps an activity log extent active from before a write on it
// (Submit on a Primary, performing a received write's LocalOp on a
// Secondary) until its range is settled and a flush of the local disk
// begun after that has completed, and writes the bitmaps' dirty pages back
// before it retires an extent: then, after an unclean shutdown in any
// role, marking the active extents for every peer covers every block where
// this node may differ from another, including writes its own volatile
// cache lost.
func (e *Engine) Settled(off, length uint64) bool {
	end := off + length
	for _, r := range e.held {
		if r.Offset < end && off < r.Offset+r.Length {
			return false
		}
	}
	for _, w := range e.writes {
		if w.off < end && off < w.off+w.length && !e.retired(w) {
			return false
		}
	}
	if e.overlapsInflight(off, end, true) {
		return false
	}
	for _, p := range e.peers {
		if p.rx == nil {
			continue
		}
		for _, seg := range p.rx.segs {
			for _, w := range seg.writes {
				if w.op.Offset < end && off < w.op.Offset+w.op.Length {
					return false
				}
			}
		}
		for _, r := range p.rx.recent {
			if r.off < end && off < r.off+r.length {
				return false
			}
		}
	}
	for _, rx := range e.draining {
		if rx.holds(off, end) {
			return false
		}
	}
	return true
}

// confirmedSeq is the highest sequence number up to which every write is
// retired: on every peer it was sent to, behind an acknowledged barrier.
func (e *Engine) confirmedSeq() uint64 {
	for _, w := range e.writes {
		if !e.retired(w) {
			return w.seq - 1
		}
	}
	return e.seq
}

// holders is the set of nodes (bit i for node id i) that hold every write
// up to confirmedSeq: this node, and each peer replicating in sync with no
// marks. A peer that was sent a write but lost it with its connection, or
// missed writes while away, is not one of them, although confirmedSeq no
// longer waits for it: the secondaries that forget the write as confirmed
// must mark it for that peer, or a later resync between them (after a
// switchover, or the loss of this node) would not know the peer lacks it.
func (e *Engine) holders() uint64 {
	set := uint64(1) << e.self
	for _, p := range e.peers {
		if p.conn == Connected && p.repl == Established && p.disk != Diskless && p.bitmap.Count() == 0 {
			set |= 1 << p.cfg.ID
		}
	}
	return set
}

// trimWrites forgets the retired writes at the front of the list. Only
// finish calls it, so that no loop over e.writes sees the list change.
func (e *Engine) trimWrites() {
	n := 0
	for n < len(e.writes) && e.retired(e.writes[n]) {
		delete(e.bySeq, e.writes[n].seq)
		e.writes[n] = nil
		n++
	}
	if n > 0 {
		e.writes = e.writes[n:]
	}
}

// startFlush starts application flush r. An application flush skips
// what has nothing to make durable: the local flush when every local write
// done since the last local flush that succeeded was FUA and succeeded,
// and no failure is owed (localClean); and the wait for a protocol C peer
// that acknowledged a flush barrier sent after the last write it received
// without FUA (peer.flushed). A flush of the driver's own (Internal) goes
// the whole way: it may be for writes the engine does not see. The
// barrier goes out in any case: it orders what follows on the peers.
func (e *Engine) startFlush(r Request) {
	f := &flushReq{id: r.ID, wait: make([]bool, len(e.peers)), standIn: make([]bool, len(e.peers)), internal: r.Internal}
	skip := !r.Internal && e.disk != Diskless
	for i, p := range e.peers {
		f.wait[i] = p.replicating() && protocols.FlushNeedsPeer(p.cfg.Protocol) && !(skip && p.flushed)
		f.standIn[i] = p.replicating() && e.inSync(p)
	}
	f.epoch = e.closeEpoch(wire.FlagFlush)
	e.flushes = append(e.flushes, f)
	switch {
	case e.disk == Diskless:
		f.localDone, f.needPeer = true, true
	case skip && e.localClean():
		f.localDone = true
		e.maybeCompleteFlushes()
	default:
		f.tracking, f.syncFails, f.plainAt = e.flushIssued(), e.unsynced.failures, e.plainWritten
		if !f.internal {
			f.owed, e.unsynced.owed = e.unsynced.owed, nil
		}
		e.newOp(LocalOp{Kind: OpFlush}, opOwner{flush: f})
	}
}

// localClean reports whether the local disk holds nothing a flush would
// make durable: every local write done since the last local flush that
// succeeded was FUA and succeeded (plainWritten), and no failed flush is
// owed to the application.
func (e *Engine) localClean() bool {
	return e.plainWritten == e.plainFlushed && e.unsynced.owed == nil
}

func (e *Engine) appFlushDone(f *flushReq, err error) {
	overlapped := err == nil && (f.syncFails != e.unsynced.failures || f.owed != nil)
	if err == nil && !overlapped && !f.needPeer {
		e.plainFlushed = max(e.plainFlushed, f.plainAt)
	}
	switch {
	case overlapped && f.owed != nil:
		err = f.owed
	case overlapped:
		err = errFlushOverlapped
	}
	e.flushDone(f.tracking, err)
	switch {
	case overlapped:
	case err != nil && e.ioFailed("flush", 0, 0, err):
		err = nil // detach made f wait for a peer in sync
	case err != nil:
		// Completing f with ErrIO is not enough: the writes it was to
		// make durable may be gone here, and the next flush succeeds.
		e.syncFailed("flush", err)
	}
	if f.needPeer {
		err = nil
	}
	f.localDone, f.localErr = true, err
	e.maybeCompleteFlushes()
}

// maybeCompleteFlushes completes the flushes whose local flush is done and
// whose C peers acknowledged (or left).
func (e *Engine) maybeCompleteFlushes() {
	kept := e.flushes[:0]
	for _, f := range e.flushes {
		done := f.localDone
		standing := false // a stand-in may still acknowledge
		for i, wait := range f.wait {
			if wait && e.peers[i].ackedEpoch >= f.epoch {
				f.wait[i] = false
			}
			done = done && !f.wait[i]
			if f.standIn[i] && e.peers[i].ackedEpoch >= f.epoch {
				f.covered = true
			}
			standing = standing || f.standIn[i]
		}
		switch {
		case f.needPeer && !f.covered && f.localDone && !standing:
			e.finishRequest(f.id, fmt.Errorf("%w: flush: the local disk is detached and no peer in sync acknowledged it", ErrIO))
		case f.needPeer && !f.covered:
			kept = append(kept, f)
		case f.localDone && f.localErr != nil:
			e.finishRequest(f.id, fmt.Errorf("%w: flush: %w", ErrIO, f.localErr))
		case done:
			e.finishRequest(f.id, nil)
		default:
			kept = append(kept, f)
		}
	}
	clear(e.flushes[len(kept):])
	e.flushes = kept
}

// recvAck handles RecvAck(seq) from p.
func (e *Engine) recvAck(p *peer, f *wire.Frame) {
	w := e.bySeq[f.Seq]
	if w == nil || !w.prog[p.idx].sent {
		e.dropPeer(p, fmt.Errorf("%w: recv-ack for unknown write %d", ErrProtocol, f.Seq), false)
		return
	}
	e.raise(p, w, protocols.Received)
	e.maybeComplete(w)
}

// writeAck handles WriteAck(seq) for a data frame.
func (e *Engine) writeAck(p *peer, f *wire.Frame) {
	w := e.bySeq[f.Seq]
	if w == nil || !w.prog[p.idx].sent || w.prog[p.idx].level == protocols.Written {
		e.dropPeer(p, fmt.Errorf("%w: write-ack for unknown write %d", ErrProtocol, f.Seq), false)
		return
	}
	pr := &w.prog[p.idx]
	e.raise(p, w, protocols.Written)
	p.unacked -= pr.bytes
	p.pace.appAcked += pr.bytes
	pr.bytes = 0
	if f.Flags&wire.FlagNegative == 0 && pr.inSync {
		w.peerWrote = true
	}
	if f.Flags&wire.FlagNegative != 0 {
		e.markOutOfSync(p, w.off, w.length)
		e.peerEvent(p, "resync", "", "", fmt.Sprintf("write [%d, +%d) failed on the peer: marked out of sync", w.off, w.length))
	}
	e.unblockQueued(p)
	e.maybeComplete(w)
}

// raise lifts w's level towards p to at least l.
func (e *Engine) raise(p *peer, w *write, l protocols.Level) {
	pr := &w.prog[p.idx]
	if pr.level >= l {
		return
	}
	if pr.level == protocols.None {
		for i, b := range p.blockedQ {
			if b == w {
				p.blockedQ = append(p.blockedQ[:i], p.blockedQ[i+1:]...)
				p.blockedBytes -= pr.bytes
				break
			}
		}
	}
	pr.level = l
}

// unblockQueued moves writes held by p's MaxBuffer to Queued once the
// unacknowledged bytes up to and including each fit. The held writes are
// always the latest ones sent to p, so the bytes before the first of them
// are p.unacked minus theirs.
func (e *Engine) unblockQueued(p *peer) {
	for len(p.blockedQ) > 0 {
		w := p.blockedQ[0]
		pr := &w.prog[p.idx]
		if p.unacked-p.blockedBytes+pr.bytes > p.cfg.MaxBuffer {
			return
		}
		p.blockedQ[0] = nil
		p.blockedQ = p.blockedQ[1:]
		p.blockedBytes -= pr.bytes
		pr.level = protocols.Queued
		e.maybeComplete(w)
	}
}

// barrierAck handles BarrierAck(epoch) from p.
func (e *Engine) barrierAck(p *peer, f *wire.Frame) {
	if f.Epoch >= e.epoch || f.Epoch <= p.ackedEpoch {
		e.dropPeer(p, fmt.Errorf("%w: barrier-ack for epoch %d (open epoch %d, last acknowledged %d)", ErrProtocol, f.Epoch, e.epoch, p.ackedEpoch), false)
		return
	}
	p.ackedEpoch = f.Epoch
	if p.flushSent != 0 && p.ackedEpoch >= p.flushSent && p.flushSent >= p.plainEpoch {
		p.flushed = true
	}
	e.maybeCompleteFlushes()
}
