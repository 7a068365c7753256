package core

import (
	"errors"
	"fmt"
	"strings"

	"github.com/georepl/georepl/core/wire"
	"github.com/georepl/georepl/protocols"
)

// Connected reports that the handshake with peer completed (the driver
// checked authentication); ours is the hello we sent on this connection
// (built by Hello), h the one the peer sent. The engine checks that the
// hello belongs to this resource and peer, compares generation ids (see
// the package documentation) and either starts replicating, starts a
// resync, or drops the connection. Both ends decide from the two hellos,
// so their decisions mirror each other: if our role, disk state or ids
// changed since ours was built, the connection drops (ErrHelloChanged)
// and the next handshake carries the new state. If peer was connected,
// the old connection is first treated as lost.
func (e *Engine) Connected(peer NodeID, ours, h *wire.Hello) {
	defer e.finish()
	p := e.peer(peer)
	if p == nil {
		e.rd.Drop = append(e.rd.Drop, Drop{Peer: peer, StandAlone: true,
			Reason: fmt.Errorf("%w: node %d is not a peer of resource %q", ErrDeviceMismatch, peer, e.name)})
		return
	}
	if p.conn == Connected {
		e.disconnect(p, Connecting, "reconnected")
	}
	e.setConn(p, Connected, "")
	e.resetPace(p)
	p.gen = h.Gen
	p.sbSelf = sbSide{node: e.self, SplitBrain: ours.SplitBrain}
	p.sbPeer = sbSide{node: peer, SplitBrain: h.SplitBrain}
	said := side{role: Role(ours.Role), disk: DiskState(ours.Disk), gen: ours.Gen}
	p.discardMine = false
	e.setPeerRoleDisk(p, Role(h.Role), DiskState(h.Disk))
	p.rx = newReceiver(p)
	switch {
	case h.Resource != e.name || h.Size != e.size:
		e.dropPeer(p, fmt.Errorf("%w: peer has resource %q of %d bytes, we have %q of %d bytes",
			ErrDeviceMismatch, h.Resource, h.Size, e.name, e.size), true)
	case NodeID(h.From) != peer || NodeID(h.To) != e.self:
		e.dropPeer(p, fmt.Errorf("%w: hello from node %d to node %d on the connection from %d to %d",
			ErrProtocol, h.From, h.To, peer, e.self), false)
	case e.refusesStaleTerm(p, h.Term, Role(h.Role)):
	case e.refusesSecondPrimary(p):
	case e.role == Primary && h.SplitBrain.Flags&wire.HelloFollowsPrimary != 0:
		e.dropPeer(p, fmt.Errorf("%w: node %d replicates another Primary", ErrPeerPrimary, peer), false)
	case said != (side{role: e.role, disk: e.disk, gen: e.genFor(p)}):
		e.dropPeer(p, fmt.Errorf("%w: our hello to node %d said %v %v %s, we are now %v %v %s; reconnecting",
			ErrHelloChanged, peer, said.role, said.disk, fmtGen(said.gen), e.role, e.disk, fmtGen(e.genFor(p))), false)
	default:
		e.apply(p, e.decideWith(p), true)
	}
}

// Disconnected reports that the connection to peer is lost or closed.
// Writes not yet acknowledged by it are marked in its bitmap, requests
// waiting for it stop waiting, a resync stops. A Primary that loses a
// replicating peer starts a new generation with its next write. Ignored
// for a peer that is not connected (for example after the engine asked to
// Drop it).
func (e *Engine) Disconnected(peer NodeID) {
	defer e.finish()
	if p := e.peer(peer); p != nil && p.conn == Connected {
		e.disconnect(p, Connecting, "connection lost")
	}
}

// otherPrimary returns a connected peer other than p that is Primary, or
// nil.
func (e *Engine) otherPrimary(p *peer) *peer {
	for _, q := range e.peers {
		if q != p && q.conn == Connected && q.role == Primary {
			return q
		}
	}
	return nil
}

