package core

import (
	"fmt"

	"github.com/georepl/georepl/core/wire"
)

// resyncSource is a running resync from us to one peer. It reads runs of
// marked blocks in bitmap order (wrapping around for blocks marked again
// meanwhile), sends them as ResyncData, and clears the bits when the peer
// acknowledges them written.
type resyncSource struct {
	cursor uint64 // next block to look at
	reads  int    // reads in flight
	sent   map[uint64]*blockRun
	runs   []*blockRun // read or sent, not yet acknowledged
	// With checksums (csums set), a run is first hashed and its digests
	// sent (checking, by seq); the target answers which blocks differ,
	// and those runs wait in todo to be read and sent as data.
	csums    wire.Csum
	checking map[uint64]*blockRun
	todo     []*blockRun
	lost     bool // the connection is gone
	// targetReady: the target's StateChange as SyncTarget arrived, after
	// its own marks (OutOfSync): the resync may finish.
	targetReady bool
}

// blockRun is a range of blocks being resynchronised.
type blockRun struct {
	first, n uint64
	// remarked: blocks of the run were marked again after its read was
	// issued, so the acknowledgement must not clear them.
	remarked bool
}

// remark notes that blocks [first, first+n) were marked again while runs
// covering them are in flight.
func (rs *resyncSource) remark(first, n uint64) {
	for _, r := range rs.runs {
		if r.first < first+n && first < r.first+r.n {
			r.remarked = true
		}
	}
}

func (rs *resyncSource) forget(run *blockRun) {
	for i, r := range rs.runs {
		if r == run {
			rs.runs = append(rs.runs[:i], rs.runs[i+1:]...)
			return
		}
	}
}

// syncRead is a resync read (or checksum) in flight.
type syncRead struct {
	p    *peer
	rs   *resyncSource
	run  *blockRun
	ext  extent
	csum bool // an OpChecksum: the run's digests go to the target
}

// busy is the resync work under way or waiting: reads, frames not yet
// answered, runs to read.
func (rs *resyncSource) busy() int { return rs.reads + len(rs.sent) + len(rs.checking) + len(rs.todo) }

// startResync makes us p's sync source; fullWhy says why every block is
// resynchronised, "" for the bitmap's blocks only.
func (e *Engine) startResync(p *peer, full bool, fullWhy string) {
	how := "bitmap"
	p.resyncWhy = ResyncWhy{Source: true, Full: fullWhy, Invalidated: p.invalidated, Detached: p.detachedMarks}
	if !full {
		p.resyncWhy.MarkedHere = e.blocksToBytes(p.bitmap.Count())
		p.resyncWhy.AfterCrash = p.afterCrash
	}
	if full {
		how = "full"
		p.bitmap.SetRange(0, p.bitmap.Len())
		e.persistBitmaps = true // no activity-log extent covers them: see markUncovered
	}
	if full || p.bitmapUUID == 0 {
		// Tie the marks to the data the peer has, so that an interrupted
		// resync continues from the bitmap after a reconnect (rule 4).
		p.bitmapUUID = p.gen.Current
		if p.bitmapUUID == 0 {
			p.bitmapUUID = e.current
		}
		e.persistDirty = true
		// The target decides to be one from the marks we announce: a
		// StateChange sent before this (e.g. the one announcing our
		// promotion) showed none, and a target that sees none stays
		// Established while we wait for it forever.
		e.announce = true
	}
	if p.quietMarks {
		e.announce = true
	}
	e.stopVerify(p, "a resync started")
	p.rs = &resyncSource{sent: make(map[uint64]*blockRun), csums: p.cfg.Csums, checking: make(map[uint64]*blockRun)}
	p.resyncTotal, p.resyncDone, p.resyncSame = e.blocksToBytes(p.bitmap.Count()), 0, 0
	if p.rs.csums != wire.CsumNone {
		how += ", " + p.rs.csums.String() + " checksums"
	}
	e.setRepl(p, SyncSource, "")
	e.peerEvent(p, "resync", "", "", fmt.Sprintf("started (%s, %d bytes)", how, p.resyncTotal))
	e.scheduleResync(p)
}

