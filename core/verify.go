package core

import (
	"fmt"

	"github.com/georepl/georepl/core/wire"
)

// Range is a byte range of the device.
type Range struct{ Offset, Length uint64 }

// MaxVerifyRanges bounds the ranges a VerifyStatus lists.
const MaxVerifyRanges = 256

// VerifyStatus is the progress and result of online verify with one peer
// (StartVerify).
type VerifyStatus struct {
	// Running: ranges are still being compared.
	Running bool
	// Done and Total count bytes compared and bytes to compare (the device).
	Done, Total uint64
	// OutOfSync counts the bytes found different.
	OutOfSync uint64
	// Ranges are the ranges found different, adjacent blocks merged, in
	// device order: the first MaxVerifyRanges of them (More: there are
	// more).
	Ranges []Range
	More   bool
	// Stopped says why verify ended before the end of the device ("" while
	// running and after a complete pass).
	Stopped string
}

// verifySource is online verify from us (the Primary) towards one peer: it
// hashes the device in chunks, in order with the writes, has the peer
// compare, and records and marks what differs.
type verifySource struct {
	csums    wire.Csum
	cursor   uint64 // next block to hash
	reads    int    // checksums in flight here
	checking map[uint64]*blockRun
	done     uint64  // blocks compared
	found    *Bitmap // blocks found different
	running  bool
	stopped  string
}

// verifyRead is a verify checksum in flight.
type verifyRead struct {
	p   *peer
	vs  *verifySource
	run *blockRun
	ext extent
}

// StartVerify starts online verify with peer: the whole device is
// compared by checksum (the peer's PeerConfig.Csums, xxh64 when none) while
// the application writes, each range hashed on both nodes at the same
// point of the write stream. Blocks that differ are reported in
// PeerStatus.Verify and marked out of sync without touching any data: the
// marks are announced with our next StateChange, and a resync repairs
// them at the latest when the connection is made again (disconnect,
// connect). It fails with ErrWrongState unless this node is Primary and
// Established with peer, with no verify with it running.
func (e *Engine) StartVerify(peer NodeID) error {
	defer e.finish()
	p := e.peer(peer)
	switch {
	case p == nil:
		return fmt.Errorf("%w: node %d is not a peer", ErrWrongState, peer)
	case e.role != Primary:
		return fmt.Errorf("%w: this node is %v: verify runs on the Primary, which orders it with the writes", ErrWrongState, e.role)
	case e.disk != UpToDate:
		return fmt.Errorf("%w: this node's disk is %v", ErrWrongState, e.disk)
	case p.conn != Connected:
		return fmt.Errorf("%w: node %d (%s) is not connected", ErrWrongState, p.cfg.ID, p.cfg.Name)
	case p.repl != Established:
		return fmt.Errorf("%w: %v with node %d (%s): verify compares peers in sync; wait for the resync to finish", ErrWrongState, p.repl, p.cfg.ID, p.cfg.Name)
	case p.verify != nil && p.verify.running:
		return fmt.Errorf("%w: a verify with node %d (%s) is already running", ErrWrongState, p.cfg.ID, p.cfg.Name)
	}
	csums := p.cfg.Csums
	if csums == wire.CsumNone {
		csums = wire.CsumXXH64
	}
	p.verify = &verifySource{csums: csums, checking: make(map[uint64]*blockRun),
		found: NewBitmap(e.size / uint64(e.blockSize)), running: true}
	e.peerEvent(p, "verify", "", "", fmt.Sprintf("started (%s, %d bytes)", csums, e.size))
	e.scheduleVerify(p)
	return nil
}

// scheduleVerify hashes the next chunks while the window allows. Like a
// resync read, a chunk waits for local writes in flight over it, and new
// writes over it wait for the hash (its extent is in flight).
func (e *Engine) scheduleVerify(p *peer) {
	vs := p.verify
	bs := uint64(e.blockSize)
	blocks := e.size / bs
	for vs.reads+len(vs.checking) < e.window && vs.cursor < blocks {
		end := min(vs.cursor+e.chunkBlocks, blocks)
		if e.overlapsInflight(vs.cursor*bs, end*bs, true) {
			return
		}
		r := &verifyRead{p: p, vs: vs, run: &blockRun{first: vs.cursor, n: end - vs.cursor}}
		e.addInflight(&r.ext, vs.cursor*bs, (end-vs.cursor)*bs, false)
		e.newOp(LocalOp{Kind: OpChecksum, Offset: vs.cursor * bs, Length: (end - vs.cursor) * bs,
			Csum: vs.csums, BlockSize: e.blockSize}, opOwner{verify: r})
		vs.reads++
		vs.cursor = end
	}
	if vs.cursor >= blocks && vs.reads == 0 && len(vs.checking) == 0 {
		e.stopVerify(p, "")
	}
}