// refusesSecondPrimary drops the connection to p, and reports so, when p
// is Primary while this Secondary already replicates another Primary: a
// node applying two Primaries' writes would hold neither's data, and
// either Primary would count it for its quorum. Not StandAlone: the
// other Primary may be on its way out (a switchover seen out of order),
// and a fresh handshake decides again.
func (e *Engine) refusesSecondPrimary(p *peer) bool {
	q := e.otherPrimary(p)
	if e.role == Primary || p.role != Primary || q == nil {
		return false
	}
	e.dropPeer(p, fmt.Errorf("%w: node %d is Primary, and this node already replicates Primary node %d", ErrPeerPrimary, p.cfg.ID, q.cfg.ID), false)
	return true
}

// dropPeer asks the driver to close the connection and forgets it.
func (e *Engine) dropPeer(p *peer, reason error, standAlone bool) {
	e.rd.Drop = append(e.rd.Drop, Drop{Peer: p.cfg.ID, Reason: reason, StandAlone: standAlone})
	to := Connecting
	if standAlone {
		to = StandAlone
	}
	e.disconnect(p, to, reason.Error())
}

// disconnect forgets the connection to p, which goes to state to.
func (e *Engine) disconnect(p *peer, to ConnState, why string) {
	wasReplicating := e.role == Primary && p.replicating()
	// The marks below stand for writes older than now.
	unackedSince, hadUnacked := e.oldestUnacked(p)
	hadMarks := p.bitmap.Count() > 0
	for _, w := range e.writes {
		pr := &w.prog[p.idx]
		if !pr.sent {
			continue
		}
		if pr.level != protocols.Written || p.ackedEpoch < w.epoch {
			e.markOutOfSync(p, w.off, w.length)
		}
		*pr = progress{}
	}
	if hadUnacked && p.bitmap.Count() > 0 && (!hadMarks || unackedSince < p.marksSince) {
		p.marksSince = unackedSince
	}
	if wasReplicating && p.bitmapUUID == 0 {
		// The next generation must not be mistaken for one p has.
		p.bitmapUUID = p.gen.Current
		if p.bitmapUUID == 0 {
			p.bitmapUUID = e.current
		}
		e.persistDirty = true
	}
	p.unacked, p.ackedEpoch = 0, 0
	p.flushed, p.flushSent = false, 0
	p.blockedQ, p.blockedBytes = nil, 0
	if wasReplicating {
		// Before the writes complete without p: a leased Primary holds
		// them for the new generation (Lease).
		e.rotatePending = true
	}
	for _, w := range e.writes {
		e.maybeComplete(w)
	}
	for _, f := range e.flushes {
		f.wait[p.idx] = false
		f.standIn[p.idx] = false
	}
	e.maybeCompleteFlushes()
	e.readsLost(p)
	e.stopVerify(p, "connection lost")
	if p.verify != nil {
		clear(p.verify.checking)
	}
	if p.rs != nil {
		p.rs.lost = true
		p.rs = nil
		e.peerEvent(p, "resync", "", "", "interrupted")
	}
	p.resyncDoneSent, p.adopting, p.quietMarks = false, 0, false
	p.resyncWrote = nil
	if p.rx != nil {
		if p.role == Primary && e.role != Primary {
			e.markRecentForOthers(p)
		}
		e.abandonReceiver(p.rx)
		p.rx = nil
	}
	e.setRepl(p, ReplOff, "")
	e.setConn(p, to, why)
	e.setPeerRoleDisk(p, RoleUnknown, DUnknown)
	p.gen = wire.GenIDs{}
}

