package core

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"slices"

	"github.com/georepl/georepl/core/wire"
)

// receiver applies the writes one peer sends us (data from the Primary,
// resync data from our sync source) in the order that keeps this disk a
// crash-consistent image of the sender's:
//
//   - writes between two barriers form a segment; only the oldest segment
//     has writes on the disk, so no write of epoch k+1 starts before every
//     write of epoch k is done (and flushed, if asked);
//   - within the segment, a write overlapping an earlier one that is not
//     done waits for it (arrival order).
//
// Across receivers, what arrived first is applied first: a receiver
// issues nothing while another one still holds something it received
// before this one's oldest (pendingSince). That orders the writes of a
// Primary that was lost, or demoted since, before those of the next one.
// When the connection is lost, the receiver goes on applying, by the same
// rules, every write it received (see abandonReceiver).
type receiver struct {
	peer *peer
	segs []*segment // oldest first; the last one is open (no barrier yet)
	// pendingSince orders the receivers that hold something (see
	// Engine.queue): the arrival stamp of the first frame queued since
	// the receiver was last drained.
	pendingSince uint64
	// lost: the connection is gone. The receiver is in Engine.draining
	// until what it received is on the disk, and acknowledges nothing.
	lost bool
	// recent are the data writes received that the Primary has not yet
	// confirmed to be on every peer (Barrier.Seq). If the Primary is lost,
	// or stops being Primary, another secondary may lack them (or have
	// some we lack): we mark them for every other peer. A confirmed write
	// is marked for every node that the barrier does not name as holding
	// it.
	recent []recentWrite
}

// recentWrite is the range of a data write not yet confirmed everywhere,
// and the generation we were in when it arrived: a node that lacks it
// differs from us since that generation.
type recentWrite struct{ seq, off, length, gen uint64 }

// segment is the writes received between two barriers.
type segment struct {
	rx       *receiver
	writes   []*rxWrite // not yet done, in arrival order
	closed   bool       // the closing barrier arrived
	epoch    uint64     // the barrier's epoch
	flush    bool       // flush the disk before acknowledging the barrier
	flushing bool       // the flush is in flight
	flushed  bool
	tracking bool   // its flush tracks (flushIssued)
	plainAt  uint64 // Engine.plainWritten when its flush was issued
}

// rxWrite is a received data or resync write, or a request ordered with
// the writes like one: a checksum request (op.Kind OpChecksum) or a read
// request (op.Kind OpRead), after every write received before it.
type rxWrite struct {
	seg     *segment
	op      LocalOp
	resync  bool
	readTag uint64  // a read request's Seq
	ext     *extent // &local while issued
	local   extent
	// digests are the sender's, for an OpChecksum, and reply the type of
	// the answer (ResyncCsumReply or VerifyReply).
	digests []byte
	reply   wire.Type
}

func newReceiver(p *peer) *receiver {
	rx := &receiver{peer: p}
	rx.segs = []*segment{{rx: rx}}
	return rx
}

// receiveWrite queues a Data or ResyncData frame.
func (e *Engine) receiveWrite(p *peer, f *wire.Frame, resync bool) {
	if f.Flags&wire.FlagWantRecvAck != 0 {
		e.send(p, wire.Frame{Type: wire.TypeRecvAck, Seq: f.Seq})
	}
	op := LocalOp{Kind: OpWrite, Offset: f.Offset, Length: uint64(f.Length), Data: f.Payload,
		FUA: f.Flags&wire.FlagFUA != 0, Seq: f.Seq, Epoch: f.Epoch}
	switch {
	case f.Flags&wire.FlagZeroes != 0:
		op.Kind, op.Data = OpZeroes, nil
	case f.Flags&wire.FlagTrim != 0:
		op.Kind, op.Data = OpTrim, nil
	}
	if resync {
		// The source clears its bits when we acknowledge: on a disk with
		// a volatile cache the block must be durable by then.
		op.Epoch = 0
		op.FUA = op.FUA || e.diskFlushes
		if p.resyncWrote != nil {
			p.resyncWrote.SetBytes(f.Offset, uint64(f.Length), e.blockSize)
		}
	}
	p.dataReceived += uint64(len(f.Payload))
	if !resync {
		p.writesReceived++
		p.rx.recent = append(p.rx.recent, recentWrite{seq: f.Seq, off: f.Offset, length: uint64(f.Length), gen: e.current})
	}
	e.queue(p.rx, &rxWrite{op: op, resync: resync})
}

