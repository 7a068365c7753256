package core

import (
	"fmt"

	"github.com/georepl/georepl/core/wire"
	"github.com/georepl/georepl/protocols"
)

// Defaults applied by New to zero Config fields.
const (
	DefaultBlockSize      = 4096
	DefaultEpochMaxWrites = 1024
	DefaultResyncChunk    = 256 << 10
	DefaultResyncWindow   = 8
	DefaultMaxBuffer      = 64 << 20
	// MaxResyncMinAppShare leaves a resync at least a tenth of a busy
	// link, so that it always ends.
	MaxResyncMinAppShare = 0.9
)

// Request length limits; the driver splits longer requests. A data frame
// carries a write's payload (at most wire.MaxPayload) and describes every
// range with a 32-bit length.
const (
	MaxWriteLength   = 8 << 20   // ReqWrite
	MaxRequestLength = 1<<32 - 1 // ReqZeroes, ReqTrim
)

// PeerConfig describes the connection to one peer.
type PeerConfig struct {
	ID   NodeID // the peer's node id, unique in the resource
	Name string // for status and events
	// Protocol is the write-ordering protocol of this connection (the same
	// on both ends).
	Protocol protocols.Protocol
	// MaxBuffer is how many bytes of data written to this peer may be
	// unacknowledged (no WriteAck yet) while writes still count as queued
	// for it. What happens beyond it is OnCongestion's business.
	// 0 means DefaultMaxBuffer.
	MaxBuffer uint64
	// Csums, if not wire.CsumNone, makes this node, as sync source towards
	// the peer, compare blocks by checksum (OpChecksum, ResyncCsum) before
	// sending them: blocks already identical on the peer are not sent.
	// The peer needs no setting of its own to answer.
	Csums wire.Csum
	// OnCongestion is what a write does when it would take the peer's
	// unacknowledged bytes beyond MaxBuffer. Policies other than
	// CongestionBlock need protocol A (under B and C the application
	// waits for the peer anyway).
	OnCongestion Congestion
	// AfterSplitBrain is how a split brain with this peer is resolved (the
	// same on both ends; if they differ, nothing is resolved), and
	// DiscardNode the node that DiscardNode names.
	AfterSplitBrain SplitBrainPolicy
	DiscardNode     NodeID
	// ResyncRate caps the resync to this peer, in bytes per second; 0 for
	// no cap. Pacing needs Engine.Tick.
	ResyncRate uint64
	// ResyncMinAppShare, from 0 to MaxResyncMinAppShare, is the least
	// share of the link's measured capacity that a resync leaves to
	// application writes while the application writes to this peer; 0
	// turns the controller off.
	// See Engine.Tick.
	ResyncMinAppShare float64
}

// Congestion is a congestion policy: what a write does when a protocol A
// peer's unacknowledged data would exceed its MaxBuffer.
// docs/architecture.md, "Congestion (protocol A)", describes each.
type Congestion uint8

const (
	// CongestionBlock: the write is sent and completes once
	// acknowledgements make room: the application waits for the peer.
	CongestionBlock Congestion = iota
	// CongestionPullAhead: the write is not sent; the Primary goes Ahead
	// of the peer, marks writes for it, and resyncs it once it drained.
	CongestionPullAhead
	// CongestionDisconnect: the connection is dropped (ErrCongested, not
	// StandAlone); the peer is resynchronised when it reconnects.
	CongestionDisconnect
)

// Congestions lists every congestion policy, the default first.
func Congestions() []Congestion {
	return []Congestion{CongestionBlock, CongestionPullAhead, CongestionDisconnect}
}

// String returns the policy's configuration name ("pull-ahead").
func (c Congestion) String() string {
	return enumName(uint8(c), "Congestion", "block", "pull-ahead", "disconnect")
}

// Persistent is the state that must survive a crash. The engine hands it out
// in Ready.Persist whenever it changes; the driver stores it in the
// metadata superblock and passes it back in Config.State after a restart.
type Persistent struct {
	// Disk is the local disk state. Inconsistent while a resync into this
	// node runs, so that a crash then is not mistaken for good data.
	Disk DiskState
	// Primary is the primary indicator: this node was Primary when the
	// state was last persisted, for the operator and the driver's
	// recovery. New always starts Secondary.
	Primary bool
	// Current is the generation id of the data on this disk; 0 for a
	// resource that never had a Primary.
	Current uint64
	// History holds the two previous current ids, most recent first.
	History [2]uint64
	// BitmapUUID is, per peer, the current id at the moment this node began
	// recording blocks out of sync for that peer; 0 (or absent) when the
	// bitmap is clear and tracks nothing.
	BitmapUUID map[NodeID]uint64
	// Promoted is when this node was last promoted (Config.Clock), 0 if
	// never or not known; kept after demotion, for DiscardYoungerPrimary.
	Promoted uint64
	// Term is the highest failover term this node has seen (ObserveTerm,
	// a peer's hello or state change); 0 without automatic failover. It is
	// persisted before any peer can learn that this node saw it, so a
	// restart never forgets a term and accepts a Primary it fenced.
	Term uint64
}

