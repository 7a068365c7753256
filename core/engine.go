package core

import (
	"fmt"
	"time"

	"github.com/georepl/georepl/core/wire"
	"github.com/georepl/georepl/protocols"
)

// Engine is the replication engine of one resource on one node. It is not
// safe for concurrent use: one goroutine at a time calls its methods (see
// the package documentation).
type Engine struct {
	self        NodeID
	name        string
	size        uint64
	blockSize   uint32
	epochMax    int
	chunkBlocks uint64
	window      int
	diskFlushes bool
	onIOError   IOErrorPolicy
	newUUID     func() uint64
	clock       func() uint64
	// ticked is the time the driver reported through Tick since New: the
	// engine's own clock, which dates the writes and marks RPO ages.
	ticked time.Duration

	role     Role
	disk     DiskState
	current  uint64
	history  [2]uint64
	promoted uint64 // Persistent.Promoted
	term     uint64 // Persistent.Term: the highest failover term seen
	roleTerm uint64 // while Primary: the term it was promoted in

	quorum int // Config.Quorum; 0: off
	// witnesses is Config.Witnesses, witnessesUp how many of them the
	// driver last said are reachable (Engine.Witnesses).
	witnesses, witnessesUp int
	onNoQuorum             NoQuorumPolicy
	// leased: Config.Leased; leaseUntil and leaseGen are the last Lease.
	leased       bool
	leaseUntil   uint64
	leaseGen     uint64
	hadQuorum    bool        // quorate() when last looked at (updateQuorum)
	quorumForced bool        // promoted by force without quorum, until it returns
	parked       []RequestID // finished without quorum, completed when it returns
	suspended    []Request   // submitted without quorum, started when it returns

	persistDirty bool
	announce     bool // our role, disk or generation changed: tell the peers
	// rotatePending: a peer missed writes or may miss the next ones; the
	// next write starts a new generation. Until something is written the
	// data is still the generation that peer has.
	rotatePending bool

	peers []*peer
	byID  [MaxNodes]*peer

	seq         uint64 // last sequence number given to a data or resync frame
	epoch       uint64 // the primary's open epoch
	epochWrites int    // writes started in the open epoch
	epochCloses bool   // a write of the open epoch completed

	nextOp OpID
	ops    map[OpID]opOwner

	pending  int       // application requests not yet completed
	held     []Request // writes waiting for an overlapping one, FIFO
	writes   []*write  // primary writes still tracked, by seq
	bySeq    map[uint64]*write
	flushes  []*flushReq // flush requests not yet completed
	reads    []*readReq  // read requests not yet completed
	readTag  uint64      // last tag given to a ReadRequest
	inflight []*extent   // local writes and resync reads in flight
	scratch  []protocols.Peer

	// persistBitmaps: a bitmap holds marks that no activity-log extent
	// covers (markUncovered): Ready.PersistBitmaps.
	persistBitmaps bool
	unsynced       unsyncedWrites // what a failed flush may have lost (syncFailed)
	// plainWritten counts the local writes done without FUA, the failed
	// ones and the failed flushes; plainFlushed is its value when the
	// last flush of the local disk that succeeded was issued. While they
	// are equal the local disk holds nothing a flush would make durable
	// (localClean; a Secondary's barrier flush, pump). plainWritten starts at 1: what the page cache held
	// before the engine started is not known.
	plainWritten, plainFlushed uint64
	// draining are the receivers of lost connections that still apply
	// what they received (abandonReceiver); arrivals stamps the frames
	// queued to a receiver that held nothing (receiver.pendingSince).
	draining  []*receiver
	arrivals  uint64
	rxScratch []*receiver

	rd  Ready
	inv invariantState
}