// queue appends w to rx's open segment and issues what it can.
func (e *Engine) queue(rx *receiver, w *rxWrite) {
	e.notePending(rx)
	seg := rx.segs[len(rx.segs)-1]
	w.seg = seg
	seg.writes = append(seg.writes, w)
	e.pump(rx)
}

// notePending stamps rx with the arrival of the frame it is about to
// queue if it held nothing before.
func (e *Engine) notePending(rx *receiver) {
	if rx.drained() {
		e.arrivals++
		rx.pendingSince = e.arrivals
	}
}

// receiveCsum queues a ResyncCsum or VerifyCsum frame: the range is
// hashed in order with the writes received before and after it, and the
// digests compared with the sender's (receiveWrite's ordering, as a read).
func (e *Engine) receiveCsum(p *peer, f *wire.Frame) {
	bs := uint64(e.blockSize)
	if end := f.Offset + uint64(f.Length); f.Length == 0 || end < f.Offset || end > e.size || len(f.Payload) == 0 {
		e.violation(p, f, fmt.Sprintf("checksums for [%d, +%d) outside the device", f.Offset, f.Length))
		return
	}
	alg := wire.Csum(f.Payload[0])
	if alg.Size() == 0 || f.Offset%bs != 0 || uint64(f.Length)%bs != 0 || uint64(len(f.Payload)-1) != uint64(f.Length)/bs*uint64(alg.Size()) {
		e.violation(p, f, fmt.Sprintf("%d digest bytes of %v for [%d, +%d) in blocks of %d", len(f.Payload)-1, alg, f.Offset, f.Length, bs))
		return
	}
	resync := f.Type == wire.TypeResyncCsum
	// A resync skips what compares equal: it must be durable here.
	op := LocalOp{Kind: OpChecksum, Offset: f.Offset, Length: uint64(f.Length), Csum: alg, BlockSize: e.blockSize,
		Seq: f.Seq, FUA: resync && e.diskFlushes}
	reply := wire.TypeResyncCsumReply
	if !resync {
		reply = wire.TypeVerifyReply
	}
	e.queue(p.rx, &rxWrite{op: op, resync: resync, digests: f.Payload[1:], reply: reply})
}

// receiveBarrier closes the open segment. Its Seq confirms that every
// write up to it is on every node of its holder set (Offset): those leave
// the recent list, marked for the nodes outside the set.
func (e *Engine) receiveBarrier(p *peer, f *wire.Frame) {
	rx := p.rx
	n := 0
	for n < len(rx.recent) && rx.recent[n].seq <= f.Seq {
		n++
	}
	for _, q := range e.peers {
		switch {
		case q == p:
		case f.Offset&(1<<q.cfg.ID) == 0:
			e.markRecent(q, rx.recent[:n], false)
		case f.Offset&(1<<e.self) != 0 && q.bitmap.Count() > 0 && f.Seq >= p.unconfirmedMarked:
			// q and we both hold everything the Primary confirmed, and
			// it knows of no block where either differs from it: our
			// marks for q (writes it missed while away and has since
			// been resynchronised, our last writes of an earlier
			// Primary) stand for nothing any more. Not so for the
			// writes of this Primary we marked when it was demoted or
			// our connection to it was lost (unconfirmedMarked) and
			// that it has not confirmed yet: they may still be on
			// their way to q, and lost with it.
			q.bitmap.ClearRange(0, q.bitmap.Len())
			e.peerEvent(q, "resync", "", "", "in sync with our Primary, as we are: our marks for it cleared")
		}
	}
	if f.Seq >= p.unconfirmedMarked {
		p.unconfirmedMarked = 0
	}
	rx.recent = append(rx.recent[:0], rx.recent[n:]...)
	e.notePending(rx)
	seg := rx.segs[len(rx.segs)-1]
	seg.closed, seg.epoch = true, f.Epoch
	seg.flush = e.diskFlushes || f.Flags&wire.FlagFlush != 0
	rx.segs = append(rx.segs, &segment{rx: rx})
	e.pump(rx)
}

