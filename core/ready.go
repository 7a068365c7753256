package core

import (
	"fmt"
	"time"

	"github.com/georepl/georepl/core/wire"
	"github.com/georepl/georepl/protocols"
)

// RequestKind is the kind of an application request.
type RequestKind uint8

const (
	// ReqWrite writes Request.Data at Offset.
	ReqWrite RequestKind = iota + 1
	// ReqZeroes writes Length zero bytes at Offset, without a payload.
	ReqZeroes
	// ReqTrim discards [Offset, Offset+Length): the range reads back as
	// zeroes or as its old content (the backing store decides), the same
	// decision on every node that supports punching holes.
	ReqTrim
	// ReqFlush makes every write that completed before it was submitted
	// durable here and on every protocol C peer. Offset and Length are
	// ignored.
	ReqFlush
	// ReqRead reads [Offset, Offset+Length) into Request.Data. With the
	// local disk attached it is a local OpRead; on a Diskless Primary a
	// peer in sync serves it (it sees every write completed before it was
	// submitted). A driver may serve reads from an attached disk itself,
	// without the engine, and submit ReqRead only once Detach'ed.
	ReqRead
)

// String returns the kind's name ("write").
func (k RequestKind) String() string {
	return enumName(uint8(k), "RequestKind", "invalid", "write", "zeroes", "trim", "flush", "read")
}

// Request is an application request submitted to the primary.
type Request struct {
	// ID is chosen by the driver, unique among outstanding requests; the
	// Completion carries it back.
	ID   RequestID
	Kind RequestKind // ReqWrite, ReqZeroes, ReqTrim, ReqFlush or ReqRead
	// Offset and Length are the byte range on the device (ignored for
	// ReqFlush).
	Offset uint64
	Length uint64
	// Data is the payload of a ReqWrite, exactly Length bytes. The engine
	// takes ownership: the same slice goes into the local write and into the
	// data frames for every peer, and may still be in a send queue after the
	// request completed. The driver must not modify or reuse it.
	//
	// For a ReqRead, Data is the buffer to fill, exactly Length bytes: the
	// engine copies the data into it before the Completion and never
	// touches it afterwards.
	Data []byte
	// FUA (force unit access) makes a write durable before it completes:
	// locally and, under protocol C, on the peer before its WriteAck.
	FUA bool
	// Internal marks a ReqFlush the driver takes for itself (to close the
	// open epoch, say), not one an application asked for: a failure of
	// the local disk's flush that no application request was told of
	// goes to the next flush that is not Internal (see FlushFailed).
	Internal bool
}

// OpKind is the kind of a local disk operation.
type OpKind uint8

const (
	// OpWrite writes LocalOp.Data at Offset.
	OpWrite OpKind = iota + 1
	// OpZeroes writes Length zero bytes at Offset.
	OpZeroes
	// OpTrim discards Length bytes at Offset.
	OpTrim
	// OpFlush makes every write completed before it durable (fdatasync).
	OpFlush
	// OpRead reads Length bytes at Offset; LocalDone carries the data.
	OpRead
	// OpChecksum reads Length bytes at Offset and hashes every BlockSize
	// bytes of it with Csum; LocalDone carries the digests
	// (wire.Csum.AppendDigests), not the data. With FUA the disk is
	// flushed first, so that the digests describe durable data. It is how
	// checksum resync compares blocks without sending them; hashing runs
	// in the driver, off the engine's goroutine.
	OpChecksum
)

// String returns the kind's name ("read").
func (k OpKind) String() string {
	return enumName(uint8(k), "OpKind", "invalid", "write", "zeroes", "trim", "flush", "read", "checksum")
}

// LocalOp is an operation on the local backing disk.
type LocalOp struct {
	// ID names the operation in LocalDone.
	ID   OpID
	Kind OpKind // OpWrite, OpZeroes, OpTrim, OpFlush, OpRead or OpChecksum
	// Offset and Length are the byte range on the backing disk (zero for
	// OpFlush).
	Offset uint64
	Length uint64
	// Data is the payload of an OpWrite; read-only for the driver (it is
	// shared with frames being sent).
	Data []byte
	// FUA: the write must be durable before LocalDone is reported; for
	// OpChecksum, flush the disk before reading.
	FUA bool
	// Csum and BlockSize are an OpChecksum's algorithm and the bytes each
	// digest covers (the engine's block size; Length is a multiple).
	Csum      wire.Csum
	BlockSize uint32
	// Seq and Epoch identify the replicated write or resync block an
	// OpWrite/OpZeroes/OpTrim applies (Epoch 0 for resync data), for
	// tracing; the driver needs neither.
	Seq, Epoch uint64
}

