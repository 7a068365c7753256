package meta

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"time"
)

// maxDumpExtents bounds the activity-log extents Dump lists.
const maxDumpExtents = 32

// MaxSummaryRanges bounds the out-of-sync ranges listed per peer in a
// Summary.
const MaxSummaryRanges = 8

// Summary describes the metadata for people and tools: `georepl dump-md`
// prints it, as text (Dump) or JSON.
type Summary struct {
	Resource   string `json:"resource"`
	NodeID     uint8  `json:"node_id"`
	DataSize   uint64 `json:"data_size"`
	BlockSize  uint32 `json:"block_size"`
	DiskState  uint8  `json:"disk_state"`
	Primary    bool   `json:"primary"`
	MetaOffset int64  `json:"meta_offset"`
	MetaSize   int64  `json:"meta_size"`
	Seq        uint64 `json:"seq"`
	// Current and History are the generation ids as 16 hex digits.
	Current string    `json:"current_gen"`
	History [2]string `json:"history_gen"`
	// Promoted is when the node was last promoted, Unix nanoseconds; 0 if
	// never or unknown.
	Promoted uint64 `json:"promoted_unix_ns"`
	// Term is the highest failover term the node has seen; 0 without
	// automatic failover.
	Term uint64 `json:"failover_term"`
	// Peers has one entry per bitmap slot except the node's own, in slot
	// order.
	Peers []PeerSummary `json:"peers"`
	// ActivityLog lists the active activity-log extents (of
	// ActivityLogExtentSize bytes), in increasing order: empty after a
	// clean shutdown.
	ActivityLog []uint64 `json:"activity_log"`
	// Warnings names problems that did not stop Open, such as a damaged
	// superblock slot that the next update will overwrite.
	Warnings []string `json:"warnings,omitempty"`
}

// PeerSummary describes the bitmap slot towards one peer.
type PeerSummary struct {
	NodeID     uint8  `json:"node_id"`
	BitmapUUID string `json:"bitmap_uuid"`
	// OutOfSyncBlocks counts the set bits; OutOfSyncBytes the bytes they
	// cover (the last block may be partial).
	OutOfSyncBlocks uint64 `json:"out_of_sync_blocks"`
	OutOfSyncBytes  uint64 `json:"out_of_sync_bytes"`
	// Ranges lists the first MaxSummaryRanges maximal out-of-sync byte
	// ranges, in offset order.
	Ranges []ByteRange `json:"first_out_of_sync"`
	// MoreRanges is set when out-of-sync ranges follow those listed.
	MoreRanges bool `json:"more_ranges"`
}

// ByteRange is the byte range [Offset, Offset+Length) of the data area.
type ByteRange struct {
	Offset uint64 `json:"offset"`
	Length uint64 `json:"length"`
}

func hex64(v uint64) string { return fmt.Sprintf("%016x", v) }

// Summary reads every peer's bitmap and summarises the metadata. Errors
// are those of ReadBitmap.
func (s *Store) Summary() (Summary, error) {
	s.mu.Lock()
	sb, damaged := s.sb.clone(), s.damaged
	s.mu.Unlock()
	sum := Summary{
		Resource:   sb.Resource,
		NodeID:     sb.NodeID,
		DataSize:   sb.DataSize,
		BlockSize:  sb.BlockSize,
		DiskState:  sb.DiskState,
		Primary:    sb.Primary,
		MetaOffset: s.off,
		MetaSize:   s.lay.size(),
		Seq:        sb.Seq,
		Current:    hex64(sb.Current),
		History:    [2]string{hex64(sb.History[0]), hex64(sb.History[1])},
		Promoted:   sb.Promoted,
		Term:       sb.Term,
		Peers:      []PeerSummary{},
	}
	if damaged != "" {
		sum.Warnings = append(sum.Warnings, damaged)
	}
	al, err := s.ReadActivityLog()
	switch {
	case errors.Is(err, ErrCorrupt):
		sum.Warnings = append(sum.Warnings, err.Error())
		al = []uint64{}
	case err != nil:
		return Summary{}, err
	}
	sum.ActivityLog = al
	for slot := range sb.Slots {
		if slot == int(sb.NodeID) {
			continue
		}
		words, err := s.ReadBitmap(slot)
		if err != nil {
			return Summary{}, err
		}
		p := PeerSummary{
			NodeID:          uint8(slot),
			BitmapUUID:      hex64(sb.BitmapUUID[slot]),
			OutOfSyncBlocks: onesCount(words),
			Ranges:          []ByteRange{},
		}
		bs := uint64(sb.BlockSize)
		p.OutOfSyncBytes = p.OutOfSyncBlocks * bs
		if last := s.lay.bits - 1; words[last/64]&(1<<(last%64)) != 0 {
			p.OutOfSyncBytes -= last*bs + bs - sb.DataSize
		}
		start := nextSet(words, 0, s.lay.bits)
		for ; start < s.lay.bits && len(p.Ranges) < MaxSummaryRanges; start = nextSet(words, start, s.lay.bits) {
			end := nextClear(words, start, s.lay.bits)
			p.Ranges = append(p.Ranges, ByteRange{Offset: start * bs, Length: min(end*bs, sb.DataSize) - start*bs})
			start = end
		}
		p.MoreRanges = start < s.lay.bits
		sum.Peers = append(sum.Peers, p)
	}
	return sum, nil
}