// peer is everything the engine knows about one configured peer.
type peer struct {
	cfg PeerConfig
	idx int

	conn ConnState
	repl ReplState
	role Role
	disk DiskState
	gen  wire.GenIDs // the peer's ids; Bitmap is its bitmap uuid towards us
	term uint64      // the failover term of its hello or last state change

	bitmap     *Bitmap
	bitmapUUID uint64

	unacked uint64 // data bytes sent and not yet acknowledged as written
	// blockedQ are the writes held at level None by MaxBuffer, in sequence
	// order (always the latest sent), and blockedBytes their payload.
	blockedQ     []*write
	blockedBytes uint64
	ackedEpoch   uint64 // highest BarrierAck on this connection
	// flushed: every write this node completed as Primary with p
	// replicating is durable on p. It is set by the BarrierAck of a flush
	// barrier sent after the last write that reached p without FUA under
	// protocol C (plainEpoch), and cleared by such a write, by a lost
	// connection and by a promotion. A protocol C peer writes a FUA
	// write durably before its WriteAck.
	flushed    bool
	plainEpoch uint64 // epoch of the last write sent to it without FUA under C
	flushSent  uint64 // epoch of the last flush barrier sent on this connection

	// discardMine: offer to be the victim of a split brain at the next
	// handshake (DiscardMyData). sbSelf and sbPeer are both ends'
	// split-brain inputs from the hellos of the current connection.
	discardMine    bool
	sbSelf, sbPeer sbSide

	resyncSoon     bool          // marked while Established: decide again in finish
	resyncDoneSent bool          // until the target's StateChange after ResyncDone
	adopting       uint64        // our generation it adopts from StateChanges in flight
	rs             *resyncSource // we are its sync source
	verify         *verifySource // the last verify we ran with it
	// quietMarks: the bitmap id was set by verify and not yet announced
	// (markQuietly); the next StateChange or resync announces it.
	quietMarks bool
	rx         *receiver // frames it sends us to write
	// unconfirmedMarked is the highest sequence number of the writes it
	// sent us as our Primary that markRecentForOthers turned into marks
	// for the other peers (it was demoted, or our connection to it was
	// lost): they may still be on their way to those peers over their own
	// connections to it, so a barrier of its clears none of our marks
	// for them until it confirms that far (receiveBarrier). A ResyncDone
	// that tells of writes not confirmed everywhere raises it too
	// (resyncTargetDone).
	unconfirmedMarked uint64
	// resyncWrote: as our sync source, the blocks its resync data
	// rewrote here in the resync running (see resyncTargetDone).
	resyncWrote             *Bitmap
	resyncTotal, resyncDone uint64
	resyncSame              uint64    // bytes a checksum comparison found identical
	resyncWhy               ResyncWhy // of the running or last resync
	// afterCrash is Config.RecoveredExtents until a resync with the peer
	// is done: those extents are among our marks for it.
	afterCrash int
	// invalidated is ResyncWhy.Invalidated until the resync it asked for
	// is done.
	invalidated string
	// detachedMarks is ResyncWhy.Detached until a resync with the peer is
	// done: every block was marked when it announced Diskless.
	detachedMarks          bool
	dataSent, dataReceived uint64
	// writesSent and writesReceived count application writes (data
	// frames, not resync); aheadEpisodes the times the peer was left Ahead;
	// splitBrains the split brains met with it, resolved or not.
	writesSent, writesReceived uint64
	aheadEpisodes, splitBrains uint64
	// marksSince is when the peer's bitmap last went from empty to marked
	// (or the time of the oldest write whose marks a lost connection
	// left there): the age of the oldest difference the marks stand for.
	marksSince   time.Duration
	resyncPaused bool  // PauseResync: no new resync reads
	pace         pacer // resync pacing and measured rates
}

// replicating reports whether application writes are sent to p: not to a
// Diskless peer, which could not write them.
func (p *peer) replicating() bool {
	return p.conn == Connected && (p.repl == Established || p.repl == SyncSource) && p.disk != Diskless
}

// extent is a byte range with a local operation in flight that other
// operations on the same range must be ordered against.
type extent struct {
	off, end uint64
	write    bool // a write (else a resync read)
}

func (x *extent) overlaps(off, end uint64) bool { return x.off < end && off < x.end }

// opOwner says what a local operation belongs to; exactly one field is set.
type opOwner struct {
	write    *write
	flush    *flushReq
	rxWrite  *rxWrite
	rxFlush  *segment
	syncRead *syncRead
	read     *readReq
	verify   *verifyRead
}

