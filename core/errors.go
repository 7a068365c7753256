package core

import "errors"

// Sentinel errors. The engine wraps them with %w and the details (which
// peer, which range, which generation ids), so test them with errors.Is,
// never by string. They reach the driver in three places: as the result of
// Promote and Demote, in Completion.Err for application requests, and in
// Drop.Reason for peers the engine refuses to keep talking to.
var (
	// ErrNotPrimary completes an application request submitted while this
	// node is not Primary. Only the primary accepts writes.
	ErrNotPrimary = errors.New("not primary")

	// ErrOutOfRange completes a request whose range is empty, ends beyond
	// the device size, or is longer than one frame can describe
	// (MaxWriteLength, MaxRequestLength).
	ErrOutOfRange = errors.New("request out of range")

	// ErrInvalidRequest completes a request that is malformed in another
	// way: an unknown kind, or a write whose Data is not Length bytes long.
	ErrInvalidRequest = errors.New("invalid request")

	// ErrIO completes an application request whose local disk operation
	// failed; it also drops a peer whose resync cannot proceed because a
	// resync read failed here or a resync write failed there.
	ErrIO = errors.New("disk I/O error")

	// ErrNoSpace marks a local write, write-zeroes or trim that failed
	// because the backing store had no room for it (a full file system,
	// a quota, a thin store out of space): the driver wraps the error of
	// such an operation with it, and only when the operation itself
	// failed, not its flush (a FUA operation flushes only after a write
	// that succeeded). A write that found no space changed nothing else:
	// the engine never detaches the disk for it, whatever
	// Config.OnIOError says (see "Out of space" in the package doc), and
	// an application write that failed so completes with an error that
	// wraps the driver's, so that the client can be told ENOSPC. A flush
	// that fails, for lack of space or not, may have lost written data:
	// it is a failed flush, never ErrNoSpace.
	ErrNoSpace = errors.New("no space left on the backing store")

	// ErrPeerPrimary is returned by Promote while a connected peer is
	// Primary, and drops a connection whose both ends are Primary.
	ErrPeerPrimary = errors.New("peer is primary")

	// ErrStaleTerm drops a connection whose Primary acts in a failover
	// term older than one the other end has seen (see ObserveTerm).
	ErrStaleTerm = errors.New("stale failover term")

	// ErrNotUpToDate is returned by Promote when the local disk is not
	// UpToDate (and force was not given, or cannot help: no disk, or a
	// resync into this node is running).
	ErrNotUpToDate = errors.New("disk not up to date")

	// ErrBusy is returned by Demote while application requests are
	// outstanding (complete or fail them first), and by Promote while
	// writes received from a Primary are still being applied (perform
	// their LocalOps first).
	ErrBusy = errors.New("busy")

	// ErrNoQuorum completes a write or flush of a Primary that cannot
	// reach Config.Quorum nodes (policy IOErrorOnNoQuorum, or any policy
	// when it is demoted while holding requests), and is returned by
	// Promote without quorum unless forced.
	ErrNoQuorum = errors.New("no quorum")

	// ErrSplitBrain drops a connection (StandAlone) when both nodes changed
	// the data independently since they were last in sync, or when a Primary
	// would have to become a sync target. The engine never merges: an
	// operator picks the victim and discards its changes.
	ErrSplitBrain = errors.New("split brain")

	// ErrUnrelatedData drops a connection (StandAlone) when the generation
	// ids show no common history: the peer's data was never a copy of ours.
	// The engine never overwrites it.
	ErrUnrelatedData = errors.New("unrelated data")

	// ErrDeviceMismatch drops a connection (StandAlone) whose peer announces
	// another resource name or device size.
	ErrDeviceMismatch = errors.New("peer's device differs")

	// ErrResyncAborted drops the connection to a sync target when this
	// node is demoted: resync flows only from the Primary, and a fresh
	// handshake decides again (the marks are kept).
	ErrResyncAborted = errors.New("resync aborted")

	// ErrWrongState is returned by an administrative request that makes no
	// sense in the current state (Invalidate on the Primary, or towards a
	// peer that is not connected); the error says what is missing.
	ErrWrongState = errors.New("not possible in the current state")

	// ErrCongested drops the connection to a protocol A peer whose policy
	// is CongestionDisconnect when a write would exceed its MaxBuffer. Not
	// StandAlone: the peer is resynchronised when it reconnects.
	ErrCongested = errors.New("peer congested")

	// ErrHelloChanged drops a new connection (not StandAlone) when this
	// node's role, disk state or generation ids changed between building
	// its Hello and the handshake's end (a write started a generation, a
	// promotion): the peer decides from the Hello, so a decision from our
	// newer state would not be the mirror of the peer's. The next
	// handshake carries the new state.
	ErrHelloChanged = errors.New("state changed during the handshake")

	// ErrProtocol drops a connection whose peer sent a frame that is not
	// allowed in the current state: data from a node that is not Primary,
	// resync data without a resync, an acknowledgement for nothing.
	ErrProtocol = errors.New("protocol violation")
)
