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
	// RoleUnknown is a peer's role before its first hello.
	RoleUnknown Role = iota
	// Secondary applies writes received from the primary and serves no
	// writable device.
	Secondary
	// Primary accepts application writes and replicates them to every
	// connected peer.
	Primary
)

// DiskState is the state of a node's copy of the data.
type DiskState uint8

const (
	// DUnknown is a peer's disk state before its first hello.
	DUnknown DiskState = iota
	// Diskless: no backing disk attached.
	Diskless
	// Attaching: the backing disk is being opened and its metadata read.
	Attaching
	// Inconsistent: the data is not usable: a new resource before its first
	// full sync, or a sync target in the middle of a resync.
	Inconsistent
	// Outdated: consistent data that is known to be older than a peer's.
	Outdated
	// Consistent: consistent data whose age relative to the peers is not
	// known yet (not connected).
	Consistent
	// UpToDate: consistent data that is the latest.
	UpToDate
)

// ConnState is the state of the connection to one peer.
type ConnState uint8

const (
	// StandAlone: not trying to connect (administratively down, or refused
	// after split brain or unrelated data).
	StandAlone ConnState = iota
	// Connecting: trying to connect or waiting for the peer.
	Connecting
	// Connected: handshake done; see ReplState.
	Connected
)

// ReplState is the replication state towards one connected peer.
type ReplState uint8

const (
	// ReplOff: not connected.
	ReplOff ReplState = iota
	// Established: connected, writes replicate, nothing to resync.
	Established
	// SyncSource: this node sends the peer the blocks marked out of sync.
	SyncSource
	// SyncTarget: this node receives blocks from the peer; its disk is
	// Inconsistent until the resync completes.
	SyncTarget
)

func (r Role) String() string {
	return enumName(uint8(r), "Role", "Unknown", "Secondary", "Primary")
}

func (d DiskState) String() string {
	return enumName(uint8(d), "DiskState", "DUnknown", "Diskless", "Attaching",
		"Inconsistent", "Outdated", "Consistent", "UpToDate")
}

func (c ConnState) String() string {
	return enumName(uint8(c), "ConnState", "StandAlone", "Connecting", "Connected")
}

func (r ReplState) String() string {
	return enumName(uint8(r), "ReplState", "Off", "Established", "SyncSource", "SyncTarget")
}

func enumName(v uint8, typ string, names ...string) string {
	if int(v) < len(names) {
		return names[v]
	}
	return fmt.Sprintf("%s(%d)", typ, v)
}