// targetReady records that the target's own marks are all merged.
func (e *Engine) targetReady(p *peer) {
	p.rs.targetReady = true
	p.resyncTotal = p.resyncDone + e.blocksToBytes(p.bitmap.Count())
	e.scheduleResync(p)
}

// sendMarks sends the sync source our own marks for it: blocks where we
// may differ (we were Primary, or lost a Primary whose last writes may not
// have reached everyone). They stay set here until ResyncDone.
func (e *Engine) sendMarks(p *peer) {
	const maxRun = 1 << 31 // bytes per OutOfSync frame, within its 32-bit length
	bs := uint64(e.blockSize)
	for b, ok := p.bitmap.NextSet(0); ok; b, ok = p.bitmap.NextSet(b) {
		end := min(p.bitmap.NextClear(b), b+maxRun/bs)
		e.send(p, wire.Frame{Type: wire.TypeOutOfSync, Offset: b * bs, Length: uint32((end - b) * bs)})
		b = end
	}
}

// scheduleResync issues resync reads while the window allows: first the
// runs a checksum comparison found different, then the next marked run
// after the cursor (hashed instead of read when checksums are on). A run
// that overlaps a local write in flight waits for it, so that resync data
// (and digests) never carry content older than a write already sent.
func (e *Engine) scheduleResync(p *peer) {
	rs := p.rs
	wrapped := false
	bs := uint64(e.blockSize)
	for rs.reads+len(rs.sent)+len(rs.checking) < e.window {
		if len(rs.todo) > 0 {
			run := rs.todo[0]
			if !e.resyncMayRead(p, false) || e.overlapsInflight(run.first*bs, (run.first+run.n)*bs, true) {
				return
			}
			rs.todo = rs.todo[1:]
			e.issueSyncRead(p, run, false)
			continue
		}
		b, ok := p.bitmap.NextSet(rs.cursor)
		if !ok {
			if rs.busy() > 0 || wrapped {
				return
			}
			if p.bitmap.Count() == 0 {
				if rs.targetReady {
					e.finishResync(p)
				}
				return
			}
			rs.cursor, wrapped = 0, true
			continue
		}
		end := min(p.bitmap.NextClear(b), b+e.chunkBlocks)
		if !e.resyncMayRead(p, rs.csums != wire.CsumNone) || e.overlapsInflight(b*bs, end*bs, true) {
			return
		}
		run := &blockRun{first: b, n: end - b}
		rs.runs = append(rs.runs, run)
		e.issueSyncRead(p, run, rs.csums != wire.CsumNone)
		rs.cursor = end
	}
}

// issueSyncRead reads run (or hashes it, csum) for the resync to p.
func (e *Engine) issueSyncRead(p *peer, run *blockRun, csum bool) {
	bs := uint64(e.blockSize)
	off, length := run.first*bs, run.n*bs
	r := &syncRead{p: p, rs: p.rs, run: run, csum: csum}
	e.addInflight(&r.ext, off, length, false)
	if !csum {
		e.chargeResync(p, length)
	}
	op := LocalOp{Kind: OpRead, Offset: off, Length: length}
	if csum {
		op.Kind, op.Csum, op.BlockSize = OpChecksum, p.rs.csums, e.blockSize
	}
	e.newOp(op, opOwner{syncRead: r})
	p.rs.reads++
}

func (e *Engine) syncReadDone(r *syncRead, data []byte, err error) {
	e.removeInflight(&r.ext)
	if r.rs.lost {
		return
	}
	p, rs := r.p, r.rs
	rs.reads--
	bs := uint64(e.blockSize)
	want := r.run.n * bs
	if r.csum {
		want = r.run.n * uint64(rs.csums.Size())
	}
	if err == nil && uint64(len(data)) != want {
		err = fmt.Errorf("got %d bytes, want %d", len(data), want)
	}
	if err != nil {
		if !e.ioFailed("resync read", r.run.first*bs, r.run.n*bs, err) {
			e.dropPeer(p, fmt.Errorf("%w: resync read of [%d, +%d): %w", ErrIO, r.run.first*bs, r.run.n*bs, err), false)
		}
		return
	}
	e.seq++
	if r.csum {
		payload := make([]byte, 0, 1+len(data))
		payload = append(append(payload, byte(rs.csums)), data...)
		e.send(p, wire.Frame{Type: wire.TypeResyncCsum, Seq: e.seq, Offset: r.run.first * bs, Length: uint32(r.run.n * bs), Payload: payload})
		rs.checking[e.seq] = r.run
		return
	}
	e.send(p, wire.Frame{Type: wire.TypeResyncData, Seq: e.seq, Offset: r.run.first * bs, Length: uint32(len(data)), Payload: data})
	p.dataSent += uint64(len(data))
	rs.sent[e.seq] = r.run
}