func (e *Engine) verifyReadDone(r *verifyRead, data []byte, err error) {
	e.removeInflight(&r.ext)
	vs, p := r.vs, r.p
	vs.reads--
	if !vs.running {
		return
	}
	bs := uint64(e.blockSize)
	if err != nil {
		// A failing disk: under DetachOnIOError this detaches it, which
		// stops the verify.
		e.ioFailed("verify checksum", r.run.first*bs, r.run.n*bs, err)
	}
	if err == nil && len(data) != int(r.run.n)*vs.csums.Size() {
		err = fmt.Errorf("got %d digest bytes, want %d", len(data), int(r.run.n)*vs.csums.Size())
	}
	if err != nil {
		e.stopVerify(p, fmt.Sprintf("checksum of [%d, +%d) failed here: %v", r.run.first*bs, r.run.n*bs, err))
		return
	}
	e.seq++
	payload := append(append(make([]byte, 0, 1+len(data)), byte(vs.csums)), data...)
	e.send(p, wire.Frame{Type: wire.TypeVerifyCsum, Seq: e.seq, Offset: r.run.first * bs, Length: uint32(r.run.n * bs), Payload: payload})
	vs.checking[e.seq] = r.run
}

// verifyReply handles VerifyReply: the blocks that differ are recorded and
// marked out of sync (quietly: see markQuietly).
func (e *Engine) verifyReply(p *peer, f *wire.Frame) {
	vs := p.verify
	var checking map[uint64]*blockRun
	if vs != nil {
		checking = vs.checking
	}
	run, ok := e.digestReply(p, f, checking, "verify")
	if !ok {
		return
	}
	if !vs.running {
		return
	}
	if f.Flags&wire.FlagNegative != 0 {
		bs := uint64(e.blockSize)
		e.stopVerify(p, fmt.Sprintf("node %d could not read [%d, +%d)", p.cfg.ID, run.first*bs, run.n*bs))
		return
	}
	for i := range run.n {
		if len(f.Payload) != 0 && f.Payload[i/8]&(1<<(i%8)) != 0 {
			vs.found.SetRange(run.first+i, 1)
			e.markQuietly(p, run.first+i, 1)
		}
	}
	vs.done += run.n
	e.scheduleVerify(p)
}

// stopVerify ends the verify with p: complete when why is "".
func (e *Engine) stopVerify(p *peer, why string) {
	vs := p.verify
	if vs == nil || !vs.running {
		return
	}
	vs.running, vs.stopped = false, why
	found := e.blocksToBytes(vs.found.Count())
	if why != "" {
		e.peerEvent(p, "verify", "", "", fmt.Sprintf("stopped after %d of %d bytes: %s; %d bytes out of sync so far", vs.done*uint64(e.blockSize), e.size, why, found))
		return
	}
	detail := fmt.Sprintf("finished: %d bytes compared, none out of sync", e.size)
	if found > 0 {
		detail = fmt.Sprintf("finished: %d bytes compared, %d out of sync, marked: disconnect and connect to resync them", e.size, found)
	}
	e.peerEvent(p, "verify", "", "", detail)
}

// markQuietly marks blocks [first, first+n) out of sync for an Established
// peer without starting a resync now: verify reports, it does not repair.
// If the marks begin here, the bitmap is tied to the generation the peer
// has, persisted, and announced with our next StateChange (for whatever
// reason it is sent); then, or at the next connection, the usual decision
// resyncs them.
func (e *Engine) markQuietly(p *peer, first, n uint64) {
	if p.bitmapUUID == 0 {
		p.bitmapUUID = p.gen.Current
		if p.bitmapUUID == 0 {
			p.bitmapUUID = e.current
		}
		e.persistDirty = true
		p.quietMarks = true
	}
	p.bitmap.SetRange(first, n)
	e.persistBitmaps = true // no activity-log extent covers them: see markUncovered
}

// verifyStatus is p's verify for Status; nil if none ran on this engine.
func (e *Engine) verifyStatus(p *peer) *VerifyStatus {
	vs := p.verify
	if vs == nil {
		return nil
	}
	bs := uint64(e.blockSize)
	st := &VerifyStatus{Running: vs.running, Done: vs.done * bs, Total: e.size,
		OutOfSync: e.blocksToBytes(vs.found.Count()), Stopped: vs.stopped}
	for b, ok := vs.found.NextSet(0); ok; b, ok = vs.found.NextSet(b) {
		if len(st.Ranges) == MaxVerifyRanges {
			st.More = true
			break
		}
		end := vs.found.NextClear(b)
		st.Ranges = append(st.Ranges, Range{Offset: b * bs, Length: (end - b) * bs})
		b = end
	}
	return st
}
