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
	lost   bool        // the connection is gone
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

// syncRead is a resync read in flight.
type syncRead struct {
	p   *peer
	rs  *resyncSource
	run *blockRun
	ext extent
}

func (e *Engine) startResync(p *peer, full bool) {
	how := "bitmap"
	if full {
		how = "full"
		p.bitmap.SetRange(0, p.bitmap.Len())
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
	p.rs = &resyncSource{sent: make(map[uint64]*blockRun)}
	p.resyncTotal, p.resyncDone = e.blocksToBytes(p.bitmap.Count()), 0
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

// scheduleResync issues resync reads while the window allows. A run that
// overlaps a local write in flight waits for it, so that resync data never
// carries content older than a write already sent.
func (e *Engine) scheduleResync(p *peer) {
	rs := p.rs
	wrapped := false
	for rs.reads+len(rs.sent) < e.window {
		b, ok := p.bitmap.NextSet(rs.cursor)
		if !ok {
			if rs.reads+len(rs.sent) > 0 || wrapped {
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
		bs := uint64(e.blockSize)
		off, length := b*bs, (end-b)*bs
		if e.overlapsInflight(off, off+length, true) {
			return
		}
		r := &syncRead{p: p, rs: rs, run: &blockRun{first: b, n: end - b}}
		rs.runs = append(rs.runs, r.run)
		e.addInflight(&r.ext, off, length, false)
		e.newOp(LocalOp{Kind: OpRead, Offset: off, Length: length}, opOwner{syncRead: r})
		rs.reads++
		rs.cursor = end
	}
}

func (e *Engine) syncReadDone(r *syncRead, data []byte, err error) {
	e.removeInflight(&r.ext)
	if r.rs.lost {
		return
	}
	p, rs := r.p, r.rs
	rs.reads--
	bs := uint64(e.blockSize)
	if err == nil && uint64(len(data)) != r.run.n*bs {
		err = fmt.Errorf("read returned %d bytes, want %d", len(data), r.run.n*bs)
	}
	if err != nil {
		e.dropPeer(p, fmt.Errorf("%w: resync read of [%d, +%d): %w", ErrIO, r.run.first*bs, r.run.n*bs, err), false)
		return
	}
	e.seq++
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
	e.scheduleResync(p)
}

// finishResync ends a resync whose bitmap is clear with nothing in flight.
func (e *Engine) finishResync(p *peer) {
	e.send(p, wire.Frame{Type: wire.TypeResyncDone})
	p.resyncDoneSent = true
	p.rs = nil
	p.bitmapUUID = 0
	e.persistDirty = true
	e.setRepl(p, Established, "resync done")
	e.peerEvent(p, "resync", "", "", fmt.Sprintf("finished (%d bytes)", p.resyncDone))
}

// resyncTargetDone handles ResyncDone from our sync source (always a
// Primary): every block it had marked is now on our disk, in order with its
// writes.
func (e *Engine) resyncTargetDone(p *peer) {
	e.current, e.history = p.gen.Current, p.gen.History
	// We now hold the Primary's data: whatever differs on another node is
	// marked by the Primary or by that node.
	for _, q := range e.peers {
		q.bitmap.ClearRange(0, q.bitmap.Len())
		q.bitmapUUID = 0
	}
	e.persistDirty = true
	e.announce = true
	e.setDisk(UpToDate, fmt.Sprintf("resync from node %d done", p.cfg.ID))
	e.setRepl(p, Established, "resync done")
	e.peerEvent(p, "resync", "", "", fmt.Sprintf("finished (%d bytes received)", p.resyncDone))
}