// resyncAck handles WriteAck+FlagResync from our sync target.
func (e *Engine) resyncAck(p *peer, f *wire.Frame) {
	rs := p.rs
	var run *blockRun
	ok := rs != nil
	if ok {
		run, ok = rs.sent[f.Seq]
	}
	if !ok {
		e.violation(p, f, "resync write-ack for nothing")
		return
	}
	delete(rs.sent, f.Seq)
	bs := uint64(e.blockSize)
	if f.Flags&wire.FlagNegative != 0 {
		e.dropPeer(p, fmt.Errorf("%w: the peer failed to write resync block [%d, +%d)", ErrIO, run.first*bs, run.n*bs), false)
		return
	}
	rs.forget(run)
	if !run.remarked {
		p.bitmap.ClearRange(run.first, run.n)
	}
	p.resyncDone += run.n * bs
	p.pace.resyncAcked += run.n * bs
	e.scheduleResync(p)
}

// digestReply checks a reply to a digest request (checksum resync, verify)
// against the run asked for, in checking under the reply's sequence
// number, and takes the run out of checking. ok is false, the connection
// being dropped, if the reply is not one that was asked for.
func (e *Engine) digestReply(p *peer, f *wire.Frame, checking map[uint64]*blockRun, what string) (run *blockRun, ok bool) {
	run, ok = checking[f.Seq]
	bs := uint64(e.blockSize)
	switch {
	case !ok:
		e.violation(p, f, what+" reply for nothing")
		return nil, false
	case f.Offset != run.first*bs || uint64(f.Length) != run.n*bs:
		e.violation(p, f, fmt.Sprintf("%s reply for [%d, +%d), asked [%d, +%d)", what, f.Offset, f.Length, run.first*bs, run.n*bs))
		return nil, false
	case len(f.Payload) != 0 && uint64(len(f.Payload)) != (run.n+7)/8:
		e.violation(p, f, fmt.Sprintf("%s reply of %d bytes for %d blocks", what, len(f.Payload), run.n))
		return nil, false
	}
	delete(checking, f.Seq)
	return run, true
}

// resyncCsumReply handles ResyncCsumReply from our sync target: identical
// blocks are done (unless marked again meanwhile: a later pass checks them
// again), different ones are read and sent as data.
func (e *Engine) resyncCsumReply(p *peer, f *wire.Frame) {
	rs := p.rs
	var checking map[uint64]*blockRun
	if rs != nil {
		checking = rs.checking
	}
	run, ok := e.digestReply(p, f, checking, "checksum")
	if !ok {
		return
	}
	bs := uint64(e.blockSize)
	if f.Flags&wire.FlagNegative != 0 {
		e.dropPeer(p, fmt.Errorf("%w: the peer failed to read [%d, +%d) for a checksum", ErrIO, run.first*bs, run.n*bs), false)
		return
	}
	rs.forget(run)
	if run.remarked {
		e.scheduleResync(p)
		return
	}
	differs := func(i uint64) bool { return len(f.Payload) != 0 && f.Payload[i/8]&(1<<(i%8)) != 0 }
	for i := uint64(0); i < run.n; {
		j := i + 1
		for j < run.n && differs(j) == differs(i) {
			j++
		}
		if differs(i) {
			d := &blockRun{first: run.first + i, n: j - i}
			rs.runs = append(rs.runs, d)
			rs.todo = append(rs.todo, d)
		} else {
			p.bitmap.ClearRange(run.first+i, j-i)
			p.resyncDone += (j - i) * bs
			p.resyncSame += (j - i) * bs
		}
		i = j
	}
	e.scheduleResync(p)
}