// pump issues what the oldest segments allow and acknowledges the
// barriers of finished segments, unless another receiver holds something
// received before (mayIssue).
func (e *Engine) pump(rx *receiver) {
	if !e.mayIssue(rx) {
		return
	}
	for {
		seg := rx.segs[0]
		for i, w := range seg.writes {
			if w.ext == nil && !e.waitsForEarlier(seg.writes[:i], w) {
				w.ext = e.addInflight(&w.local, w.op.Offset, w.op.Length, w.op.Kind != OpChecksum && w.op.Kind != OpRead)
				e.newOp(w.op, opOwner{rxWrite: w})
			}
		}
		if len(seg.writes) > 0 || !seg.closed {
			return
		}
		if seg.flush && !seg.flushed {
			if seg.flushing {
				return
			}
			switch {
			case rx.lost && e.disk == Diskless:
				// A lost connection's writes on a detached disk are
				// dropped (abandonReceiver): nothing to flush.
			case e.disk != Diskless && e.plainWritten == e.plainFlushed:
				// Every write done here since the last flush that
				// succeeded was FUA: nothing to make durable. (The
				// next write waits for this barrier: a flush of
				// nothing would delay it.)
				seg.flushed = true
			default:
				seg.flushing, seg.tracking, seg.plainAt = true, e.flushIssued(), e.plainWritten
				e.newOp(LocalOp{Kind: OpFlush}, opOwner{rxFlush: seg})
				return
			}
		}
		if !rx.lost {
			e.send(rx.peer, wire.Frame{Type: wire.TypeBarrierAck, Epoch: seg.epoch})
		}
		rx.segs[0] = nil
		rx.segs = rx.segs[1:]
	}
}

// mayIssue reports whether no other receiver holds something received
// before what rx holds.
func (e *Engine) mayIssue(rx *receiver) bool {
	earlier := func(o *receiver) bool {
		return o != nil && o != rx && !o.drained() && o.pendingSince < rx.pendingSince
	}
	for _, o := range e.draining {
		if earlier(o) {
			return false
		}
	}
	for _, p := range e.peers {
		if earlier(p.rx) {
			return false
		}
	}
	return true
}

// pumpAll pumps every receiver, those of lost connections included, in
// the order they became pending, so that one that is done lets the next
// go on in the same pass, and forgets the lost ones that are done.
func (e *Engine) pumpAll() {
	rs := append(e.rxScratch[:0], e.draining...)
	for _, p := range e.peers {
		if p.rx != nil {
			rs = append(rs, p.rx)
		}
	}
	if len(rs) > 1 {
		slices.SortFunc(rs, func(a, b *receiver) int { return cmp.Compare(a.pendingSince, b.pendingSince) })
	}
	for _, rx := range rs {
		e.pump(rx)
	}
	clear(rs)
	e.rxScratch = rs[:0]
	kept := e.draining[:0]
	for _, rx := range e.draining {
		if !rx.drained() {
			kept = append(kept, rx)
		}
	}
	clear(e.draining[len(kept):])
	e.draining = kept
}

// drained reports whether everything rx received is done: only the open
// segment is left, and it is empty.
func (rx *receiver) drained() bool { return len(rx.segs) == 1 && len(rx.segs[0].writes) == 0 }

// holds reports whether a write (or request) rx received over [off, end)
// is not done yet.
func (rx *receiver) holds(off, end uint64) bool {
	for _, seg := range rx.segs {
		for _, w := range seg.writes {
			if w.op.Offset < end && off < w.op.Offset+w.op.Length {
				return true
			}
		}
	}
	return false
}

// receivers lists every receiver: those of lost connections still
// applying what they received, then the connected peers'.
func (e *Engine) receivers() []*receiver {
	all := e.draining[:len(e.draining):len(e.draining)]
	for _, p := range e.peers {
		if p.rx != nil {
			all = append(all, p.rx)
		}
	}
	return all
}

// receivedPending counts the writes (and requests ordered with them)
// received, from a lost connection or a connected peer, that are not done
// yet, and names the node the first of them came from.
func (e *Engine) receivedPending() (n int, from NodeID) {
	for _, rx := range e.receivers() {
		for _, seg := range rx.segs {
			if n == 0 && len(seg.writes) > 0 {
				from = rx.peer.cfg.ID
			}
			n += len(seg.writes)
		}
	}
	return n, from
}

// waitsForEarlier reports whether w overlaps a local write in flight or an
// earlier write of its segment that is not issued yet.
func (e *Engine) waitsForEarlier(earlier []*rxWrite, w *rxWrite) bool {
	off, end := w.op.Offset, w.op.Offset+w.op.Length
	if e.overlapsInflight(off, end, false) {
		return true
	}
	for _, x := range earlier {
		if x.ext == nil && x.op.Offset < end && off < x.op.Offset+x.op.Length {
			return true
		}
	}
	return false
}