// Receive handles a frame from a connected peer; the engine takes
// ownership of its payload. Frames from a peer that is not connected are
// ignored. Intro, Hello, Auth, Refuse, Ping and Batch frames belong to the
// driver and drop the connection as protocol violations, like any frame
// not allowed in the current state.
func (e *Engine) Receive(from NodeID, f *wire.Frame) {
	defer e.finish()
	p := e.peer(from)
	if p == nil || p.conn != Connected {
		return
	}
	switch f.Type {
	case wire.TypeData, wire.TypeResyncData, wire.TypeOutOfSync, wire.TypeReadRequest:
		if end := f.Offset + uint64(f.Length); f.Length == 0 || end < f.Offset || end > e.size {
			e.violation(p, f, fmt.Sprintf("range [%d, +%d) outside the device", f.Offset, f.Length))
			return
		}
		if f.Type == wire.TypeReadRequest {
			if len(f.Payload) != 0 {
				e.violation(p, f, "read request with a payload")
				return
			}
			// A Primary splits reads into requests of at most
			// MaxWriteLength; the reply must fit a frame, and the
			// read is held in memory whole.
			if f.Length > MaxWriteLength {
				e.violation(p, f, fmt.Sprintf("read request of %d bytes, over the %d a Primary asks for at most", f.Length, MaxWriteLength))
				return
			}
			break
		}
		noPayload := f.Type == wire.TypeOutOfSync || f.Flags&(wire.FlagZeroes|wire.FlagTrim) != 0
		if n := uint64(len(f.Payload)); (noPayload && n != 0) || (!noPayload && n != uint64(f.Length)) {
			e.violation(p, f, fmt.Sprintf("%d payload bytes for a length of %d", n, f.Length))
			return
		}
	}
	switch f.Type {
	case wire.TypeData:
		if p.role != Primary || e.role == Primary || (p.repl != Established && p.repl != SyncTarget) {
			e.violation(p, f, "data from a node that is not our primary")
			return
		}
		e.receiveWrite(p, f, false)
	case wire.TypeBarrier:
		if p.role != Primary || e.role == Primary {
			e.violation(p, f, "barrier from a node that is not our primary")
			return
		}
		e.receiveBarrier(p, f)
	case wire.TypeResyncData:
		if e.resyncCrossedDetach(p) {
			return
		}
		if p.repl != SyncTarget {
			e.violation(p, f, "resync data without a resync from this peer")
			return
		}
		e.receiveWrite(p, f, true)
	case wire.TypeResyncCsum:
		if e.resyncCrossedDetach(p) {
			return
		}
		if p.repl != SyncTarget {
			e.violation(p, f, "resync checksums without a resync from this peer")
			return
		}
		e.receiveCsum(p, f)
	case wire.TypeResyncCsumReply:
		e.resyncCsumReply(p, f)
	case wire.TypeVerifyCsum:
		if p.role != Primary || e.role == Primary || (p.repl != Established && p.repl != SyncTarget) {
			e.violation(p, f, "verify from a node that is not our primary")
			return
		}
		e.receiveCsum(p, f)
	case wire.TypeVerifyReply:
		e.verifyReply(p, f)
	case wire.TypeInvalidateRequest:
		e.receiveInvalidate(p)
	case wire.TypeResyncDone:
		if p.repl != SyncTarget {
			e.violation(p, f, "resync done without a resync from this peer")
			return
		}
		e.resyncTargetDone(p, f.Offset, f.Seq)
	case wire.TypeRecvAck:
		e.recvAck(p, f)
	case wire.TypeWriteAck:
		if f.Flags&wire.FlagResync != 0 {
			e.resyncAck(p, f)
		} else {
			e.writeAck(p, f)
		}
	case wire.TypeBarrierAck:
		e.barrierAck(p, f)
	case wire.TypeReadRequest:
		if p.role != Primary || e.role == Primary {
			e.violation(p, f, "read request from a node that is not our primary")
			return
		}
		e.receiveReadRequest(p, f)
	case wire.TypeReadReply:
		e.readReply(p, f)
	case wire.TypeStateChange:
		e.receiveState(p, f)
	case wire.TypeOutOfSync:
		if p.rs == nil {
			e.violation(p, f, "out-of-sync marks outside a resync")
			return
		}
		before := p.bitmap.Count()
		p.bitmap.SetBytes(f.Offset, uint64(f.Length), e.blockSize)
		p.resyncWhy.MarkedByPeer += e.blocksToBytes(p.bitmap.Count() - before)
	default:
		e.violation(p, f, "unexpected frame")
	}
}

func (e *Engine) violation(p *peer, f *wire.Frame, what string) {
	e.dropPeer(p, fmt.Errorf("%w: %s: %v seq %d (we are %v, peer %v, %v)", ErrProtocol, what, f.Type, f.Seq, e.role, p.role, p.repl), false)
}

// side is what one end of a connection knows about itself for the
// generation id comparison. Gen.Bitmap is its bitmap uuid towards the other
// end.
type side struct {
	role Role
	disk DiskState
	gen  wire.GenIDs
	sb   sbSide // split-brain inputs, from the handshake's hellos
}