// finishResync ends a resync whose bitmap is clear with nothing in flight.
// ResyncDone carries our holder set, as a barrier does, the target
// included: the target keeps its marks for the nodes outside it.
func (e *Engine) finishResync(p *peer) {
	p.resyncDoneSent = true
	p.rs = nil
	p.bitmapUUID = 0
	p.afterCrash, p.invalidated, p.detachedMarks = 0, "", false
	e.persistDirty = true
	e.setRepl(p, Established, "resync done")
	// The resync may have carried writes that the holders were sent as
	// data and have not confirmed: Seq tells the target up to where it
	// must wait for a barrier's confirmation (0: every write is retired).
	var unconfirmed uint64
	if e.confirmedSeq() < e.seq {
		unconfirmed = e.seq
	}
	e.send(p, wire.Frame{Type: wire.TypeResyncDone, Offset: e.holders(), Seq: unconfirmed})
	detail := fmt.Sprintf("finished (%d bytes)", p.resyncDone)
	if p.resyncSame > 0 {
		detail = fmt.Sprintf("finished (%d bytes, %d of them found identical and not sent)", p.resyncDone, p.resyncSame)
	}
	e.peerEvent(p, "resync", "", "", detail)
}

// resyncTargetDone handles ResyncDone from our sync source (always a
// Primary): every block it had marked is now on our disk, in order with its
// writes. holders is the source's holder set (as in a barrier): the nodes
// in sync with it, holding no marks of its; unconfirmed is 0, or the
// source's latest sequence number when not every write up to it was
// confirmed on every peer.
func (e *Engine) resyncTargetDone(p *peer, holders, unconfirmed uint64) {
	e.current, e.history = p.gen.Current, p.gen.History
	// We now hold the Primary's data, and so does a holder: our marks for
	// it stand for nothing. Any other node may differ from us wherever the
	// resync rewrote our data, although our ids, now the Primary's, may
	// match its own: it may lack writes of the Primary's generation that
	// only the Primary's marks name. Only our marks can tell it: every
	// block stays marked for it, as since the resync began (or from now
	// on, if we had no generation to tie marks to then). A holder holds
	// only the writes the source confirmed, though: while some are not
	// (unconfirmed), the blocks the resync rewrote may hold writes still
	// on their way to it as data, that would be lost with the source.
	// Those stay marked until a barrier of the source's confirms that far
	// (receiveBarrier); the writes we received as data are in our recent
	// list.
	wrote := p.resyncWrote
	p.resyncWrote = nil
	p.unconfirmedMarked = max(p.unconfirmedMarked, unconfirmed)
	for _, q := range e.peers {
		if q != p && holders&(1<<q.cfg.ID) == 0 {
			e.markUncovered(q, 0, e.size)
			continue
		}
		q.bitmap.ClearRange(0, q.bitmap.Len())
		q.bitmapUUID = 0
		q.afterCrash, q.invalidated, q.detachedMarks = 0, "", false
		if q != p && unconfirmed != 0 && wrote != nil {
			e.markRuns(q, wrote)
		}
	}
	e.persistDirty = true
	e.announce = true
	e.setDisk(UpToDate, fmt.Sprintf("resync from node %d done", p.cfg.ID))
	e.setRepl(p, Established, "resync done")
	e.peerEvent(p, "resync", "", "", fmt.Sprintf("finished (%d bytes received)", p.resyncDone))
}