// New validates cfg and returns an engine in role Secondary with every peer
// Connecting. It returns an error naming the field if cfg is invalid.
func New(cfg Config) (*Engine, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	e := &Engine{
		self:         cfg.Self,
		name:         cfg.Name,
		size:         cfg.Size,
		blockSize:    cfg.BlockSize,
		epochMax:     cfg.EpochMaxWrites,
		chunkBlocks:  uint64(cfg.ResyncChunk / cfg.BlockSize),
		window:       cfg.ResyncWindow,
		diskFlushes:  cfg.DiskFlushes,
		plainWritten: 1,
		onIOError:    cfg.OnIOError,
		newUUID:      cfg.NewUUID,
		clock:        cfg.Clock,
		quorum:       cfg.Quorum,
		witnesses:    cfg.Witnesses,
		onNoQuorum:   cfg.OnNoQuorum,
		leased:       cfg.Leased,
		promoted:     cfg.State.Promoted,
		term:         cfg.State.Term,
		role:         Secondary,
		disk:         cfg.State.Disk,
		current:      cfg.State.Current,
		history:      cfg.State.History,
		epoch:        1,
		ops:          make(map[OpID]opOwner),
		bySeq:        make(map[uint64]*write),
	}
	blocks := cfg.Size / uint64(cfg.BlockSize)
	for i, pc := range cfg.Peers {
		p := &peer{cfg: pc, idx: i, conn: Connecting, bitmap: cfg.Bitmaps[pc.ID],
			bitmapUUID: cfg.State.BitmapUUID[pc.ID], afterCrash: cfg.RecoveredExtents}
		if p.bitmap == nil {
			p.bitmap = NewBitmap(blocks)
		}
		e.peers = append(e.peers, p)
		e.byID[pc.ID] = p
	}
	e.hadQuorum = e.quorate()
	return e, nil
}

// HasReady reports whether Ready would return anything.
func (e *Engine) HasReady() bool {
	r := &e.rd
	return e.persistDirty || e.persistBitmaps || len(r.LocalOps) > 0 || len(r.Messages) > 0 ||
		len(r.Completed) > 0 || len(r.Drop) > 0 || len(r.Events) > 0
}

// Ready returns everything the engine produced since the previous call and
// forgets it: the caller owns the returned slices. See Ready's fields for
// what the driver must do with each.
func (e *Engine) Ready() Ready {
	rd := e.rd
	e.rd = Ready{}
	e.inv.readyTaken()
	if e.persistDirty {
		rd.Persist = e.persistent()
		e.persistDirty = false
	}
	rd.PersistBitmaps, e.persistBitmaps = e.persistBitmaps, false
	return rd
}

func (e *Engine) persistent() *Persistent {
	ps := Persistent{Disk: e.disk, Primary: e.role == Primary, Current: e.current, History: e.history,
		BitmapUUID: make(map[NodeID]uint64), Promoted: e.promoted, Term: e.term}
	for _, p := range e.peers {
		if p.bitmapUUID != 0 {
			ps.BitmapUUID[p.cfg.ID] = p.bitmapUUID
		}
	}
	return &ps
}

// Status returns a snapshot for `georepl status`.
func (e *Engine) Status() Status {
	st := Status{QuorumHave: e.votes(), QuorumNeed: e.quorum, Quorate: e.quorate(),
		Role: e.role, Disk: e.disk, Current: e.current, History: e.history,
		Epoch: e.epoch, Pending: e.pending, Term: e.term, Fenced: e.fenced()}
	for _, p := range e.peers {
		st.Peers = append(st.Peers, PeerStatus{
			ID: p.cfg.ID, Name: p.cfg.Name, Protocol: p.cfg.Protocol,
			Conn: p.conn, Repl: p.repl, Role: p.role, Disk: p.disk,
			OutOfSync:   e.blocksToBytes(p.bitmap.Count()),
			ResyncTotal: p.resyncTotal, ResyncDone: p.resyncDone, ResyncSame: p.resyncSame, ResyncWhy: p.resyncWhy,
			ResyncPaused: p.resyncPaused, ResyncLimit: p.pace.limit,
			AppRate: p.pace.appRate, ResyncRate: p.pace.resyncRate, LinkCapacity: p.pace.capacity, AppActive: p.pace.appActive,
			Unacked: p.unacked, DataSent: p.dataSent, DataReceived: p.dataReceived,
			BitmapUUID: p.bitmapUUID,
			Verify:     e.verifyStatus(p),
			WritesSent: p.writesSent, WritesReceived: p.writesReceived,
			AheadEpisodes: p.aheadEpisodes, SplitBrains: p.splitBrains,
		})
		if e.role == Primary {
			ps := &st.Peers[len(st.Peers)-1]
			ps.RPOBytes = p.unacked + ps.OutOfSync
			ps.RPOAge = e.rpoAge(p)
		}
	}
	return st
}