// decision is the outcome of comparing two sides, from the first side's
// point of view.
type decision struct {
	repl ReplState // Established, SyncSource or SyncTarget
	full bool      // resync everything, not just the source's bitmap
	rule int       // the row of the table in the package documentation
	err  error     // drop the connection (StandAlone) for this reason
	why  string
	// resolved: a split brain (row 6) that the policy resolved; why says
	// how, and repl which end discards its changes.
	resolved bool
}

func (e *Engine) decideWith(p *peer) decision {
	self := side{role: e.role, disk: e.disk, gen: e.genFor(p), sb: p.sbSelf}
	return decide(self, side{role: p.role, disk: p.disk, gen: p.gen, sb: p.sbPeer})
}

// genFor is our generation ids as p sees them: with our bitmap id for p.
func (e *Engine) genFor(p *peer) wire.GenIDs {
	return wire.GenIDs{Current: e.current, Bitmap: p.bitmapUUID, History: e.history}
}

func fmtGen(g wire.GenIDs) string {
	return fmt.Sprintf("current %x bitmap %x history %x %x", g.Current, g.Bitmap, g.History[0], g.History[1])
}

// syncDir is a sync direction found in the generation ids.
type syncDir int

const (
	inSync     syncDir = iota
	fromSelf           // self is the source
	fromPeer           // the peer is the source
	fromEither         // same data, but someone marked blocks: the Primary is the source
)

// decide applies the generation id table (package documentation), the
// split-brain policy and the role rules: resync always flows from the
// Primary, a Primary is never a sync target, and a source must be
// UpToDate. Both ends of a connection call it with the sides swapped and
// reach mirrored decisions.
func decide(s, p side) decision {
	if s.role == Primary && p.role == Primary {
		return decision{err: fmt.Errorf("%w: both nodes are Primary", ErrPeerPrimary)}
	}
	if s.disk == Diskless || p.disk == Diskless {
		// Nothing to resync to or from a node without a disk; a
		// Primary marks every write for a Diskless peer, and a
		// Diskless Primary serves only through peers in sync with it.
		return decision{repl: Established, why: "no disk attached on one side"}
	}
	dir, full, rule, err := compareGenIDs(s.gen, p.gen)
	var sbErr error // a split brain that the policy resolved
	resolved := ""
	if rule == 6 && err != nil {
		victim, how, verr := splitBrainVictim(s.sb, p.sb)
		if verr != nil {
			err = fmt.Errorf("%w; %v", err, verr)
		} else {
			sbErr, err = err, nil
			resolved = fmt.Sprintf("%v; resolved by %s: node %d discards its changes", sbErr, how, victim)
			dir = fromSelf
			if victim == s.sb.node {
				dir = fromPeer
			}
		}
	}
	if err != nil && s.role != Primary && p.role != Primary {
		// Two Secondaries exchange no data, and while one of them is
		// behind a resync from the Primary their ids differ for a while:
		// judge them when one is promoted.
		return decision{repl: Established, rule: rule, why: err.Error() + "; judged again when one is promoted"}
	}
	if err != nil {
		return decision{rule: rule, err: err}
	}
	if dir == fromEither {
		switch {
		case s.role == Primary:
			dir = fromSelf
		case p.role == Primary:
			dir = fromPeer
		default:
			return decision{repl: Established, rule: rule, why: "blocks out of sync; resync waits for a Primary"}
		}
	}
	if dir == inSync {
		return decision{repl: Established, rule: rule}
	}
	src, dst, repl := s, p, SyncSource
	if dir == fromPeer {
		src, dst, repl = p, s, SyncTarget
	}
	if dst.role == Primary && resolved == "" && src.sb.Flags&wire.SplitBrainDiscardMine != 0 &&
		dst.sb.Flags&wire.SplitBrainDiscardMine == 0 {
		// The Primary's data is older than the peer's, whose operator
		// throws the peer's changes away: the Primary is the source. The
		// newer side's marks cover its changes when they are tied to
		// the Primary's current id; otherwise only a full resync does.
		full = full || (src.gen.Bitmap != dst.gen.Current && dst.gen.Bitmap != src.gen.Current)
		resolved = fmt.Sprintf("the Primary's data (current %x) is older than its peer's (current %x); resolved by discard-my-data: node %d discards its changes",
			dst.gen.Current, src.gen.Current, src.sb.node)
		src, dst = dst, src
		repl = SyncSource
		if src != s {
			repl = SyncTarget
		}
	}
	switch {
	case dst.role == Primary && resolved != "":
		return decision{rule: rule, err: fmt.Errorf("%w%s, but it is Primary and a Primary's data is never overwritten: demote it and connect again",
			sbErr, strings.TrimPrefix(resolved, sbErr.Error()))}
	case dst.role == Primary:
		return decision{rule: rule, err: fmt.Errorf("%w: the Primary's data (current %x) is older than its peer's (current %x)",
			ErrSplitBrain, dst.gen.Current, src.gen.Current)}
	case src.role != Primary && resolved != "":
		return decision{repl: Established, rule: rule, why: resolved + "; resync waits for the survivor to be Primary"}
	case src.role != Primary:
		return decision{repl: Established, rule: rule, why: "resync waits for a Primary"}
	case src.disk != UpToDate:
		return decision{repl: Established, rule: rule, why: "the would-be sync source is " + src.disk.String()}
	}
	return decision{repl: repl, full: full, rule: rule, why: resolved, resolved: resolved != ""}
}