// Invalidate declares this node's data bad: it asks source, which must be
// a connected, UpToDate Primary this node is Established with, to mark
// every block for it (InvalidateRequest); that Primary then resynchronises
// this node fully (with checksums where its PeerConfig.Csums says so,
// skipping blocks that are identical). If the connection is lost before
// the request arrives, nothing happens: run it again. This node is Inconsistent from the start of that resync
// until its end. It fails with ErrWrongState, saying why, on a Primary
// (its data is the data in use), towards a peer that is not connected, not
// Primary or not UpToDate, or while a resync with it runs.
func (e *Engine) Invalidate(source NodeID) error {
	defer e.finish()
	p := e.peer(source)
	switch {
	case p == nil:
		return fmt.Errorf("%w: node %d is not a peer", ErrWrongState, source)
	case e.role == Primary:
		return fmt.Errorf("%w: this node is Primary and its data is the data in use: demote it first, or invalidate a peer's data (invalidate-remote)", ErrWrongState)
	case p.conn != Connected:
		return fmt.Errorf("%w: node %d (%s) is not connected: nothing to resynchronise from", ErrWrongState, p.cfg.ID, p.cfg.Name)
	case p.role != Primary:
		return fmt.Errorf("%w: node %d (%s) is %v: resync flows only from the Primary", ErrWrongState, p.cfg.ID, p.cfg.Name, p.role)
	case p.disk != UpToDate:
		return fmt.Errorf("%w: node %d (%s) is %v, not UpToDate", ErrWrongState, p.cfg.ID, p.cfg.Name, p.disk)
	case p.repl != Established:
		return fmt.Errorf("%w: %v with node %d (%s): wait for the resync to finish", ErrWrongState, p.repl, p.cfg.ID, p.cfg.Name)
	}
	// The Primary marks every block for us and resyncs us, as
	// InvalidateRemote does: marks of ours, announced in a StateChange,
	// would carry a bitmap id of the generation we last confirmed, which
	// the Primary may already have pushed out of its history with
	// StateChanges in flight to us (unrelated data, found by the random
	// histories). It ties its own marks to what we confirmed.
	e.send(p, wire.Frame{Type: wire.TypeInvalidateRequest})
	p.invalidated = "here"
	e.peerEvent(p, "resync", "", "", "invalidated here: full resync from this peer requested")
	return nil
}

// InvalidateRemote declares the data of peer target bad: every block is
// marked for it, and this node (its Primary) resynchronises it fully,
// skipping identical blocks with checksums (PeerConfig.Csums). It fails
// with ErrWrongState, saying why, unless this node is Primary and
// Established with target.
func (e *Engine) InvalidateRemote(target NodeID) error {
	defer e.finish()
	p := e.peer(target)
	switch {
	case p == nil:
		return fmt.Errorf("%w: node %d is not a peer", ErrWrongState, target)
	case e.role != Primary:
		return fmt.Errorf("%w: this node is %v: only the Primary is a sync source (run invalidate on the node whose data is bad, or this on the Primary)", ErrWrongState, e.role)
	case p.conn != Connected:
		return fmt.Errorf("%w: node %d (%s) is not connected", ErrWrongState, p.cfg.ID, p.cfg.Name)
	case p.repl != Established:
		return fmt.Errorf("%w: %v with node %d (%s): wait for the resync to finish", ErrWrongState, p.repl, p.cfg.ID, p.cfg.Name)
	}
	e.invalidatePeer(p, "peer invalidated: full resync to it")
	return nil
}

// invalidatePeer marks every block for p, which is then resynchronised
// (at once if Established: markOutOfSync; a running resync covers them).
func (e *Engine) invalidatePeer(p *peer, why string) {
	e.markUncovered(p, 0, e.size)
	p.invalidated = "peer"
	e.peerEvent(p, "resync", "", "", why)
}

// receiveInvalidate handles a peer's InvalidateRequest (its Invalidate).
// A switchover may have crossed it: a node that is no longer Primary, or
// no longer replicating to p, ignores it, and says so.
func (e *Engine) receiveInvalidate(p *peer) {
	if e.role != Primary || (p.repl != Established && p.repl != SyncSource) {
		e.peerEvent(p, "resync", "", "", fmt.Sprintf("invalidate request ignored: this node is %v, %v with the peer", e.role, p.repl))
		return
	}
	e.invalidatePeer(p, "the peer invalidated its data: full resync to it")
}

// markRuns marks for q every block set in b.
func (e *Engine) markRuns(q *peer, b *Bitmap) {
	bs := uint64(e.blockSize)
	for first, ok := b.NextSet(0); ok; first, ok = b.NextSet(first) {
		end := b.NextClear(first)
		e.markUncovered(q, first*bs, (end-first)*bs)
		first = end
	}
}