func (e *Engine) rxWriteDone(w *rxWrite, data []byte, err error) {
	e.removeInflight(w.ext)
	seg := w.seg
	for i, x := range seg.writes {
		if x == w {
			seg.writes = append(seg.writes[:i], seg.writes[i+1:]...)
			break
		}
	}
	if w.op.Kind != OpChecksum && w.op.Kind != OpRead {
		e.noteWritten(w.op.Offset, w.op.Length, !w.op.FUA || err != nil)
	}
	// A FUA operation (a write, or a checksum of durable data) flushes
	// the disk: its failure may be the flush's, unless it found no space
	// (ErrNoSpace: it failed before its flush).
	noSpace := errors.Is(err, ErrNoSpace)
	syncErr := err != nil && w.op.FUA && !noSpace
	what := fmt.Sprintf("%v of [%d, +%d)", w.op.Kind, w.op.Offset, w.op.Length)
	if noSpace && !w.resync {
		// This disk lacks a write that the other nodes have, and that
		// may be completed: it is no longer a copy of anyone's data,
		// and must not be promoted as one. A resync (the Primary
		// marks the block on our negative acknowledgement) makes it
		// UpToDate again.
		e.lackSpace(what, err)
	}
	if seg.rx.lost {
		// Nobody to answer. A failed write detaches the disk or is
		// passed on: if it came from our Primary, it is among the writes
		// marked for the other peers when the Primary was lost.
		switch {
		case err == nil || e.ioFailed(w.op.Kind.String(), w.op.Offset, w.op.Length, err):
		case syncErr:
			e.syncFailed(what+" with FUA", err)
		default:
			e.event(Event{What: "disk", Detail: fmt.Sprintf("%s received from lost node %d failed: %v", what, seg.rx.peer.cfg.ID, err)})
		}
		return
	}
	switch w.op.Kind {
	case OpChecksum:
		e.compareDigests(w, data, err)
		if err != nil && !e.ioFailed("checksum", w.op.Offset, w.op.Length, err) && syncErr {
			// As for a failed FUA write, below.
			e.syncFailed(what+" after a flush", err)
			e.dropPeer(seg.rx.peer, fmt.Errorf("%w: %s after a flush: %w", ErrIO, what, err), false)
		}
		return
	case OpRead:
		e.rxReadDone(w, data, err)
		return
	}
	if err != nil && e.ioFailed(w.op.Kind.String(), w.op.Offset, w.op.Length, err) {
		// The connection to the Primary is dropped: it marks this
		// write, unacknowledged, for us.
		return
	}
	if syncErr {
		// As for a failed flush (rxFlushDone): the writes acknowledged
		// before may be lost too, and a later flush that succeeds must
		// not acknowledge their barrier.
		e.syncFailed(what+" with FUA", err)
		e.dropPeer(seg.rx.peer, fmt.Errorf("%w: %s with FUA: %w", ErrIO, what, err), false)
		return
	}
	ack := wire.Frame{Type: wire.TypeWriteAck, Seq: w.op.Seq}
	if w.resync {
		ack.Flags |= wire.FlagResync
		seg.rx.peer.resyncDone += w.op.Length
	}
	if err != nil {
		ack.Flags |= wire.FlagNegative
		e.event(Event{What: "disk", Detail: fmt.Sprintf("%s failed: %v", what, err)})
	}
	e.send(seg.rx.peer, ack)
}

// compareDigests answers a checksum request with the blocks whose digests
// (ours, data) differ from the source's.
func (e *Engine) compareDigests(w *rxWrite, data []byte, err error) {
	p := w.seg.rx.peer
	reply := wire.Frame{Type: w.reply, Seq: w.op.Seq, Offset: w.op.Offset, Length: uint32(w.op.Length)}
	if err == nil && len(data) != len(w.digests) {
		err = fmt.Errorf("got %d digest bytes, want %d", len(data), len(w.digests))
	}
	if err != nil {
		reply.Flags |= wire.FlagNegative
		e.event(Event{What: "disk", Detail: fmt.Sprintf("checksum of [%d, +%d) failed: %v", w.op.Offset, w.op.Length, err)})
		e.send(p, reply)
		return
	}
	size := w.op.Csum.Size()
	blocks := len(data) / size
	var mask []byte
	for i := range blocks {
		if !bytes.Equal(data[i*size:(i+1)*size], w.digests[i*size:(i+1)*size]) {
			if mask == nil {
				mask = make([]byte, (blocks+7)/8)
			}
			mask[i/8] |= 1 << (i % 8)
		} else if w.resync {
			p.resyncSame += uint64(e.blockSize)
		}
	}
	reply.Payload = mask
	e.send(p, reply)
}

