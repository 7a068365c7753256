package meta

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"slices"
	"unicode/utf8"
)

// Superblock is the decoded content of the newest valid superblock slot.
// Store.Superblock returns copies; Store.UpdateSuperblock changes it.
type Superblock struct {
	// Resource, NodeID, Slots, DataSize and BlockSize are fixed at
	// creation; see Params.
	Resource  string
	NodeID    uint8
	Slots     int
	DataSize  uint64
	BlockSize uint32
	// DiskState is the engine's disk state, opaque to this package.
	DiskState uint8
	// Primary is set while this node is (or was, when it crashed) the
	// primary.
	Primary bool
	// Current and History are the generation ids; all zero right after
	// Create. Their meaning belongs to the engine.
	Current uint64
	History [2]uint64
	// Promoted is when this node was last promoted, in Unix nanoseconds;
	// 0 if never or unknown (format version 1 has no such field). Its
	// meaning belongs to the engine.
	Promoted uint64
	// Term is the highest failover term this node has seen; 0 without
	// automatic failover (format versions 1 and 2 have no such field). Its
	// meaning belongs to the engine.
	Term uint64
	// BitmapUUID holds, per bitmap slot, the generation id the slot's
	// bitmap started from. Its length is Slots.
	BitmapUUID []uint64
	// Seq counts superblock writes: 1 after Create, one more per update.
	// The store maintains it; changes made by an update function are
	// ignored.
	Seq uint64
}

func (sb Superblock) clone() Superblock {
	sb.BitmapUUID = slices.Clone(sb.BitmapUUID)
	return sb
}

// magic opens every superblock slot.
var magic = [8]byte{'G', 'E', 'O', 'R', 'E', 'P', 'L', 'M'}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Byte offsets of the superblock fields inside a slot; see doc.go.
const (
	offMagic       = 0
	offVersion     = 8
	offFlags       = 12
	offSeq         = 16
	offNodeID      = 24
	offSlots       = 25
	offDiskState   = 26
	offResourceLen = 27
	offBlockSize   = 28
	offResource    = 32
	offDataSize    = offResource + MaxResourceLen // 96
	offCurrent     = 104
	offHistory     = 112
	offALOffset    = 128
	offALLen       = 136
	offBitmapOff   = 144
	offBitmapLen   = 152
	offSlotLen     = 160
	offPromoted    = 168 // format version 2
	offTerm        = 176 // format version 3
	offReserved    = 184
	offBitmapUUID  = 256
	offTail        = offBitmapUUID + 8*MaxSlots // 512: reserved up to the CRC
	offCRC         = PageSize - 4
)

// flagPrimary is the only flag bit of format version 1.
const flagPrimary = 1 << 0

var le = binary.LittleEndian

// encodeSuperblock returns the PageSize bytes of one superblock slot.
func encodeSuperblock(sb Superblock, l layout) []byte {
	b := make([]byte, PageSize)
	copy(b[offMagic:], magic[:])
	le.PutUint32(b[offVersion:], formatVersionOf(sb))
	var flags uint32
	if sb.Primary {
		flags |= flagPrimary
	}
	le.PutUint32(b[offFlags:], flags)
	le.PutUint64(b[offSeq:], sb.Seq)
	b[offNodeID] = sb.NodeID
	b[offSlots] = uint8(l.slots)
	b[offDiskState] = sb.DiskState
	b[offResourceLen] = uint8(len(sb.Resource))
	le.PutUint32(b[offBlockSize:], l.blockSize)
	copy(b[offResource:offDataSize], sb.Resource)
	le.PutUint64(b[offDataSize:], l.dataSize)
	le.PutUint64(b[offCurrent:], sb.Current)
	le.PutUint64(b[offHistory:], sb.History[0])
	le.PutUint64(b[offHistory+8:], sb.History[1])
	le.PutUint64(b[offALOffset:], alOffset)
	le.PutUint64(b[offALLen:], ActivityLogSize)
	le.PutUint64(b[offBitmapOff:], bitmapOffset)
	le.PutUint64(b[offBitmapLen:], uint64(l.bitmapLen()))
	le.PutUint64(b[offSlotLen:], uint64(l.slotBytes))
	le.PutUint64(b[offPromoted:], sb.Promoted)
	le.PutUint64(b[offTerm:], sb.Term)
	for i, u := range sb.BitmapUUID {
		le.PutUint64(b[offBitmapUUID+8*i:], u)
	}
	le.PutUint32(b[offCRC:], checksum(b))
	return b
}

// formatVersionOf is the version a slot holding sb is written in: the
// oldest that has every field sb uses. A node that never saw a failover
// term writes version 2, so that a build before the term still reads it.
func formatVersionOf(sb Superblock) uint32 {
	if sb.Term == 0 {
		return 2
	}
	return FormatVersion
}

// checksum returns the CRC32C of a superblock slot's bytes before the CRC.
func checksum(b []byte) uint32 { return crc32.Checksum(b[:offCRC], castagnoli) }

// errNoMagic marks a slot that does not start with the magic. It never
// leaves the package: Open turns it into ErrNoMetadata or ErrCorrupt.
var errNoMagic = errors.New("no magic (zeroed or overwritten)")