// nextSet returns the index of the first set bit at or after from, or n if
// there is none below n.
func nextSet(words []uint64, from, n uint64) uint64 {
	for from < n {
		if w := words[from/64] >> (from % 64); w != 0 {
			return min(from+uint64(bits.TrailingZeros64(w)), n)
		}
		from = (from/64 + 1) * 64
	}
	return n
}

// nextClear returns the index of the first clear bit at or after from, or
// n if there is none below n.
func nextClear(words []uint64, from, n uint64) uint64 {
	for from < n {
		if w := ^words[from/64] >> (from % 64); w != 0 {
			return min(from+uint64(bits.TrailingZeros64(w)), n)
		}
		from = (from/64 + 1) * 64
	}
	return n
}

// Dump writes the Summary as text for people. diskStateName turns the
// opaque disk state into a name (the engine's DiskState.String); nil
// prints the number only. It returns the first error of Summary or of w.
func (s *Store) Dump(w io.Writer, diskStateName func(uint8) string) error {
	sum, err := s.Summary()
	if err != nil {
		return err
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "georepl metadata, format version %d, at offset %d, %d bytes, superblock seq %d\n",
		FormatVersion, sum.MetaOffset, sum.MetaSize, sum.Seq)
	for _, warn := range sum.Warnings {
		fmt.Fprintf(&b, "WARNING: %s\n", warn)
	}
	state := fmt.Sprint(sum.DiskState)
	if diskStateName != nil {
		state = fmt.Sprintf("%s (%d)", diskStateName(sum.DiskState), sum.DiskState)
	}
	role := "no"
	if sum.Primary {
		role = "yes"
	}
	fmt.Fprintf(&b, "%-16s%s\n", "resource", sum.Resource)
	fmt.Fprintf(&b, "%-16s%d\n", "node id", sum.NodeID)
	fmt.Fprintf(&b, "%-16s%d bytes\n", "data size", sum.DataSize)
	fmt.Fprintf(&b, "%-16s%d bytes, %d bits per bitmap\n", "block size", sum.BlockSize, s.lay.bits)
	fmt.Fprintf(&b, "%-16s%s\n", "disk state", state)
	fmt.Fprintf(&b, "%-16s%s\n", "primary", role)
	fmt.Fprintf(&b, "%-16s%s\n", "current gen", sum.Current)
	fmt.Fprintf(&b, "%-16s%s %s\n", "history gens", sum.History[0], sum.History[1])
	promoted := "unknown"
	if sum.Promoted != 0 {
		promoted = time.Unix(0, int64(sum.Promoted)).UTC().Format(time.RFC3339Nano)
	}
	fmt.Fprintf(&b, "%-16s%s\n", "last promoted", promoted)
	if sum.Term != 0 {
		fmt.Fprintf(&b, "%-16s%d\n", "failover term", sum.Term)
	}
	fmt.Fprintf(&b, "%-16s%d extents of %d bytes", "activity log", len(sum.ActivityLog), ActivityLogExtentSize)
	for i, x := range sum.ActivityLog {
		if i == maxDumpExtents {
			fmt.Fprintf(&b, " ...")
			break
		}
		fmt.Fprintf(&b, " %d", x)
	}
	fmt.Fprintln(&b)
	for _, p := range sum.Peers {
		fmt.Fprintf(&b, "%-16sbitmap uuid %s, out of sync: %d blocks, %d bytes\n",
			fmt.Sprintf("peer %d", p.NodeID), p.BitmapUUID, p.OutOfSyncBlocks, p.OutOfSyncBytes)
		for _, r := range p.Ranges {
			fmt.Fprintf(&b, "%16s[%d, %d) %d bytes\n", "", r.Offset, r.Offset+r.Length, r.Length)
		}
		if p.MoreRanges {
			fmt.Fprintf(&b, "%16s(more ranges follow; only the first %d are listed)\n", "", MaxSummaryRanges)
		}
	}
	_, err = w.Write(b.Bytes())
	return err
}