// rpoAge is how long ago this Primary completed the oldest write p does
// not hold: one sent and not acknowledged as written, or one its bitmap
// marks. Marks held since before New count from New. It walks the
// tracked writes, so it costs Status, never a write.
func (e *Engine) rpoAge(p *peer) time.Duration {
	oldest, any := e.ticked, false
	if p.bitmap.Count() > 0 {
		oldest, any = p.marksSince, true
	}
	if t, ok := e.oldestUnacked(p); ok && (!any || t < oldest) {
		oldest, any = t, true
	}
	if !any {
		return 0
	}
	return e.ticked - oldest
}

// oldestUnacked is when the oldest completed write sent to p and not
// acknowledged by it as written was completed.
func (e *Engine) oldestUnacked(p *peer) (time.Duration, bool) {
	var oldest time.Duration
	found := false
	for _, w := range e.writes {
		pr := &w.prog[p.idx]
		if w.completed && pr.sent && pr.level < protocols.Written && (!found || w.doneAt < oldest) {
			oldest, found = w.doneAt, true
		}
	}
	return oldest, found
}

func (e *Engine) blocksToBytes(n uint64) uint64 { return min(n*uint64(e.blockSize), e.size) }

// Bitmap is the live bitmap for peer (nil for an unknown peer), for the
// driver to persist: copy Words' dirty pages out, then ClearDirty. Only in
// the engine's goroutine, between two engine calls.
func (e *Engine) Bitmap(peer NodeID) *Bitmap {
	if p := e.peer(peer); p != nil {
		return p.bitmap
	}
	return nil
}

// Hello returns the hello to send to peer: resource, node ids, size,
// generation ids (with our bitmap uuid towards that peer), role, disk and
// the split-brain inputs. The driver fills in Version, Features and Nonce.
// The engine resolves a split brain from the split-brain inputs of the
// last hello it returned for peer and those of the peer's hello (see
// Connected), so the driver sends the last one it got.
func (e *Engine) Hello(peer NodeID) wire.Hello {
	h := wire.Hello{Resource: e.name, From: uint8(e.self), To: uint8(peer), Size: e.size,
		Gen: wire.GenIDs{Current: e.current, History: e.history}, Role: uint8(e.role), Disk: uint8(e.disk),
		Term: e.actingTerm()}
	if p := e.peer(peer); p != nil {
		h.Gen.Bitmap = p.bitmapUUID
		h.SplitBrain = wire.SplitBrain{Changes: p.bitmap.Count(), Promoted: e.promoted,
			Policy: uint8(p.cfg.AfterSplitBrain), Victim: uint8(p.cfg.DiscardNode)}
		if p.discardMine {
			h.SplitBrain.Flags |= wire.SplitBrainDiscardMine
		}
		if e.role != Primary && e.otherPrimary(p) != nil {
			h.SplitBrain.Flags |= wire.HelloFollowsPrimary
		}
	}
	return h
}