// slotError is why one superblock slot is unusable. Its text is only the
// reason, so that Open can list both slots under one sentinel; it unwraps
// to kind (ErrCorrupt or ErrVersion).
type slotError struct {
	kind   error
	reason string
}

func (e *slotError) Error() string { return e.reason }
func (e *slotError) Unwrap() error { return e.kind }

func slotErrorf(kind error, format string, args ...any) error {
	return &slotError{kind: kind, reason: fmt.Sprintf(format, args...)}
}

// decodeSuperblock decodes and validates slot number slot (0 or 1), whose
// PageSize bytes are b. Errors are errNoMagic or a *slotError, which
// describes the problem without saying where; Open adds that.
func decodeSuperblock(b []byte, slot int) (Superblock, layout, error) {
	if !bytes.Equal(b[offMagic:offMagic+len(magic)], magic[:]) {
		return Superblock{}, layout{}, errNoMagic
	}
	stored, computed := le.Uint32(b[offCRC:]), checksum(b)
	if stored != computed {
		return Superblock{}, layout{}, slotErrorf(ErrCorrupt, "checksum mismatch (stored %08x, computed %08x)",
			stored, computed)
	}
	v := le.Uint32(b[offVersion:])
	if v < OldestFormatVersion || v > FormatVersion {
		return Superblock{}, layout{}, slotErrorf(ErrVersion, "format version %d, this build reads versions %d to %d",
			v, OldestFormatVersion, FormatVersion)
	}
	corrupt := func(format string, args ...any) (Superblock, layout, error) {
		return Superblock{}, layout{}, slotErrorf(ErrCorrupt, format, args...)
	}
	flags := le.Uint32(b[offFlags:])
	if flags&^flagPrimary != 0 {
		return corrupt("unknown flag bits %#x", flags&^flagPrimary)
	}
	sb := Superblock{
		NodeID:    b[offNodeID],
		Slots:     int(b[offSlots]),
		DiskState: b[offDiskState],
		Primary:   flags&flagPrimary != 0,
		BlockSize: le.Uint32(b[offBlockSize:]),
		DataSize:  le.Uint64(b[offDataSize:]),
		Current:   le.Uint64(b[offCurrent:]),
		History:   [2]uint64{le.Uint64(b[offHistory:]), le.Uint64(b[offHistory+8:])},
		Seq:       le.Uint64(b[offSeq:]),
		Promoted:  le.Uint64(b[offPromoted:]),
		Term:      le.Uint64(b[offTerm:]),
	}
	if v == 1 && sb.Promoted != 0 {
		return corrupt("reserved bytes %d..%d are not zero", offPromoted, offPromoted+7)
	}
	if v < 3 && sb.Term != 0 {
		return corrupt("reserved bytes %d..%d are not zero", offTerm, offTerm+7)
	}
	if v == 3 && sb.Term == 0 {
		// Written as version 2: one encoding per superblock.
		return corrupt("format version 3 with a failover term of 0")
	}
	if int(sb.Seq%2) != slot {
		return corrupt("sequence %d belongs in slot %d", sb.Seq, sb.Seq%2)
	}
	n := int(b[offResourceLen])
	if n == 0 || n > MaxResourceLen {
		return corrupt("resource name length %d, want 1 to %d", n, MaxResourceLen)
	}
	name := b[offResource : offResource+n]
	if !utf8.Valid(name) {
		return corrupt("resource name %q is not UTF-8", name)
	}
	if !allZero(b[offResource+n : offDataSize]) {
		return corrupt("bytes after the %d-byte resource name are not zero", n)
	}
	sb.Resource = string(name)
	l, err := newLayout(sb.DataSize, sb.Slots, sb.BlockSize)
	if err != nil || sb.BlockSize == 0 {
		return corrupt("geometry: data size %d, %d slots, block size %d", sb.DataSize, sb.Slots, sb.BlockSize)
	}
	if int(sb.NodeID) >= sb.Slots {
		return corrupt("node id %d outside its %d slots", sb.NodeID, sb.Slots)
	}
	areas := []struct {
		name string
		off  int
		want uint64
	}{
		{"activity log offset", offALOffset, alOffset},
		{"activity log length", offALLen, ActivityLogSize},
		{"bitmap offset", offBitmapOff, bitmapOffset},
		{"bitmap length", offBitmapLen, uint64(l.bitmapLen())},
		{"bitmap slot length", offSlotLen, uint64(l.slotBytes)},
	}
	for _, a := range areas {
		if got := le.Uint64(b[a.off:]); got != a.want {
			return corrupt("%s %d, the geometry gives %d", a.name, got, a.want)
		}
	}
	if !allZero(b[offReserved:offBitmapUUID]) {
		return corrupt("reserved bytes %d..%d are not zero", offReserved, offBitmapUUID-1)
	}
	uuidEnd := offBitmapUUID + 8*sb.Slots
	if !allZero(b[uuidEnd:offCRC]) {
		return corrupt("reserved bytes %d..%d are not zero", uuidEnd, offCRC-1)
	}
	sb.BitmapUUID = make([]uint64, sb.Slots)
	for i := range sb.BitmapUUID {
		sb.BitmapUUID[i] = le.Uint64(b[offBitmapUUID+8*i:])
	}
	return sb, l, nil
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