// Message is a frame to send to a peer.
type Message struct {
	To    NodeID     // the peer
	Frame wire.Frame // its payload is shared with other messages and local ops: read-only
}

// Completion reports the outcome of an application request.
type Completion struct {
	ID RequestID // the request's ID from Submit
	// Err is nil on success; otherwise it wraps one of ErrNotPrimary,
	// ErrOutOfRange, ErrInvalidRequest or ErrIO.
	Err error
}

// Drop asks the driver to close the connection to a peer. The engine has
// already forgotten the connection (as after Disconnected); the driver must
// not deliver further frames from it and may discard queued messages to it.
type Drop struct {
	Peer NodeID // the peer whose connection to close
	// Reason wraps ErrProtocol, ErrPeerPrimary, ErrSplitBrain,
	// ErrUnrelatedData, ErrDeviceMismatch, ErrResyncAborted or ErrIO.
	Reason error
	// StandAlone: do not reconnect automatically; an operator must resolve
	// the cause (split brain, unrelated data, two primaries, another device).
	StandAlone bool
}

// ResyncWhy is where a resync's blocks come from. The engine knows the
// marks, not always their cause: the driver, which marked the activity log
// of an unclean shutdown at attach, can tell that part apart.
type ResyncWhy struct {
	// Source is set on the sync source, clear on the target.
	Source bool
	// Full is why every block is resynchronised ("" for a bitmap resync):
	// the peer has no data generation yet (a new node), or its generation
	// is older than any bitmap covers.
	Full string
	// MarkedHere is the bytes this node had marked for the peer when the
	// resync began: writes the peer missed while disconnected or behind,
	// this node's activity log after an unclean shutdown, and on a target
	// the last writes of a lost Primary that not every node confirmed.
	// A target sends these to the source.
	MarkedHere uint64
	// MarkedByPeer is the bytes the target's marks added to the source's
	// (sync source only): the same kinds of marks, made on the target.
	MarkedByPeer uint64
	// AfterCrash is the number of extents of this node's activity log
	// of an unclean shutdown (Config.RecoveredExtents) among MarkedHere;
	// 0 if none.
	AfterCrash int
	// Ahead is set on the source when the resync catches up a peer that
	// congestion left behind (pull-ahead): MarkedHere is what it missed.
	Ahead bool
	// Invalidated is "here" when this node's data was declared bad
	// (Engine.Invalidate) and "peer" when this node declared the peer's
	// (Engine.InvalidateRemote): every block is marked.
	Invalidated string
	// Detached is set when every block was marked because the target
	// announced that its disk was detached after an I/O error (Diskless):
	// the disk it comes back with is resynchronised in full.
	Detached bool
}

// Event is a state change worth logging and showing in `georepl events`.
type Event struct {
	// Peer is the peer concerned when HasPeer is set.
	Peer    NodeID
	HasPeer bool // the event concerns Peer, not this node alone
	// What is "role", "disk", "gen" (this node's role, disk state, current
	// generation id), "conn", "repl", "peer-role", "peer-disk" (towards or
	// of Peer) or "resync" (started, interrupted, finished, blocks marked
	// out of sync) or "verify" (started, finished, stopped), or "read"
	// (a peer could not serve a read of a Diskless Primary), or "resize"
	// (Old and New are the sizes in bytes).
	What     string
	Old, New string // the state before and after, when the event is a transition
	Detail   string // why, or what happened, for humans
}

// String renders the event on one line for logs.
func (ev Event) String() string {
	s := ev.What
	if ev.HasPeer {
		s = fmt.Sprintf("%s peer=%d", s, ev.Peer)
	}
	if ev.Old != "" || ev.New != "" {
		s += " " + ev.Old + "->" + ev.New
	}
	if ev.Detail != "" {
		s += ": " + ev.Detail
	}
	return s
}

// Ready is a batch of work produced by the engine since the previous call
// to Engine.Ready. The driver performs it in this order:
//
//  1. PersistBitmaps, then Persist, durably, before anything else of this
//     Ready becomes visible to a peer or to the application.
//  2. Drop, LocalOps, Messages: in any order, concurrently.
//  3. Completed: only after Persist (a completion never depends on a
//     message or local op of the same Ready).
//
// Events may be logged whenever.
type Ready struct {
	// PersistBitmaps asks for every bitmap's dirty pages (Engine.Bitmap)
	// to be written durably before Persist and before anything else in
	// this Ready: they hold marks that no activity-log extent covers (a
	// whole device marked for a peer, a lost Primary's writes), which a
	// crash would otherwise lose while keeping the bitmap id Persist ties
	// them to. Otherwise dirty pages may be written back lazily (see the
	// package documentation).
	PersistBitmaps bool
	// Persist, if non-nil, is the new persistent state: write it durably
	// (metadata superblock) before performing anything else in this Ready.
	// A generation id change must be on disk before a peer can learn it.
	Persist *Persistent
	// LocalOps are operations on the local backing disk. Perform them in any
	// order and concurrently (the engine never emits two overlapping writes
	// at once); report each with LocalDone exactly once.
	LocalOps []LocalOp
	// Messages are frames to send. Per peer, preserve this order within each
	// channel (wire.ChannelOf(Frame.Type)); the two channels are
	// independent. A message to a peer that is disconnected meanwhile is
	// discarded. Payloads are shared and read-only.
	Messages []Message
	// Completed are application requests that are finished.
	Completed []Completion
	// Drop lists connections to close.
	Drop []Drop
	// Events describe state changes, in the order they happened.
	Events []Event
}