// Config configures an Engine. New validates and defaults it in one place.
type Config struct {
	// Self is this node's id.
	Self NodeID
	// Name is the resource's name, checked against the peer's hello.
	Name string
	// Size is the usable device size in bytes, a multiple of BlockSize.
	Size uint64
	// BlockSize is the bitmap granularity in bytes; 0 means
	// DefaultBlockSize. It must be a power of two.
	BlockSize uint32
	// Peers lists every other node of the resource.
	Peers []PeerConfig
	// EpochMaxWrites closes an epoch after this many writes even if none of
	// them completed; 0 means DefaultEpochMaxWrites.
	EpochMaxWrites int
	// ResyncChunk is the most bytes one resync read covers, a multiple of
	// BlockSize; 0 means DefaultResyncChunk.
	ResyncChunk uint32
	// ResyncWindow is the most resync reads plus unacknowledged resync
	// frames per peer; 0 means DefaultResyncWindow.
	ResyncWindow int
	// DiskFlushes declares a volatile write cache: a secondary flushes its
	// disk at every barrier before acknowledging it, so that a BarrierAck
	// always means "durable", and writes resync blocks with FUA, since the
	// source forgets them at the acknowledgement. Leave it off only for
	// disks without a volatile write cache.
	DiskFlushes bool
	// OnIOError says what a failed local disk operation does; the zero
	// value is DetachOnIOError. An operation that found no space
	// (ErrNoSpace) is not a disk failure and never detaches the disk.
	OnIOError IOErrorPolicy
	// State is the persisted state (Disk DUnknown is taken as
	// Inconsistent, Diskless as Inconsistent with Current 0 and no
	// bitmap ids).
	State Persistent
	// Bitmaps are the per-peer bitmaps loaded from metadata; a missing one
	// starts clear. Each must have Size/BlockSize bits. The engine takes
	// ownership.
	Bitmaps map[NodeID]*Bitmap
	// NewUUID returns a fresh random non-zero generation id. Required: the
	// engine has no randomness of its own.
	NewUUID func() uint64
	// RecoveredExtents is the number of activity-log extents of an
	// unclean shutdown that the driver marked in every peer's bitmap
	// before New (0 after a clean shutdown). The engine only names them
	// in ResyncWhy, until each peer's first resync is done.
	RecoveredExtents int
	// Clock returns the wall-clock time in Unix nanoseconds. The engine
	// reads it only in Promote, to record the promotion time that
	// DiscardYoungerPrimary compares. Optional: without it promotions are
	// not timed and that policy cannot decide.
	Clock func() uint64
	// Quorum is how many nodes, this one included, a node must reach
	// (be connected to) to be promoted without force and, as Primary, to
	// complete writes and flushes; 0 (the default) disables quorum. At
	// most the number of nodes, witnesses included.
	Quorum int
	// Witnesses is the number of witnesses: voters of the failover log
	// that hold no data (no peer of the engine). Each counts as a node
	// for Quorum while the driver says it is reachable (Engine.Witnesses).
	Witnesses int
	// OnNoQuorum is what a Primary without quorum does with writes.
	OnNoQuorum NoQuorumPolicy
	// Leased: automatic failover runs, and a Primary completes writes and
	// flushes only under a lease of the consensus log (Engine.Lease), as
	// if it had no quorum otherwise.
	Leased bool
}