// compareGenIDs is the generation id table of the package documentation.
func compareGenIDs(s, p wire.GenIDs) (dir syncDir, full bool, rule int, err error) {
	switch {
	case s.Current == 0 && p.Current == 0:
		return inSync, false, 1, nil
	case s.Current == 0 && s.Bitmap != 0 && s.Bitmap == p.Bitmap:
		// An interrupted initial full sync into s (resumeFullSync): the
		// source's marks, tied to the same id, hold what is left.
		return fromPeer, false, 2, nil
	case p.Current == 0 && p.Bitmap != 0 && p.Bitmap == s.Bitmap:
		return fromSelf, false, 2, nil
	case s.Current == 0:
		return fromPeer, true, 2, nil
	case p.Current == 0:
		return fromSelf, true, 2, nil
	case s.Current == p.Current:
		if s.Bitmap != 0 || p.Bitmap != 0 {
			return fromEither, false, 3, nil
		}
		return inSync, false, 3, nil
	case s.Bitmap != 0 && s.Bitmap == p.Current:
		return fromSelf, false, 4, nil
	case p.Bitmap != 0 && p.Bitmap == s.Current:
		return fromPeer, false, 5, nil
	case s.Bitmap != 0 && s.Bitmap == p.Bitmap:
		return inSync, false, 6, fmt.Errorf("%w: both nodes changed the data since generation %x (ours now %x, the peer's %x)",
			ErrSplitBrain, s.Bitmap, s.Current, p.Current)
	case marksCover(s, p) == coverBoth || marksCover(p, s) == coverBoth:
		return fromEither, false, 4, nil
	case marksCover(s, p) == coverFrom:
		return fromSelf, false, 4, nil
	case marksCover(p, s) == coverFrom:
		return fromPeer, false, 5, nil
	case inHistory(p.Current, s):
		return fromSelf, true, 7, nil
	case inHistory(s.Current, p):
		return fromPeer, true, 7, nil
	}
	return inSync, false, 8, fmt.Errorf("%w: current %x history %x %x, the peer's current %x history %x %x",
		ErrUnrelatedData, s.Current, s.History[0], s.History[1], p.Current, p.History[0], p.History[1])
}

// coverage says whether bitmaps cover the differences between two nodes
// whose ids rows 3 to 5 do not relate.
type coverage int

const (
	coverNone coverage = iota
	coverFrom          // a resync from the first node covers them
	coverBoth          // a resync in either direction does: the Primary decides
)