// Promote makes this node Primary. It fails with ErrPeerPrimary if a
// connected peer is Primary, with ErrBusy while writes received from a
// Primary (lost, or demoted since) are still being applied (the driver
// retries once their LocalOps are done), and with ErrNotUpToDate unless
// the disk is UpToDate. force makes an Inconsistent, Outdated or Consistent disk
// UpToDate (the operator declares this copy the good one), but never while
// a resync into this node runs.
//
// With Config.Quorum, it fails with ErrNoQuorum unless this node reaches
// a quorum of nodes; force promotes it anyway, and it then completes
// writes as if it had quorum until quorum really returns (the operator
// took the risk of two Primaries) or it is demoted.
//
// A new generation begins (new current id, the old one moves to History)
// when force changed the disk state, and with the first write if a peer is
// not connected, so that its bitmap is tied to the data it last had.
// Connected peers learn the new ids and are resynchronised if they need it.
func (e *Engine) Promote(force bool) error {
	defer e.finish()
	if e.role == Primary {
		return nil
	}
	for _, p := range e.peers {
		if p.conn == Connected && p.role == Primary {
			return fmt.Errorf("%w: node %d (%s)", ErrPeerPrimary, p.cfg.ID, p.cfg.Name)
		}
		if p.conn == Connected && p.repl == SyncTarget {
			return fmt.Errorf("%w: resync from node %d (%s) running", ErrNotUpToDate, p.cfg.ID, p.cfg.Name)
		}
	}
	if n, from := e.receivedPending(); n > 0 {
		// Writes of a lost Primary (or of one demoted since it sent
		// them): the application and resync reads would see the disk
		// without them, and they would land over later writes.
		return fmt.Errorf("%w: %d writes received from node %d are still being applied", ErrBusy, n, from)
	}
	forced := false
	if e.disk != UpToDate {
		switch {
		case !force:
			return fmt.Errorf("%w: disk is %v", ErrNotUpToDate, e.disk)
		case e.disk == Inconsistent || e.disk == Outdated || e.disk == Consistent:
			forced = true
		default:
			return fmt.Errorf("%w: disk is %v, force cannot help", ErrNotUpToDate, e.disk)
		}
	}
	if !e.quorate() {
		if !force {
			return fmt.Errorf("%w: %d of %d nodes reachable, %d needed", ErrNoQuorum, e.votes(), e.nodes(), e.quorum)
		}
		e.quorumForced, e.hadQuorum = true, true
		e.event(Event{What: "quorum", Old: "lost", New: "forced",
			Detail: fmt.Sprintf("promoted by force with %d of %d nodes reachable, %d needed", e.votes(), e.nodes(), e.quorum)})
	}
	e.setRole(Primary)
	e.roleTerm = e.term
	for _, p := range e.peers {
		p.flushed = false // it may hold another Primary's writes in its cache
	}
	if e.clock != nil {
		e.promoted = e.clock()
	}
	if forced {
		e.setDisk(UpToDate, "forced")
	}
	if forced || e.current == 0 {
		e.newGeneration()
	}
	for _, p := range e.peers {
		if !p.replicating() {
			e.rotatePending = true
		}
	}
	// Peers must learn our new role and ids before any resync frame that
	// the re-evaluation below may send.
	e.announceState()
	for _, p := range e.peers {
		if p.adopting != e.current {
			e.reevaluate(p)
		}
	}
	return nil
}

// Demote makes this node Secondary. It fails with ErrBusy while
// application requests are outstanding. Connections to peers this node is
// resynchronising are dropped (ErrResyncAborted, not StandAlone): resync
// flows only from a Primary, and the next handshake decides again.
func (e *Engine) Demote() error {
	defer e.finish()
	if e.role != Primary {
		return nil
	}
	if held := len(e.parked) + len(e.suspended); e.pending > held {
		return fmt.Errorf("%w: %d application requests outstanding", ErrBusy, e.pending-held)
	}
	e.failHeldForQuorum("demoted without quorum")
	e.quorumForced = false
	if e.fenced() {
		// The record of who is Primary promoted another node in a newer
		// term: what this node wrote since it lost its peers completed
		// nothing (a fenced Primary completes no write, and one that
		// waited for a lease got none). It offers to be the victim of a
		// split brain with every peer it is not connected to, as the
		// operator would (DiscardMyData): the node of the newer term
		// keeps its data, and this one resyncs only what either
		// changed.
		for _, p := range e.peers {
			if p.conn != Connected {
				p.discardMine = true
			}
		}
	}
	e.setRole(Secondary)
	e.rotatePending = false
	e.unsynced.owed = nil // for the application that is gone (FlushFailed)
	for _, p := range e.peers {
		e.stopVerify(p, "this node was demoted")
		if p.rs != nil || p.repl == Ahead {
			e.dropPeer(p, fmt.Errorf("%w: node %d is no longer Primary", ErrResyncAborted, e.self), false)
		}
	}
	return nil
}

// LocalDone reports that the local operation id finished: data is what an
// OpRead read (the engine takes ownership), err is non-nil if the operation
// failed. An unknown id is ignored. The failure of an OpFlush, or of an
// operation with FUA, is a failed flush of the local disk and is handled
// as FlushFailed handles one: the driver reports that failure here and
// not again with FlushFailed.
func (e *Engine) LocalDone(id OpID, data []byte, err error) {
	defer e.finish()
	o, ok := e.ops[id]
	if !ok {
		return
	}
	delete(e.ops, id)
	switch {
	case o.write != nil:
		e.appWriteDone(o.write, err)
	case o.flush != nil:
		e.appFlushDone(o.flush, err)
	case o.rxWrite != nil:
		e.rxWriteDone(o.rxWrite, data, err)
	case o.rxFlush != nil:
		e.rxFlushDone(o.rxFlush, err)
	case o.syncRead != nil:
		e.syncReadDone(o.syncRead, data, err)
	case o.read != nil:
		e.appReadDone(o.read, data, err)
	case o.verify != nil:
		e.verifyReadDone(o.verify, data, err)
	}
	e.progress()
}

