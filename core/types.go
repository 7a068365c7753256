package core

import "fmt"

// NodeID identifies a node within a resource (0..MaxNodes-1).
type NodeID uint8

// MaxNodes bounds the number of nodes of one resource.
const MaxNodes = 32

// RequestID names an application request. The driver chooses it; it must be
// unique among the requests outstanding in one engine.
type RequestID uint64

// OpID names a local disk operation. The engine chooses it.
type OpID uint64

// Role is a node's role for a resource.
type Role uint8

const (
	// RoleUnknown is a peer's role while it is not connected: before its
	// hello and after the connection is lost. This node's own role is never
	// unknown.
	RoleUnknown Role = iota
	// Secondary applies the writes its Primary sends, in the Primary's
	// epoch order, and serves no writable device: Submit completes every
	// request with ErrNotPrimary. Every engine starts Secondary, even one
	// that crashed as Primary (see Persistent.Primary). Two Secondaries
	// connected to each other exchange no data and never resync each other.
	Secondary
	// Primary accepts application writes and replicates them to every
	// replicating peer, marking the blocks of every other peer in that
	// peer's bitmap. At most one node of a resource is Primary: two refuse
	// to connect (ErrPeerPrimary). Only a Primary is a sync source, and it
	// is never a sync target. Promote and Demote switch roles.
	Primary
)

// DiskState is the state of a node's copy of the data.
type DiskState uint8

const (
	// DUnknown is a peer's disk state while it is not connected. A
	// Persistent.Disk of DUnknown (a zero value) is read as Inconsistent.
	DUnknown DiskState = iota
	// Diskless: no backing disk is attached; the node cannot be promoted,
	// not even with force. The engine enters it when a local disk
	// operation fails under DetachOnIOError, or when the driver calls
	// Detach. A Diskless Primary keeps serving the application through
	// its peers in sync with it (see the package documentation); a
	// Diskless Secondary drops the connection to its Primary, which then
	// marks every write for it, and receives no data. Nothing is resynced
	// to or from a Diskless node. A Persistent.Disk of Diskless (the disk
	// was detached while this state was written) is read as Inconsistent
	// with generation id 0: the disk's content is unknown, so when it
	// returns it is resynchronised fully.
	Diskless
	// Attaching: the backing disk is being opened and its metadata read;
	// like Diskless, a state the driver reports, which the engine neither
	// promotes nor syncs from.
	Attaching
	// Inconsistent: the data is not usable: a new resource before its first
	// full sync, or a sync target in the middle of a resync (persisted when
	// the resync starts, so that a crash then is not mistaken for good
	// data). Promote refuses it unless forced; it is never a sync source.
	Inconsistent
	// Outdated: consistent data known to be older than a peer's. The
	// engine accepts it from Config.State; connecting to a Primary in the
	// same generation makes it UpToDate, a newer Primary resyncs it.
	Outdated
	// Consistent: consistent data whose age relative to the peers is not
	// known yet (not connected). Treated like Outdated: it becomes UpToDate
	// when a Primary of the same generation connects.
	Consistent
	// UpToDate: consistent data that is the latest this node knows of. A
	// Primary's disk is always UpToDate, and only an UpToDate Secondary
	// adopts its Primary's new generation ids.
	UpToDate
)

// IOErrorPolicy says what the engine does when a local disk operation
// fails (Config.OnIOError).
type IOErrorPolicy uint8

const (
	// DetachOnIOError (the default): the first failed local operation
	// makes the disk Diskless (see Diskless). On a Primary the failed
	// write does not fail: it completes once a peer in sync with us wrote
	// it and every peer reached its protocol's level, and later requests
	// go to the peers only; a read is served by a peer in sync. Only when
	// no peer in sync is connected does a request fail with ErrIO.
	DetachOnIOError IOErrorPolicy = iota
	// PassOnIOError: the error goes to the application (ErrIO) and the
	// disk stays attached. A failed write on a Primary is marked out of
	// sync for every peer (its range may hold the new data there and
	// anything here), so that the next resync makes the peers equal to
	// what this disk returns; a failed write on a Secondary is
	// acknowledged negatively and the Primary marks it for that peer.
	PassOnIOError
)