// marksCover relates a and b when b's current id is not a's bitmap id
// (rows 4 and 5 in their general form); the target's own marks are always
// merged into the source's bitmap:
//
//   - b adopted generations of a's after the one a's bitmap is tied to,
//     before a heard of it: a's bitmap id is in b's history, b has no
//     marks, and a moved on since its marks began. From a.
//   - b's marks began at b's current id (b lost its Primary, restarted
//     after a crash and marked its activity log, or became a sync
//     target), so they cover everything b holds of a generation a never
//     had. If a's marks cover a's changes since their common ancestor (a's
//     bitmap id is in b's history), either direction works; if a moved on
//     from b's current id while sending b everything (it is in a's
//     history, a has no marks), from a.
func marksCover(a, b wire.GenIDs) coverage {
	switch {
	case a.Bitmap != 0 && b.Bitmap == 0 && a.Bitmap != a.Current && inHistory(a.Bitmap, b):
		return coverFrom
	case b.Bitmap != 0 && b.Bitmap == b.Current && a.Bitmap != 0 && inHistory(a.Bitmap, b):
		return coverBoth
	case b.Bitmap != 0 && b.Bitmap == b.Current && a.Bitmap == 0 && inHistory(b.Current, a):
		return coverFrom
	}
	return coverNone
}

// inHistory reports whether id is one of g's history ids.
func inHistory(id uint64, g wire.GenIDs) bool {
	return id != 0 && (id == g.History[0] || id == g.History[1])
}

// apply carries out a decision for a connected peer whose replication is
// not running a resync. Refusals are final (StandAlone), except two
// Primaries seen after the handshake: a StateChange that crossed a
// switchover (one demoted, the other promoted) shows a stale role, and a
// fresh handshake decides again.
func (e *Engine) apply(p *peer, d decision, atConnect bool) {
	if d.err != nil {
		if errors.Is(d.err, ErrSplitBrain) {
			p.splitBrains++
			e.peerEvent(p, "split-brain", "", "standalone", d.err.Error())
		}
		e.dropPeer(p, d.err, atConnect || !errors.Is(d.err, ErrPeerPrimary))
		return
	}
	if d.resolved {
		p.splitBrains++
		e.peerEvent(p, "split-brain", "", "resolved", d.why)
	}
	switch d.repl {
	case Established:
		e.setRepl(p, Established, d.why)
		if e.role != Primary && p.role == Primary && e.current == p.gen.Current &&
			(e.disk == Consistent || e.disk == Outdated) {
			e.setDisk(UpToDate, "in sync with the primary")
		}
		if atConnect && e.behindDisklessPrimary(p) {
			// It cannot resync us, and sends us its new writes on top
			// of what we lack: our data is no image it ever had. Only
			// a resync from a Primary with a disk repairs it, and only
			// a full one knows every block we lack.
			e.setDisk(Inconsistent, fmt.Sprintf("node %d, a Primary without a disk, completed writes while we were away (its current %x, ours %x, its bitmap id for us %x)",
				p.cfg.ID, p.gen.Current, e.current, p.gen.Bitmap))
			for _, q := range e.peers {
				if q != p && e.current != 0 {
					e.markUncovered(q, 0, e.size)
				}
			}
			e.announce = true
		}
	case SyncSource:
		e.startResync(p, d.full, fullWhy(d))
	case SyncTarget:
		p.resyncTotal, p.resyncDone, p.resyncSame = 0, 0, 0
		p.resyncWhy = ResyncWhy{Full: fullWhy(d), Invalidated: p.invalidated}
		if !d.full {
			p.resyncWhy.MarkedHere = e.blocksToBytes(p.bitmap.Count())
			p.resyncWhy.AfterCrash = p.afterCrash
		}
		e.setDisk(Inconsistent, fmt.Sprintf("resync from node %d", p.cfg.ID))
		e.setRepl(p, SyncTarget, "")
		p.resyncWrote = NewBitmap(e.size / uint64(e.blockSize))
		// Only p knows which of our blocks it will rewrite: towards any
		// other node every block is in doubt until the resync is done
		// (a later resync from another node must be full).
		for _, q := range e.peers {
			switch {
			case q == p:
			case e.current != 0:
				e.markUncovered(q, 0, e.size)
			case q.bitmapUUID != 0:
				// No generation of our own: a resync from q resumes
				// from q's marks (resumeFullSync) only while nothing
				// else wrote here since q's resync stopped.
				q.bitmapUUID = 0
				e.persistDirty = true
			}
		}
		// Our own marks for the source (a full resync needs none), then
		// our StateChange as SyncTarget, which tells the source that they
		// are complete: it does not finish before.
		if !d.full {
			e.sendMarks(p)
		}
		e.announce = true
	}
}

