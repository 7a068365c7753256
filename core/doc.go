// Package core is georepl's replication engine: write ordering, epochs,
// per-peer acknowledgement levels, the role, disk, connection and
// replication state machines, generation ids and resync planning for one
// resource on one node.
//
// The engine does no I/O. It has no goroutines, no clock and no randomness
// (Config.NewUUID supplies generation ids). It takes events and returns a
// Ready: the durable state to write, local disk operations to perform,
// frames to send, application requests to complete, connections to drop.
// Every multi-node scenario is therefore a deterministic single-goroutine
// test (see testdata/).
//
// # Driving the engine
//
// The driver owns one Engine per resource. The engine is not safe for
// concurrent use: one goroutine at a time calls it, and carries out the
// Ready it returns. The simplest driver is a single goroutine that owns
// the engine and selects over every source of events; this loop shows
// which call each event is, and in which order a Ready is performed:
//
//	e, err := core.New(cfg)               // cfg.State and cfg.Bitmaps from metadata
//	for {
//		select {
//		case r := <-appRequests:    e.Submit(r)
//		case d := <-diskDone:       e.LocalDone(d.id, d.data, d.err)
//		case f := <-frames:         e.Receive(f.peer, f.frame)
//		case c := <-handshakes:     e.Connected(c.peer, c.ours, c.theirs) // ours: e.Hello(c.peer), sent
//		case p := <-lost:           e.Disconnected(p)
//		case cmd := <-admin:        cmd.reply(e.Promote(cmd.force)) // or Demote, PauseResync, Status
//		case now := <-ticker.C:     e.Tick(now.Sub(last)); last = now  // every few tens of ms
//		}
//		for e.HasReady() {
//			rd := e.Ready()
//			if rd.PersistBitmaps {
//				writeDirtyBitmapPages(e)       // durable, before anything below
//			}
//			if rd.Persist != nil {
//				writeSuperblock(rd.Persist)     // durable, before anything below
//			}
//			writeDirtyBitmapPages(e)           // may be lazy, see below
//			for _, d := range rd.Drop { closeConnection(d.Peer, d.StandAlone) }
//			for _, op := range rd.LocalOps { go perform(op) }  // reports to diskDone
//			for _, m := range rd.Messages { senders[m.To].enqueue(m.Frame) }
//			for _, c := range rd.Completed { complete(c.ID, c.Err) }
//			for _, ev := range rd.Events { log(ev) }
//		}
//	}
//
// georepl's driver (cmd/georepl/internal/node) does not run this loop: a
// goroutine switch per event would cost most of a replicated write's
// latency. The engine sits under a mutex, and whichever goroutine has the
// event (the reader of an NBD connection, a link's reader for a received
// frame, the goroutine that performed a local operation, the resource's
// loop for administrative calls, connections and ticks) takes the mutex,
// calls the engine and performs its Ready: the bitmaps and Persist first;
// then it closes the connections Drop names, queues the frames (under the
// mutex, so their order per channel is the engine's) and collects the
// local operations and completions. Once it released the mutex, it
// completes the requests, and writes frames and performs local operations
// itself where that costs no wake-up of another goroutine (the last
// operation of a Ready, then what that operation made ready; a small
// frame for a protocol B or C peer), handing the rest to writer
// goroutines and goroutines of their own. Only one goroutine calls the
// engine at a time, so the engine cannot tell this driver from the loop,
// and the obligations below hold for either:
//
//   - Persist is written durably before anything else in the same Ready is
//     performed: a peer must never learn a generation id this node could
//     forget in a crash. With PersistBitmaps, the bitmaps' dirty pages are
//     written durably before Persist: they hold marks no activity-log
//     extent covers (invalidate, a peer announcing Diskless, a full sync),
//     and a crash must not keep the bitmap id without them.
//   - LocalOps may run concurrently and finish in any order; the engine never
//     has two overlapping writes (or a write and an overlapping resync read)
//     in flight. Each is reported exactly once with LocalDone.
//   - Messages keep their order per peer and channel (wire.ChannelOf).
//     Data, barriers, resync data and state changes share the data channel,
//     whose order carries the write ordering; acknowledgements travel on the
//     control channel so bulk data never delays them. Under protocol A a
//     write completes once queued, so the sender's queue must hold at least
//     the peer's MaxBuffer bytes without blocking the goroutine that
//     performs the Ready.
//   - Frames are delivered with Receive only between Connected and
//     Disconnected of the same connection; the handshake (Intro, Auth,
//     Hello) and Ping are the driver's business.
//   - The activity log is the driver's, in both roles: a write's extent
//     is active (durably) before Submit on a Primary, before performing a
//     received write's LocalOp on a Secondary, and is retired only once
//     Engine.Settled reports its range settled, a local flush begun after
//     that completed, and the bitmaps' dirty pages (Engine.Bitmap,
//     DirtyPages) are written; otherwise bitmap pages may be written back
//     lazily. After an unclean shutdown the
//     driver marks the active extents for every peer before calling New,
//     setting Persistent.BitmapUUID[peer] to its Current where it is 0:
//     that covers every block where this node may differ from another.
//   - Every failed flush of the local disk reaches the engine, through
//     LocalDone or FlushFailed (see Local I/O errors).
//   - After a Drop the engine has forgotten the connection: a later
//     Disconnected for it is ignored, and a new connection starts with
//     Connected.
//
// # The primary's write path
//
// Submit assigns a write the next sequence number and the open epoch,
// emits the local write and a Data frame for every replicating peer
// (Established, or SyncSource towards it), and marks the range in the
// bitmap of every other peer. A write overlapping an earlier one that is
// not yet done locally waits, so every node applies overlapping writes in
// the same order. The write completes when protocols.MayComplete says so:
// protocol A once the peer's unacknowledged bytes (up to this write) fit in
// its MaxBuffer, B on RecvAck, C on WriteAck. A peer that disconnects stops
// holding writes back; what it did not acknowledge lands in its bitmap.
//
// A write that would take a protocol A peer's unacknowledged bytes beyond
// its MaxBuffer meets the peer's congestion policy (PeerConfig.OnCongestion:
// block, pull-ahead or disconnect); docs/architecture.md, "Congestion
// (protocol A)", describes what each does.
//
// An epoch closes when one of its writes completes (a later write may
// depend on it) or after EpochMaxWrites writes: the next write first sends
// Barrier(epoch). A secondary starts no write of epoch k+1 before every
// write of epoch k is done (and flushed, with DiskFlushes or a flush
// barrier), so it is always a crash-consistent earlier image of the
// primary, also under protocol A. A flush closes the epoch with a flush
// barrier and completes when the local flush is done and every protocol C
// peer acknowledged the barrier. An application flush skips the parts
// with nothing to make durable: the local flush when every local write
// since the last successful one was FUA, and the wait for a C peer that
// acknowledged a flush barrier since the last write it received without
// FUA (Engine.startFlush); its barrier is sent all the same. A secondary
// skips a barrier's flush when every write it did since its last
// successful flush was FUA (pump): the next epoch waits for that barrier.
//
// The primary tracks a write towards a peer until the peer wrote it and
// acknowledged the barrier closing its epoch. Losing the connection earlier
// marks the write out of sync even if it was acknowledged: with a volatile
// disk cache, only the barrier's flush makes it durable there.
//
// Secondaries mark for each other. Each Barrier carries Seq, the write up
// to which everything is retired on every peer it was sent to, and a
// holder set (Frame.Offset, bit i for node id i): the Primary and every
// peer Established with it and holding no marks, that is every node that
// has all those writes. A secondary keeps the data writes it received
// until a barrier confirms them, then marks them for every node outside
// the holder set: a peer that lost its connection with a write in flight,
// or was away, no longer holds the confirmation back, but every node that
// forgets the write as confirmed knows that peer lacks it. When the
// Primary is lost, or announces that it is no longer Primary, a secondary
// marks what was not confirmed yet for every other peer. Marks that begin
// this way are tied to the generation the secondary was in when the first
// of them arrived. So a resync between secondaries after a switchover or
// a failover covers what one of them missed, although no node in the
// resync is the Primary that marked it. A barrier that names a secondary
// and a peer as holders clears the secondary's marks for the peer, but
// not before its Seq reaches the last write the secondary marked when the
// same Primary was demoted or lost (peer.unconfirmedMarked): promoted
// again, it may still have those writes on their way to that peer.
//
// # Generation ids
//
// Every node keeps a current id, two history ids and, per peer, a bitmap
// id: the generation that peer last confirmed having when this node began
// marking blocks for it (0: no marks). A Primary starts a new current id
// when it loses a replicating peer and when it is promoted while a peer is
// not connected. Connected peers in sync (Established, UpToDate, no marks
// on either side) adopt it from the StateChange that announces it, which
// travels on the data channel ordered with the writes; the Primary
// believes a peer's ids only once that peer confirmed them with a
// StateChange of its own. At Connected each side compares its ids (S)
// with the hello's (P) and takes the first row that matches:
//
//	row  condition                               S becomes                  P becomes
//	1    S.Current == 0 && P.Current == 0        Established, no sync       Established
//	2    S.Current == 0 (P.Current != 0)         SyncTarget, full sync      SyncSource
//	     P.Current == 0 (S.Current != 0)         SyncSource, full sync      SyncTarget
//	     ... but S.Bitmap == P.Bitmap != 0:      the interrupted initial full sync resumes
//	                                             from the source's bitmap (the side without
//	                                             a generation keeps that id only while no
//	                                             other node resyncs it, and forgets it when
//	                                             its disk was detached)
//	3    S.Current == P.Current                  Established; if a bitmap id is set on
//	                                             either side, the Primary is SyncSource
//	                                             with its bitmap
//	4    S.Bitmap == P.Current != 0, or          SyncSource, its bitmap     SyncTarget
//	     marksCover(S, P) (below)
//	5    P.Bitmap == S.Current != 0, or          SyncTarget                 SyncSource
//	     marksCover(P, S)
//	6    S.Bitmap == P.Bitmap != 0               split brain: the policy picks a victim (below),
//	     (checked before marksCover)             which is SyncTarget of the survivor; if it
//	                                             cannot: drop, StandAlone (ErrSplitBrain)
//	7    P.Current in S.History                  SyncSource, full sync      SyncTarget
//	     S.Current in P.History                  SyncTarget                 SyncSource, full
//	8    otherwise                               unrelated data: drop, StandAlone
//	                                             (ErrUnrelatedData)
//
// marksCover(A, B) holds when A's bitmap plus B's own marks cover every
// difference although B's current id is not A's bitmap id: B adopted
// generations of A's that A had not heard of (A.Bitmap in B.History, B has
// no marks, A moved on since its marks began: A is the source); or B's
// marks began at B's current id (B lost its Primary, restarted after a
// crash and marked its activity log, or became a sync target) and either
// A's marks cover A's changes since their common ancestor (A.Bitmap in
// B.History: either direction works, the Primary is the source as in
// row 3) or A moved on from B's current id while sending B everything
// (B.Current in A.History, A has no marks: A is the source).
//
// # Split brain
//
// Row 6 means both nodes changed the data since the generation both
// bitmaps are tied to: each bitmap covers its own node's changes since
// then. PeerConfig.AfterSplitBrain resolves it without merging anything:
// it picks a victim, which discards its changes and becomes a sync target
// of the survivor; as in any bitmap resync, the victim sends its marks
// and the survivor resyncs the union of both bitmaps, never the whole
// device, and at ResyncDone the victim takes the survivor's generation
// ids, so a later handshake is not a split brain again. The verdict is a
// pure function of both ends' hellos (wire.SplitBrain: blocks marked for
// the other end, last promotion time, policy), so both ends reach it
// independently (see SplitBrainPolicy):
//
//   - a DiscardMyData offer from exactly one end picks that end (offers
//     from both decide nothing);
//   - otherwise both ends must have the same policy, which picks the node
//     with zero changes, the one promoted last, the one with fewer
//     changes, or the named node; a tie, an unknown promotion time or
//     different policies decide nothing;
//   - the roles below still apply: a Primary is never the victim (the
//     connection drops, naming it: demote it and connect again), and
//     between two Secondaries the verdict waits for the survivor's
//     promotion.
//
// Each verdict, and each split brain left unresolved, is an Event
// ("split-brain", New "resolved" or "standalone") for the driver's
// handler.
//
// Roles then decide whether the resync runs:
//
//   - a Secondary replicates one Primary: it drops (not StandAlone,
//     ErrPeerPrimary) a peer that is or becomes Primary while it is
//     connected to another Primary, and tells a Primary in its hello
//     (wire.HelloFollowsPrimary), which then drops it too; so no node
//     holds two Primaries' writes, and no Primary counts for its quorum
//     a node that another Primary counts;
//   - two Primaries never connect (ErrPeerPrimary, StandAlone; seen in a
//     StateChange, which may have crossed a switchover, the drop is not
//     StandAlone and a fresh handshake decides again);
//   - resync always flows from the Primary: between two Secondaries the
//     connection stays Established, split brain and unrelated data
//     included, and is judged again when one of them is promoted (Promote
//     re-evaluates every connected peer that does not simply adopt);
//   - a Primary is never a sync target: that would overwrite the data in
//     use, so the connection drops as split brain (StandAlone), unless
//     the newer side offered DiscardMyData: it then becomes the Primary's
//     target (full unless its marks are tied to the Primary's current id);
//   - a would-be source that is not UpToDate stays Established without
//     resync (an Event says why);
//   - a target that holds marks of its own for the source sends them as
//     OutOfSync frames before its StateChange as SyncTarget; the source
//     merges them into its bitmap and does not finish before that
//     StateChange arrived;
//   - both ends record why a resync moves what it moves (PeerStatus's
//     ResyncWhy): full and why, an invalidation, the catch-up of a peer
//     left Ahead, the marks each side held, and the activity-log extents
//     of an unclean shutdown that the driver reported in
//     Config.RecoveredExtents.
//
// Decisions are repeated, for peers not in a resync, whenever a StateChange
// changes a role, a disk state or a bitmap id, after Promote, and when a
// Primary marks blocks for a peer it is Established with (a negative
// WriteAck, a local write error): that peer is resynchronised at once.
//
// History holds two ids: a peer that missed more than two generations of
// ours (repeated promotions while it was away) is refused as unrelated
// data, never overwritten; the operator discards its data (new metadata,
// full resync).
//
// # Resync
//
// The sync source reads runs of marked blocks (at most ResyncChunk bytes,
// at most ResyncWindow reads plus unacknowledged frames per peer), never a
// range with a local write in flight, and holds new application writes
// that overlap a read in flight, so resync data never carries content
// older than a write already sent. Resync frames take their sequence
// numbers from the same counter as data, so the target applies a resync
// block and an overlapping write in the order the source produced them.
// Acknowledged blocks are cleared (on a disk with a volatile cache the
// target writes resync blocks with FUA, since an acknowledged block is
// forgotten); when the bitmap is empty, nothing is in flight and the
// target's own marks have all arrived (its StateChange as SyncTarget), the
// source sends ResyncDone, forgets the bitmap id and is Established. The
// target is Inconsistent (persisted) from the start of the resync until
// ResyncDone, when it adopts the source's generation ids and becomes
// UpToDate. Application writes keep flowing to a sync target as Data.
//
// With PeerConfig.Csums set, the source hashes a run (OpChecksum, in the
// driver) instead of reading it and sends the digests as ResyncCsum, under
// the same rules as a read (never over a local write in flight, holding
// overlapping new writes) and with a sequence number from the same
// counter. The target queues it like a received write, so it hashes the
// range after every write it received before and before any it receives
// after, and answers which blocks differ (ResyncCsumReply). The source
// clears the identical blocks (counted in PeerStatus.ResyncSame) unless
// they were marked again meanwhile, and reads and sends the others as
// resync data. Both sides compared the same point of the write stream, so
// a block skipped is identical once the writes in flight are applied.
//
// Invalidate (this node's data is bad) asks the Primary with an
// InvalidateRequest to do what InvalidateRemote (on the Primary) does:
// mark every block for the peer and resync it. Both are full resyncs that csums makes cheap.
//
// Resync bandwidth is the driver's to pace through Tick: per peer, data
// reads spend a token bucket that fills at the resync limit, which is
// PeerConfig.ResyncRate (0: none) and, while the application sends data to
// the peer, at most (1 - ResyncMinAppShare) of the link's capacity: the
// highest delivery rate (application plus resync bytes acknowledged per
// second, measured over 500 ms) seen on the connection. Checksum reads
// only send digests and are not paced. PauseResync holds a peer's resync
// (no new reads) until resumed; the acknowledged blocks stay cleared, so a
// paused, interrupted or reconnected resync continues with what is left.
//
// Reconfigure replaces a peer's PeerConfig while the engine runs (the
// administrator's adjust): each field counts from the next decision that
// reads it, and a larger MaxBuffer releases the writes it held at once.
// The protocol changes only while the peer is not connected: the writes in
// flight to it were sent, and would be completed, under the old one.
//
// A driver may keep the target recoverable during the resync (consistent
// resync, docs/architecture.md): the engine persists Disk Inconsistent in
// the Ready that makes this node a sync target, before any resync write,
// and persists something else only when the resync is done (or a forced
// Promote); a target's Current and History never change in between. A
// driver that saved the old content of every block before overwriting it
// in that interval may restore it and pass New the state from before the
// resync: Disk Outdated, the same Current and History, and the restored
// blocks marked for every peer (BitmapUUID set to Current where it was
// 0), as after an activity-log recovery. The generation id rules then
// resume the resync from the source, or report split brain with a node
// promoted meanwhile.
//
// # Losing the Primary
//
// A secondary that loses the connection to its Primary still applies
// every write it received, by the same rules (epoch by epoch, overlapping
// writes in arrival order, a flush between epochs where the barrier asked
// for one), but acknowledges nothing more: a protocol B peer acknowledged
// each write on arrival, and the Primary may have completed it on that
// alone. Across connections, what arrived first is applied first: writes
// received later, from any connection, wait until those are on the disk
// (so do a new Primary's writes for those of the old one, demoted in a
// switchover, that a protocol A or B peer received but did not apply
// yet), and Promote fails with ErrBusy until then (the driver retries once
// their LocalOps are done). Checksum and read requests not yet started are
// dropped; a detached disk applies nothing more.
//
// When a Primary crashes, its last writes may have reached one secondary
// and not another. Each barrier carries in Seq the highest sequence number
// up to which every write is on every peer it was sent to (behind an
// acknowledged barrier); a secondary remembers the ranges of later data
// writes, and when it loses its Primary it marks them for every other
// peer. Whichever secondary is promoted then resynchronises the others
// from these marks (merged from both sides), so the survivors converge on
// the new Primary's data. A node that crashed (the old Primary or a
// secondary) marks its activity log when it restarts (see Settled) and
// becomes a sync target like them. A node that becomes a sync target marks
// every block for its other peers until the resync is done, so that a
// resync from another node after an interruption is complete; and after
// it, for every peer its source does not name in ResyncDone's holder set
// (as in a barrier: the nodes in sync with the source), since the resync
// may have changed its data where that peer's differs, although its
// generation ids, now the source's, may match the peer's. While the
// source has writes not confirmed everywhere (ResyncDone's Seq), it keeps
// the blocks the resync rewrote marked for the holders too: the resync may
// have brought it writes that are still on their way to them as data. A
// barrier that names both (and confirms that far) clears those marks.
//
// # Local I/O errors
//
// Config.OnIOError decides what a failed local disk operation does.
// Under PassOnIOError the request fails with ErrIO and the disk stays
// attached: a failed write on a Primary is marked for every peer (they
// may hold the new data where this disk holds anything), so the next
// resync makes them equal to what this disk returns; a Secondary's failed
// write is acknowledged negatively and marked by its Primary.
//
// A failed flush under PassOnIOError (an OpFlush, or an operation with FUA,
// whose failure may be its flush's) is taken at its word: every write not
// yet durable may be lost, and the next flush succeeds all the same (Linux
// reports a writeback error to one fsync only and may drop the pages). So
// the node marks for every peer what it wrote since the last flush known
// to have succeeded, in grains of at most 1/65536 of the device, and what
// it has in flight (marks of a Secondary begin at its own generation, as
// after a crash). A Primary fails, with ErrIO, the writes and flushes in
// flight or done here and not yet completed (a flush issued before the
// failure may succeed only because the failed one consumed the error),
// and, if no application flush was among them, the next application
// flush: writes the application completed before may be lost, and it must
// learn it as from a failed flush of its own. A Secondary drops its
// Primary, so that no later barrier is acknowledged for writes the
// failure may have lost.
//
// The driver flushes the disk for itself too (its activity log, metadata
// on the same disk), and any of its flushes may take the error of a
// failure that concerns the engine's writes. So it reports every failed
// flush of the disk: through LocalDone when a LocalOp failed, with
// FlushFailed otherwise; and it takes no flush for a success, whether a
// LocalOp's or its own, while a failure that may have taken its error is
// not reported yet. Its own flushes that go through the engine (to close
// the open epoch) are Request.Internal: a failure owed to the
// application is not spent on them.
//
// Under DetachOnIOError (the default) the disk becomes Diskless (see
// Detach) and is never read again. A Diskless Primary goes on serving the
// application through its peers in sync with it (Established, UpToDate,
// same generation, no marks either way):
//
//   - a write, and the write whose local failure detached the disk,
//     completes once such a peer wrote it (WriteAck) and every peer
//     reached its protocol's level, so under protocols A and B too the
//     detached Primary waits for a peer's disk instead of its own; a flush
//     once such a peer acknowledged its barrier;
//   - a read (ReqRead) is sent as ReadRequest on the data channel to the
//     first such peer, which queues it behind every write received before
//     (like a write of the open epoch: after the earlier epochs, after the
//     overlapping writes of its own) and answers with ReadReply. So a read
//     sees every write completed before it was submitted, under protocol
//     A as well. If the peer is lost or answers negatively, the next peer
//     in sync is asked;
//   - with no peer in sync, requests fail with ErrIO;
//   - local operations still in flight at the detach no longer count
//     (a failing disk may never finish them): their writes and flushes
//     need a peer in sync like later ones, their reads go to one.
//
// A detached disk is resynchronised fully when it returns, whatever its
// metadata says: metadata that recorded the detach says Diskless, read
// back as Inconsistent with no generation (row 2); metadata that could
// not record it still says UpToDate in the old generation, and so every
// node that hears a peer announce Diskless marks every block for it, tied
// to the ids it had (its StateChange or hello). A detaching Primary also
// starts a new generation, which its peers adopt (their marks for its
// detached disk do not stop them, and do not stop it from counting them
// in sync): promoting its old disk later is refused as split brain rather
// than overwriting theirs. Its bitmaps and activity log were on that disk:
// the driver keeps the bitmaps in memory only. A Secondary that connects
// to a Diskless Primary which moved to another generation or marked blocks
// for it while it was away becomes Inconsistent (behindDisklessPrimary):
// nothing is resynchronised from a node without a disk, and the writes it
// then receives land on top of what it lacks; it marks every block for
// its other peers, so that the resync from a Primary with a disk is full.
// A Diskless Secondary drops its Primary (which marks every write not
// acknowledged behind a barrier, as for any lost connection); its hello
// then says Diskless, and the Primary sends it nothing. A sync source
// whose target announces Diskless drops it too, and a Diskless node drops
// a peer whose resync reaches it (sent before that peer learnt of the
// detach): the next handshake finds it Diskless.
//
// A driver whose Persist write fails may Detach instead of stopping, and
// perform the rest of that Ready: what the peers learn from it comes
// before the StateChange that says Diskless, after which they mark every
// block for this node, so its stale metadata cannot pass for theirs.
//
// # Out of space
//
// A local write, write-zeroes or trim that found no room on the backing
// store (a full file system or quota, a thin store out of space) is not a
// failing disk: the driver reports it wrapped in ErrNoSpace, and whatever
// Config.OnIOError says the disk stays attached and is used as before
// (overwrites of allocated blocks succeed). Such an operation changed
// nothing else and did not reach its flush (the driver says ErrNoSpace
// only for a failure of the operation itself), so no flush failed: the
// marks of a failed flush (above) are not made.
//
//   - On a Primary the write fails with an error that wraps the driver's
//     (the client is told ENOSPC). Its data frames left with the local
//     write, so the peers may hold it: the range is marked for every peer,
//     and the peers it is Established with are resynchronised from this disk at once,
//     as after any failed write under PassOnIOError. No node is then
//     UpToDate and in sync with different data there.
//   - A Secondary that had no room for a data write of its Primary
//     acknowledges it negatively (never as written) and becomes
//     Inconsistent: it lacks a write that the other nodes have and that the
//     Primary may complete (its own disk has it), so it must not be
//     promoted as UpToDate. The Primary marks the range for it and starts
//     the resync that makes it UpToDate again; while the store is still
//     full, a resync write fails too, the Primary drops the connection
//     (ErrIO), and the next connection retries the resync.
//
// A flush that fails, for lack of space or not (a thin device whose
// writeback found no space), may have lost written data: it is a failed
// flush, and OnIOError applies.
//
// # Quorum
//
// With Config.Quorum = q, a node has quorum while it reaches q nodes: itself
// and its connected peers, whatever their disk states (a cut-off part of
// the resource cannot count a node it does not reach, so two parts never
// both have a majority). Without quorum Promote fails with ErrNoQuorum
// unless forced, and a Primary stops completing writes and flushes (reads
// go on): with SuspendIO it parks the completions of requests that finish
// and does not start new ones, until quorum returns (then they complete
// and start, in order) or it is demoted (then they fail with ErrNoQuorum;
// Demote waits only for requests that are not held for quorum); with
// IOErrorOnNoQuorum they fail with ErrNoQuorum. The majority side meanwhile
// may promote one of its nodes, and nothing the isolated Primary held was
// acknowledged to the application; it cannot regain quorum through a node
// that follows the new Primary (see the roles above). A Primary promoted
// while a node it reaches still follows the old one has quorum until that
// node drops it: under protocol A a write may complete in that window. Every change is an Event ("quorum",
// have/lost, or forced by a forced promotion, which counts as quorum until
// it really returns or the node is demoted).
//
// # Failover terms
//
// With automatic failover, the driver keeps a consensus log of who is
// Primary, and each promotion there has a term (1, 2, ...). The engine
// learns terms from ObserveTerm (committed in the log), and from every
// hello and StateChange (wire.Hello.Term, wire.State.Term): a Primary
// sends the term it was promoted in, any other node the highest it has
// seen. It keeps the highest in Persistent.Term, persisted before any peer
// can learn that this node saw it. Promote takes the highest term seen as
// this node's; the driver calls ObserveTerm with the log's term first.
// Then:
//
//   - a node drops (ErrStaleTerm, not StandAlone) a connected Primary whose
//     term is older than one it has seen, at the handshake and as soon as
//     it learns the newer term: a write of an old Primary in flight to it
//     is never applied or acknowledged, and a Secondary that replicated the
//     old Primary accepts the new one;
//   - a Primary that sees a newer term is fenced: it drops every
//     connection and refuses new ones, and completes no write or flush, as
//     without quorum (OnNoQuorum: held until demoted, then failed with
//     ErrNoQuorum, or failed at once), whether Config.Quorum is set or not.
//
// Under automatic failover (Config.Leased) a Primary also needs a lease
// from the log (Lease: until when, and for which current generation): it
// completes writes and flushes only before the lease ends and in the
// generation the lease names, and holds or fails them as without quorum
// otherwise. A Primary that loses a replicating peer starts a new
// generation before completing the writes that peer missed, so those wait
// until the log holds it: the lost peer, in the older generation, is then
// not promoted automatically while the Primary acknowledged writes it
// lacks.
//
// Without automatic failover every term is 0 and nothing of this applies.
// An operator's Promote takes the highest term seen, so two Primaries of
// one term are possible by hand; the rules above and below still keep them
// apart.
//
// # Resize
//
// Resize grows the device while no peer is connected; the peers agree on
// the size at the handshake (Connected drops a hello of another size with
// ErrDeviceMismatch, and georepl's driver refuses such a connection before
// it reaches the engine, so that it is retried once the other node grew
// too). Every bitmap grows; the new space is marked out of sync towards
// every peer as marks no activity-log extent covers (Ready.PersistBitmaps),
// except what the caller declares identical on every node (cleanFrom, the
// operator's --assume-clean). Persistent gives the state the driver
// commits together with the grown metadata.
//
// # Invariants
//
// Built with the invariants tag (the Makefile's test target sets it), the
// engine checks at the end of every call that no two overlapping local
// operations involving a write are in flight, that data frames leave in
// increasing sequence and epoch order, that a receiver has writes of only
// its oldest epoch on the disk, and that every request is accounted for.
package core