// IOErrorPolicies lists every policy, the default first.
func IOErrorPolicies() []IOErrorPolicy { return []IOErrorPolicy{DetachOnIOError, PassOnIOError} }

// String returns the policy's configuration name ("detach").
func (p IOErrorPolicy) String() string {
	switch p {
	case DetachOnIOError:
		return "detach"
	case PassOnIOError:
		return "pass-on"
	}
	return fmt.Sprintf("IOErrorPolicy(%d)", uint8(p))
}

// ConnState is the state of the connection to one peer.
type ConnState uint8

const (
	// StandAlone: not trying to connect: the engine dropped the connection
	// with Drop.StandAlone (split brain, unrelated data, two Primaries,
	// another device), or the driver keeps the peer down. Connected still
	// accepts a new connection: reconnecting is the operator's decision.
	StandAlone ConnState = iota
	// Connecting: not connected, and the driver is (or may be) trying to
	// connect: every peer's initial state, and the state after a lost
	// connection or a Drop without StandAlone.
	Connecting
	// Connected: the handshake is done and the generation ids were
	// compared; ReplState says what flows.
	Connected
)

// ReplState is the replication state towards one connected peer.
type ReplState uint8

const (
	// ReplOff: not connected; nothing flows, and a Primary marks every write
	// in the peer's bitmap.
	ReplOff ReplState = iota
	// Established: connected with no resync running. Towards a Secondary
	// peer of a Primary, application writes flow as Data frames. Between
	// two Secondaries nothing flows, even when their generation ids say one
	// is behind: the resync waits until one of them is promoted.
	Established
	// SyncSource: this node (the Primary) sends the peer the blocks marked in
	// its bitmap for it, and application writes as Data, until the bitmap
	// is clear; then ResyncDone and Established.
	SyncSource
	// SyncTarget: this node receives the marked blocks (and application
	// writes) from its Primary; its disk is Inconsistent until ResyncDone,
	// when it adopts the source's generation ids and becomes UpToDate. A
	// sync target cannot be promoted.
	SyncTarget
	// Ahead: this node (the Primary) stopped sending application writes to
	// a congested protocol A peer whose policy is CongestionPullAhead: they
	// are marked in the peer's bitmap instead, so the application never
	// waits for that peer. When the peer has acknowledged what was in
	// flight (its unacknowledged bytes fell to the low-water mark), a
	// resync of the marked blocks catches it up (SyncSource), and then
	// Established again.
	Ahead
	// Behind: the mirror of Ahead on the peer: its Primary stopped sending
	// writes. Everything received before is applied in epoch order, so the
	// disk is a crash-consistent, older image: Outdated (persisted) until
	// the catch-up resync makes it Inconsistent and then UpToDate.
	Behind
)

// String returns the role's name ("Primary").
func (r Role) String() string {
	return enumName(uint8(r), "Role", "Unknown", "Secondary", "Primary")
}

// String returns the disk state's name ("UpToDate").
func (d DiskState) String() string {
	return enumName(uint8(d), "DiskState", "DUnknown", "Diskless", "Attaching",
		"Inconsistent", "Outdated", "Consistent", "UpToDate")
}

// String returns the connection state's name ("Connected").
func (c ConnState) String() string {
	return enumName(uint8(c), "ConnState", "StandAlone", "Connecting", "Connected")
}

// String returns the replication state's name ("SyncSource").
func (r ReplState) String() string {
	return enumName(uint8(r), "ReplState", "Off", "Established", "SyncSource", "SyncTarget",
		"Ahead", "Behind")
}

func enumName(v uint8, typ string, names ...string) string {
	if int(v) < len(names) {
		return names[v]
	}
	return fmt.Sprintf("%s(%d)", typ, v)
}