// resyncCrossedDetach drops p, and reports so, when p's resync reaches
// this node after it detached its disk: p sent it before it learnt so
// (our StateChange was on its way), which breaks no rule; a fresh
// handshake finds us Diskless.
func (e *Engine) resyncCrossedDetach(p *peer) bool {
	if e.disk != Diskless {
		return false
	}
	e.dropPeer(p, fmt.Errorf("node %d's resync crossed the detach of this node's disk", p.cfg.ID), false)
	return true
}

// behindDisklessPrimary reports whether p, a Primary whose disk is
// detached, wrote what our disk lacks: it moved to another generation or
// marked blocks for us while we were not connected. decide cannot resync
// us from it (nothing flows from a node without a disk).
func (e *Engine) behindDisklessPrimary(p *peer) bool {
	return e.role != Primary && p.role == Primary && p.disk == Diskless &&
		e.disk != Diskless && e.disk != Inconsistent &&
		(e.current != p.gen.Current || p.gen.Bitmap != 0)
}

// fullWhy says why decision d resyncs every block, "" when it does not.
func fullWhy(d decision) string {
	switch {
	case !d.full:
		return ""
	case d.rule == 2:
		return "new peer: one side has no data generation yet"
	default:
		return "no bitmap covers the older side's generation"
	}
}

// resumeFullSync lets an initial full sync into this node (no generation
// of its own yet) continue after an interruption instead of starting over:
// the source announces the id its marks for us are tied to, and we keep it
// as our bitmap id towards the source (persisted, sent in our hello).
// Reconnecting, both ids match (row 2 of the table, as a bitmap resync).
// Fresh metadata here (create-md) or on the source forgets it, and so do
// a resync from another node into us meanwhile (apply) and a restart of a
// detached disk (Config.State): the sync is full again.
func (e *Engine) resumeFullSync(p *peer) {
	if p.repl == SyncTarget && e.current == 0 && p.gen.Bitmap != 0 && p.bitmapUUID != p.gen.Bitmap {
		p.bitmapUUID = p.gen.Bitmap
		e.persistDirty = true
	}
}

// reevaluate repeats the decision for a connected peer after generation ids
// or roles changed, unless a resync with it is running.
func (e *Engine) reevaluate(p *peer) {
	if p.conn == Connected && (p.repl == Established || p.repl == Behind) {
		e.apply(p, e.decideWith(p), false)
	}
}

// fallBehind records that our Primary p went Ahead of us: it sends no more
// writes until it resyncs us. Everything it sent before is applied in epoch
// order, so our disk is a consistent older image: Outdated (persisted), not
// UpToDate, until the catch-up resync.
func (e *Engine) fallBehind(p *peer) {
	e.setRepl(p, Behind, "the primary is ahead (congestion)")
	if e.disk == UpToDate {
		e.setDisk(Outdated, fmt.Sprintf("node %d is ahead", p.cfg.ID))
	}
}

// adopts reports whether peer p, connected to us while our current id was
// old, will adopt our new generation rather than need a resync: the mirror
// of adoptGeneration. When we are Diskless, p's marks for us (p.gen.Bitmap)
// are for our detached disk and do not count.
func adopts(p *peer, old uint64, diskless bool) bool {
	return old != 0 && p.conn == Connected && p.repl == Established && p.role != Primary &&
		p.disk == UpToDate && p.gen.Current == old && (p.gen.Bitmap == 0 || diskless) && p.bitmapUUID == 0
}

// sendState sends our role, disk and generation ids to p on the data
// channel, ordered with the writes around the change.
func (e *Engine) sendState(p *peer) {
	st := wire.State{Role: uint8(e.role), Disk: uint8(e.disk), Repl: uint8(p.repl), Size: e.size,
		Gen: wire.GenIDs{Current: e.current, Bitmap: p.bitmapUUID, History: e.history}, Term: e.actingTerm()}
	payload, err := st.MarshalBinary()
	if err != nil {
		// A State has no variable-length field: marshalling cannot fail.
		panic(fmt.Sprintf("core: marshal state: %v", err))
	}
	e.send(p, wire.Frame{Type: wire.TypeStateChange, Payload: payload})
	p.quietMarks = false
}