// progress restarts whatever waited for a local operation to finish: held
// application writes, resync reads, received writes.
func (e *Engine) progress() {
	e.releaseHeld()
	for _, p := range e.peers {
		if p.rs != nil {
			e.scheduleResync(p)
		}
		if p.verify != nil && p.verify.running {
			e.scheduleVerify(p)
		}
	}
	e.pumpAll()
}

// finish ends every public method: it tells the peers about a changed
// state (ordered after everything emitted before) and checks invariants.
func (e *Engine) finish() {
	e.updateQuorum()
	e.trimWrites()
	for _, p := range e.peers {
		e.maybeCatchUp(p)
	}
	e.announceState()
	// After the StateChange that tells the peer about our marks.
	for _, p := range e.peers {
		if p.resyncSoon {
			p.resyncSoon = false
			e.reevaluate(p)
		}
	}
	e.announceState()
	e.checkInvariants()
}

// announceState sends a StateChange to every connected peer if our role,
// disk or generation changed since the last one.
func (e *Engine) announceState() {
	if !e.announce {
		return
	}
	e.announce = false
	for _, p := range e.peers {
		if p.conn == Connected {
			e.sendState(p)
		}
	}
}

func (e *Engine) peer(id NodeID) *peer {
	if id >= MaxNodes {
		return nil
	}
	return e.byID[id]
}

func (e *Engine) newOp(op LocalOp, o opOwner) OpID {
	e.nextOp++
	op.ID = e.nextOp
	e.ops[op.ID] = o
	if e.rd.LocalOps == nil {
		e.rd.LocalOps = make([]LocalOp, 0, 4)
	}
	e.rd.LocalOps = append(e.rd.LocalOps, op)
	return op.ID
}

func (e *Engine) send(p *peer, f wire.Frame) {
	if e.rd.Messages == nil {
		// Room for a write to every peer plus the barrier before it.
		e.rd.Messages = make([]Message, 0, 2*len(e.peers)+2)
	}
	e.rd.Messages = append(e.rd.Messages, Message{To: p.cfg.ID, Frame: f})
}

// addInflight records x (owned by the caller, who passes it back to
// removeInflight) as in flight over [off, off+length).
func (e *Engine) addInflight(x *extent, off, length uint64, write bool) *extent {
	*x = extent{off: off, end: off + length, write: write}
	e.inflight = append(e.inflight, x)
	return x
}

func (e *Engine) removeInflight(x *extent) {
	for i, y := range e.inflight {
		if y == x {
			last := len(e.inflight) - 1
			e.inflight[i] = e.inflight[last]
			e.inflight[last] = nil
			e.inflight = e.inflight[:last]
			return
		}
	}
}

// overlapsInflight reports whether [off, end) overlaps a local operation in
// flight; writesOnly ignores resync reads.
func (e *Engine) overlapsInflight(off, end uint64, writesOnly bool) bool {
	for _, x := range e.inflight {
		if (x.write || !writesOnly) && x.overlaps(off, end) {
			return true
		}
	}
	return false
}

// markOutOfSync records that [off, off+length) may differ on p. A bitmap
// that starts now is tied to the generation p last confirmed having, and
// the peers learn it (their decisions depend on it). A Primary resyncs a
// peer it is Established with as soon as the call ends.
func (e *Engine) markOutOfSync(p *peer, off, length uint64) {
	if p.bitmap.Count() == 0 {
		p.marksSince = e.ticked
	}
	if p.bitmapUUID == 0 {
		p.bitmapUUID = p.gen.Current
		if p.bitmapUUID == 0 {
			p.bitmapUUID = e.current
		}
		e.persistDirty = true
		e.announce = true
	}
	p.bitmap.SetBytes(off, length, e.blockSize)
	if p.rs != nil {
		bs := uint64(e.blockSize)
		p.rs.remark(off/bs, (off+length+bs-1)/bs-off/bs)
	}
	if e.role == Primary && p.conn == Connected && p.repl == Established {
		p.resyncSoon = true
	}
}