// rxFlushDone acknowledges the barrier via pump; a failed flush must not be
// acknowledged (it would claim durability), so it drops the connection
// instead: the primary then marks every write not covered by an
// acknowledged barrier out of sync, and this node marks what it wrote
// since its last successful flush (syncFailed: barriers acknowledged
// without a flush cover those too). The receiver of a lost connection goes
// on with its next segment either way.
func (e *Engine) rxFlushDone(seg *segment, err error) {
	rx := seg.rx
	e.flushDone(seg.tracking, err)
	if err == nil {
		e.plainFlushed = max(e.plainFlushed, seg.plainAt)
	}
	if err != nil {
		if !e.ioFailed("flush", 0, 0, err) {
			e.syncFailed(fmt.Sprintf("flush for barrier %d", seg.epoch), err)
			if !rx.lost {
				e.dropPeer(rx.peer, fmt.Errorf("%w: flush for barrier %d: %w", ErrIO, seg.epoch, err), false)
			}
		}
		if !rx.lost {
			return // still connected (detach keeps a sender that is no longer Primary)
		}
	}
	seg.flushed = true
}

// abandonReceiver handles a lost connection's receiver. It keeps applying,
// in the same order, every write the connection delivered (Engine.draining)
// but acknowledges nothing more: a protocol B peer acknowledged each write
// on arrival, and if it was our Primary and failed, it may have completed
// the write on that alone; we are then the only node that holds it.
// Checksum and read requests not yet on the disk are dropped: their
// answers have nowhere to go. On a detached disk nothing more is applied.
func (e *Engine) abandonReceiver(rx *receiver) {
	rx.lost = true
	rx.dropUnissued(e.disk == Diskless)
	e.draining = append(e.draining, rx)
	e.pumpAll()
}

// dropUnissued forgets what rx received and did not put on the disk yet:
// checksum and read requests, and also writes if writes is set.
func (rx *receiver) dropUnissued(writes bool) {
	for _, seg := range rx.segs {
		kept := seg.writes[:0]
		for _, w := range seg.writes {
			isWrite := w.op.Kind != OpChecksum && w.op.Kind != OpRead
			if w.ext != nil || (isWrite && !writes) {
				kept = append(kept, w)
			}
		}
		clear(seg.writes[len(kept):])
		seg.writes = kept
	}
}

// markRecentForOthers runs when the connection to our Primary is lost, or
// it stops being Primary: the writes it had not confirmed everywhere may be
// on some secondaries and not on others, so they are marked for every other
// peer. Whichever node is promoted next resyncs them (merging the target's
// marks).
func (e *Engine) markRecentForOthers(primary *peer) {
	if len(primary.rx.recent) == 0 {
		return
	}
	if len(e.peers) >= 2 {
		for _, q := range e.peers {
			if q != primary {
				e.markRecent(q, primary.rx.recent, true)
			}
		}
		primary.unconfirmedMarked = max(primary.unconfirmedMarked, primary.rx.recent[len(primary.rx.recent)-1].seq)
		e.peerEvent(primary, "resync", "", "", fmt.Sprintf("%d unconfirmed writes of node %d marked out of sync for the other peers", len(primary.rx.recent), primary.cfg.ID))
	}
	primary.rx.recent = primary.rx.recent[:0]
}

// markRecent marks received writes for q, a node that may lack them. Marks
// that begin here are tied to the generation we were in when the first of
// them arrived: q may hold that generation without them. Writes a barrier
// confirmed are still in the activity log (it retires them only after the
// bitmap is written); uncovered: they may not be (markUncovered).
func (e *Engine) markRecent(q *peer, writes []recentWrite, uncovered bool) {
	if len(writes) == 0 {
		return
	}
	if q.bitmapUUID == 0 && writes[0].gen != 0 {
		q.bitmapUUID = writes[0].gen
		e.persistDirty = true
		e.announce = true
	}
	for _, r := range writes {
		if uncovered {
			e.markUncovered(q, r.off, r.length)
		} else {
			e.markOutOfSync(q, r.off, r.length)
		}
	}
}

// lackSpace handles a received data write that the local store had no
// room for: the disk stays attached, but it misses a write that the
// Primary and the other peers have, and that the Primary may complete (it
// has the data, and takes our negative acknowledgement for a mark), so
// it becomes Inconsistent until a resync fills the hole. The other peers
// need no mark: the Primary's barrier no longer names us as holding its
// writes once it marked this one for us, and a node that is not UpToDate
// is never a sync source.
func (e *Engine) lackSpace(what string, err error) {
	if e.disk == Diskless || e.disk == Inconsistent {
		return
	}
	e.setDisk(Inconsistent, fmt.Sprintf("%s failed: %v; this disk lacks a write its Primary has, until a resync", what, err))
}