// receiveState handles a peer's StateChange.
func (e *Engine) receiveState(p *peer, f *wire.Frame) {
	var st wire.State
	if err := st.UnmarshalBinary(f.Payload); err != nil {
		e.dropPeer(p, fmt.Errorf("%w: state change: %w", ErrProtocol, err), false)
		return
	}
	// A sync target's state sent before it learnt that the resync finished
	// (acknowledgements overtake it on the control channel) carries the
	// generation ids it is about to replace: ignore them.
	peerRepl := ReplState(st.Repl)
	stale := peerRepl == SyncTarget && p.resyncDoneSent
	if peerRepl != SyncTarget {
		p.resyncDoneSent = false
	}
	oldRole, oldMarks := p.role, p.gen.Bitmap
	if oldRole == Primary && Role(st.Role) != Primary && p.rx != nil {
		// Our Primary demoted itself: it confirms nothing more.
		e.markRecentForOthers(p)
	}
	e.setPeerRoleDisk(p, Role(st.Role), DiskState(st.Disk))
	if p.rs != nil && p.disk == Diskless {
		// Our sync target detached its disk: the resync cannot go on,
		// and every block is marked for it (setPeerRoleDisk). A fresh
		// handshake finds it Diskless and sends it nothing.
		e.dropPeer(p, fmt.Errorf("node %d detached its disk during our resync of it; it is resynchronised in full when its disk returns", p.cfg.ID), false)
		return
	}
	if e.refusesStaleTerm(p, st.Term, p.role) || e.refusesSecondPrimary(p) {
		return
	}
	if e.role == Primary && p.role == Primary && oldRole != Primary {
		// Promotions that crossed: each side decided against the other
		// as a Secondary, and either may be resynchronising the other
		// (its frames may be on their way). Two Primaries exchange no
		// data; a fresh handshake decides (and refuses).
		e.dropPeer(p, fmt.Errorf("%w: both nodes are Primary (promoted at the same time)", ErrPeerPrimary), false)
		return
	}
	if stale {
		return
	}
	p.gen = st.Gen
	if p.gen.Current == p.adopting {
		p.adopting = 0
	}
	e.resumeFullSync(p)
	if peerRepl == Ahead {
		// Our Primary stopped sending writes (congestion): nothing to
		// decide until its catch-up resync is announced.
		if p.role == Primary && e.role != Primary && p.repl == Established {
			e.fallBehind(p)
		}
		return
	}
	e.adoptGeneration(p)
	// A Primary's peers announce new ids to confirm ones it sent them or
	// to finish a resync (and may lag behind the ids in flight to them):
	// nothing to decide unless a role changed, the peer now holds marks
	// for us, or it expects a resync we did not decide (it judged newer
	// ids of ours than we judged its).
	if e.role != Primary || p.role != oldRole || p.gen.Bitmap != oldMarks ||
		(peerRepl == SyncTarget && p.repl == Established) {
		e.reevaluate(p)
	}
	if p.rs != nil && peerRepl == SyncTarget && !p.rs.targetReady {
		e.targetReady(p)
	}
}

// adoptGeneration takes over the Primary's new generation when we are in
// sync with it: Established, UpToDate, no marks on either side (ours for a
// Diskless Primary excepted: they are for its detached disk), and our
// current id is the one it just moved to its history. The Primary expects
// exactly this (adopts).
func (e *Engine) adoptGeneration(p *peer) {
	if e.role == Primary || p.role != Primary || p.repl != Established || e.disk != UpToDate ||
		e.current == 0 || p.gen.Current == e.current || p.gen.History[0] != e.current ||
		p.gen.Bitmap != 0 || (p.bitmapUUID != 0 && p.disk != Diskless) {
		return
	}
	e.event(Event{What: "gen", Old: fmt.Sprintf("%x", e.current), New: fmt.Sprintf("%x", p.gen.Current),
		Detail: fmt.Sprintf("adopted from node %d", p.cfg.ID)})
	e.current, e.history = p.gen.Current, p.gen.History
	e.persistDirty = true
	e.announce = true
}