// withDefaults validates cfg and fills in its defaults.
func (cfg Config) withDefaults() (Config, error) {
	if cfg.BlockSize == 0 {
		cfg.BlockSize = DefaultBlockSize
	}
	if cfg.BlockSize&(cfg.BlockSize-1) != 0 || cfg.BlockSize < 512 {
		return cfg, fmt.Errorf("core: block size %d is not a power of two >= 512", cfg.BlockSize)
	}
	if cfg.Size == 0 || cfg.Size%uint64(cfg.BlockSize) != 0 {
		return cfg, fmt.Errorf("core: size %d is not a positive multiple of the block size %d", cfg.Size, cfg.BlockSize)
	}
	if cfg.Self >= MaxNodes {
		return cfg, fmt.Errorf("core: node id %d out of range 0..%d", cfg.Self, MaxNodes-1)
	}
	if cfg.EpochMaxWrites == 0 {
		cfg.EpochMaxWrites = DefaultEpochMaxWrites
	}
	if cfg.ResyncChunk == 0 {
		cfg.ResyncChunk = DefaultResyncChunk
	}
	if cfg.ResyncChunk%cfg.BlockSize != 0 || cfg.ResyncChunk > MaxWriteLength {
		return cfg, fmt.Errorf("core: resync chunk %d is not a multiple of the block size %d up to %d", cfg.ResyncChunk, cfg.BlockSize, MaxWriteLength)
	}
	if cfg.ResyncWindow == 0 {
		cfg.ResyncWindow = DefaultResyncWindow
	}
	if cfg.EpochMaxWrites < 0 || cfg.ResyncWindow < 0 {
		return cfg, fmt.Errorf("core: negative epoch size %d or resync window %d", cfg.EpochMaxWrites, cfg.ResyncWindow)
	}
	if cfg.Witnesses < 0 || cfg.Quorum < 0 || cfg.Quorum > len(cfg.Peers)+1+cfg.Witnesses || cfg.OnNoQuorum > IOErrorOnNoQuorum {
		return cfg, fmt.Errorf("core: quorum %d of %d nodes and %d witnesses, or policy %v, out of range", cfg.Quorum, len(cfg.Peers)+1, cfg.Witnesses, cfg.OnNoQuorum)
	}
	if cfg.NewUUID == nil {
		return cfg, fmt.Errorf("core: Config.NewUUID is required")
	}
	switch cfg.State.Disk {
	case DUnknown:
		cfg.State.Disk = Inconsistent
	case Diskless:
		// Detached after an I/O error: whatever the disk holds is
		// unknown, and a full resync is the only way back (see Diskless).
		// The bitmap ids are from the disk's former life: matched with a
		// peer's marks tied to the same id, they would pass for an
		// interrupted full sync (resumeFullSync) and copy only those
		// marks.
		cfg.State.Disk, cfg.State.Current = Inconsistent, 0
		cfg.State.BitmapUUID = nil
	}
	if cfg.OnIOError != DetachOnIOError && cfg.OnIOError != PassOnIOError {
		return cfg, fmt.Errorf("core: unknown I/O error policy %v", cfg.OnIOError)
	}
	blocks := cfg.Size / uint64(cfg.BlockSize)
	seen := map[NodeID]bool{cfg.Self: true}
	peers := make([]PeerConfig, len(cfg.Peers))
	for i, p := range cfg.Peers {
		if p.ID >= MaxNodes || seen[p.ID] {
			return cfg, fmt.Errorf("core: peer %d (%q): id out of range or duplicate", p.ID, p.Name)
		}
		seen[p.ID] = true
		if err := p.check(); err != nil {
			return cfg, err
		}
		if b := cfg.Bitmaps[p.ID]; b != nil && b.Len() != blocks {
			return cfg, fmt.Errorf("core: peer %d (%q): bitmap has %d bits, the device %d blocks", p.ID, p.Name, b.Len(), blocks)
		}
		peers[i] = p
	}
	cfg.Peers = peers
	return cfg, nil
}

// check validates p's settings, filling in MaxBuffer's default. The error
// names the peer and the field.
func (p *PeerConfig) check() error {
	if p.Protocol != protocols.A && p.Protocol != protocols.B && p.Protocol != protocols.C {
		return fmt.Errorf("core: peer %d (%q): unknown protocol %v", p.ID, p.Name, p.Protocol)
	}
	if p.Csums != wire.CsumNone && p.Csums.Size() == 0 {
		return fmt.Errorf("core: peer %d (%q): unknown checksum algorithm %v", p.ID, p.Name, p.Csums)
	}
	if p.AfterSplitBrain > DiscardNode {
		return fmt.Errorf("core: peer %d (%q): unknown split-brain policy %d", p.ID, p.Name, p.AfterSplitBrain)
	}
	if p.MaxBuffer == 0 {
		p.MaxBuffer = DefaultMaxBuffer
	}
	if !(p.ResyncMinAppShare >= 0 && p.ResyncMinAppShare <= MaxResyncMinAppShare) {
		return fmt.Errorf("core: peer %d (%q): minimum application share %v is not from 0 to %v", p.ID, p.Name, p.ResyncMinAppShare, MaxResyncMinAppShare)
	}
	if p.OnCongestion > CongestionDisconnect {
		return fmt.Errorf("core: peer %d (%q): unknown congestion policy %v", p.ID, p.Name, p.OnCongestion)
	}
	if p.OnCongestion != CongestionBlock && p.Protocol != protocols.A {
		return fmt.Errorf("core: peer %d (%q): congestion policy %v needs protocol A, not %v", p.ID, p.Name, p.OnCongestion, p.Protocol)
	}
	return nil
}