// markUncovered is markOutOfSync for marks that no activity-log extent
// covers: whole devices (a peer declared bad, detached, or fully
// resynchronised), a lost Primary's writes that may not be on this disk.
// A crash that kept the bitmap id they are tied to but lost them would
// resync the peer from a bitmap without them, so the Ready asks the driver
// to write them before it persists anything (Ready.PersistBitmaps).
func (e *Engine) markUncovered(p *peer, off, length uint64) {
	e.markOutOfSync(p, off, length)
	e.persistBitmaps = true
}

// newGeneration starts a new current id. Peers that will not see the
// writes of the new generation keep a bitmap tied to the old one; peers in
// sync adopt the new ids when our StateChange reaches them (adoptGeneration)
// and tell us so with their own StateChange: until then p.gen keeps what
// they last confirmed, and p.adopting what they will have.
func (e *Engine) newGeneration() {
	e.rotatePending = false
	old := e.current
	e.history = [2]uint64{old, e.history[0]}
	e.current = e.newUUID()
	for _, p := range e.peers {
		switch {
		case e.role == Primary && (adopts(p, old, e.disk == Diskless) || (old != 0 && p.adopting == old && p.conn == Connected && p.repl == Established)):
			p.adopting = e.current
		case !p.replicating() && p.bitmapUUID == 0 && old != 0:
			p.bitmapUUID = old
		}
	}
	e.persistDirty = true
	e.announce = true
	e.event(Event{What: "gen", Old: fmt.Sprintf("%x", old), New: fmt.Sprintf("%x", e.current)})
}

func (e *Engine) event(ev Event) { e.rd.Events = append(e.rd.Events, ev) }

func (e *Engine) peerEvent(p *peer, what, old, new, detail string) {
	e.event(Event{Peer: p.cfg.ID, HasPeer: true, What: what, Old: old, New: new, Detail: detail})
}

func (e *Engine) setRole(r Role) {
	if e.role == r {
		return
	}
	e.event(Event{What: "role", Old: e.role.String(), New: r.String()})
	e.role = r
	e.persistDirty = true
	e.announce = true
}

func (e *Engine) setDisk(d DiskState, why string) {
	if e.disk == d {
		return
	}
	e.event(Event{What: "disk", Old: e.disk.String(), New: d.String(), Detail: why})
	e.disk = d
	e.persistDirty = true
	e.announce = true
}

func (e *Engine) setRepl(p *peer, r ReplState, why string) {
	if p.repl == r {
		return
	}
	e.peerEvent(p, "repl", p.repl.String(), r.String(), why)
	p.repl = r
}

func (e *Engine) setConn(p *peer, c ConnState, why string) {
	if p.conn == c {
		return
	}
	e.peerEvent(p, "conn", p.conn.String(), c.String(), why)
	p.conn = c
}

// setPeerRoleDisk records p's role and disk state as it announced them,
// with p.gen still the ids it had before. A peer that announces Diskless
// is marked out of sync in full, tied to those ids: its disk was detached
// after an I/O error, and should it return with metadata that still says
// UpToDate (the disk could not record the detach), it must be
// resynchronised fully, never taken for a copy of our data.
func (e *Engine) setPeerRoleDisk(p *peer, r Role, d DiskState) {
	if p.role != r {
		e.peerEvent(p, "peer-role", p.role.String(), r.String(), "")
		p.role = r
	}
	if p.disk != d {
		e.peerEvent(p, "peer-disk", p.disk.String(), d.String(), "")
		p.disk = d
		if d == Diskless && e.current != 0 && p.gen.Current != 0 {
			e.markUncovered(p, 0, e.size)
			p.detachedMarks = true
			e.peerEvent(p, "resync", "", "", "the peer's disk was detached: every block marked out of sync for it")
		}
	}
}

// Persistent returns the state to persist as it is now, the content of
// the next Ready.Persist if it changed. The driver's resize commits it
// together with the grown metadata, so that the bitmap ids of the marks
// Resize made are on disk with them.
func (e *Engine) Persistent() Persistent { return *e.persistent() }