// Status is a snapshot of the engine for `georepl status`.
type Status struct {
	// QuorumHave counts the nodes reachable (this one and the connected
	// peers), QuorumNeed is Config.Quorum (0: quorum off), and Quorate
	// says whether this node has quorum (a forced promotion counts).
	QuorumHave, QuorumNeed int
	Quorate                bool
	Role                   Role      // this node's role
	Disk                   DiskState // this node's disk state
	Current                uint64    // this node's current generation id
	History                [2]uint64 // its two previous ones, most recent first
	// Epoch is the primary's current write epoch.
	Epoch uint64
	// Pending counts application requests submitted and not yet completed.
	Pending int
	// Term is the highest failover term this node has seen (0 without
	// automatic failover); Fenced says that this node is Primary of an
	// older one, and so completes no write or flush until demoted.
	Term   uint64
	Fenced bool
	Peers  []PeerStatus // one per configured peer, in configuration order
}

// PeerStatus is the state towards one peer.
type PeerStatus struct {
	ID       NodeID             // from PeerConfig
	Name     string             // from PeerConfig
	Protocol protocols.Protocol // from PeerConfig
	Conn     ConnState          // the connection's state
	Repl     ReplState          // what flows on it
	// Role and Disk are the peer's, as last announced (unknown while not
	// connected).
	Role Role
	Disk DiskState
	// OutOfSync is the number of bytes marked in this node's bitmap for the
	// peer.
	OutOfSync uint64
	// ResyncTotal and ResyncDone count the bytes of the running (or last)
	// resync: for a sync source, bytes to send and bytes acknowledged; for a
	// sync target, ResyncDone counts bytes received.
	ResyncTotal, ResyncDone uint64
	// ResyncSame counts the bytes of the running (or last) resync that a
	// checksum comparison found identical on both nodes, so they were not
	// sent (PeerConfig.Csums); a source also counts them in ResyncDone.
	ResyncSame uint64
	// ResyncWhy says why the running (or last) resync moves what it
	// moves; zero before the first.
	ResyncWhy ResyncWhy
	// Unacked is the number of data bytes sent and not yet acknowledged as
	// written.
	Unacked uint64
	// DataSent and DataReceived count payload bytes of data and resync
	// frames on this connection's lifetime of the engine.
	DataSent, DataReceived uint64
	// BitmapUUID is the generation id the bitmap for this peer started at.
	BitmapUUID uint64
	// ResyncPaused: PauseResync holds the resync to this peer.
	ResyncPaused bool
	// ResyncLimit is the rate the resync to this peer may use now, in
	// bytes per second (0: no limit): PeerConfig.ResyncRate, or less while
	// the controller leaves the application its share.
	ResyncLimit float64
	// AppRate and ResyncRate are the application and resync bytes per
	// second the peer acknowledged over the last measurement period, and
	// LinkCapacity the highest sum of the two seen on this connection
	// (see Engine.Tick; all zero without ticks).
	AppRate, ResyncRate, LinkCapacity float64
	// AppActive: the application sent data to the peer in the last period.
	AppActive bool
	// Verify is the running or last online verify with this peer
	// (StartVerify), nil if none ran.
	Verify *VerifyStatus
	// WritesSent and WritesReceived count the application writes sent to
	// and received from the peer (data frames, not resync).
	WritesSent, WritesReceived uint64
	// AheadEpisodes counts the times congestion left the peer Ahead
	// (pull-ahead); SplitBrains the split brains met with it, resolved or
	// not.
	AheadEpisodes, SplitBrains uint64
	// RPOAge and RPOBytes are, on a Primary, what the peer would lack if
	// this node were lost now: the age of the oldest completed write it
	// has not acknowledged as written or that its bitmap marks, measured
	// with the time reported through Tick (marks held since before New
	// count from New), and the bytes sent and not acknowledged plus the
	// bytes marked. Zero on a Secondary.
	RPOAge   time.Duration
	RPOBytes uint64
}
