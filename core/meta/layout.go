package meta

import (
	"fmt"
	"math"
	"math/bits"
	"unicode/utf8"
)

// Format constants. They are part of the on-disk format: changing any of
// them requires a new FormatVersion.
const (
	// FormatVersion is the superblock format version this package
	// writes when a superblock needs it (a failover term), version 2
	// otherwise. It reads it and OldestFormatVersion up to it: version 1
	// lacks the promotion time and version 2 the failover term (read as
	// 0, their bytes were reserved zero).
	FormatVersion = 3

	// OldestFormatVersion is the oldest superblock format version this
	// package reads.
	OldestFormatVersion = 1

	// PageSize is the alignment and size unit of every metadata area, and
	// the unit of WriteBitmapPages.
	PageSize = 4096

	// WordsPerPage is the number of bitmap words stored in one page.
	WordsPerPage = PageSize / 8

	// DefaultBlockSize is the bitmap granularity used when Params.BlockSize
	// (or the blockSize argument of InternalLayout and ExternalSize) is 0.
	DefaultBlockSize = 4096

	// MinBlockSize and MaxBlockSize bound the bitmap granularity, which must
	// also be a power of two.
	MinBlockSize = 512
	MaxBlockSize = 64 << 20

	// MaxResourceLen is the longest resource name, in bytes.
	MaxResourceLen = 64

	// MaxSlots bounds the number of bitmap slots; it equals the engine's
	// limit on the number of nodes of one resource.
	MaxSlots = 32

	// MaxDataSize bounds the usable data size (1 EiB), which keeps every
	// offset of the layout well inside int64.
	MaxDataSize = 1 << 60

	// ActivityLogSize is the size of the activity-log area: two
	// transaction slots (see ReadActivityLog).
	ActivityLogSize = 256 << 10
)

// Offsets of the areas inside the metadata area.
const (
	superblockAreaSize = 2 * PageSize
	alOffset           = superblockAreaSize
	bitmapOffset       = alOffset + ActivityLogSize
)

// Params describes the metadata to create.
type Params struct {
	// Resource is the resource name: 1 to MaxResourceLen bytes of UTF-8.
	Resource string
	// NodeID is this node's id; it must be below Slots.
	NodeID uint8
	// Slots is the number of bitmap slots, 1 to MaxSlots. Slot i holds the
	// bitmap towards the peer with node id i, so Slots must exceed the
	// largest node id of the resource.
	Slots int
	// DataSize is the usable data size in bytes, 1 to MaxDataSize. For
	// internal metadata use the dataSize InternalLayout returns.
	DataSize uint64
	// BlockSize is the bitmap granularity in bytes: a power of two from
	// MinBlockSize to MaxBlockSize, or 0 for DefaultBlockSize.
	BlockSize uint32
	// DiskState is the initial disk state. It is opaque to this package:
	// the engine's DiskState stored as a byte.
	DiskState uint8
}

// Validate reports, wrapping ErrInvalidParams, the first field of p outside
// its documented range.
func (p Params) Validate() error {
	_, err := p.layout()
	return err
}

func (p Params) layout() (layout, error) {
	if p.Resource == "" || len(p.Resource) > MaxResourceLen || !utf8.ValidString(p.Resource) {
		return layout{}, fmt.Errorf("meta: %w: resource name %q must be 1 to %d bytes of UTF-8",
			ErrInvalidParams, p.Resource, MaxResourceLen)
	}
	l, err := newLayout(p.DataSize, p.Slots, p.BlockSize)
	if err != nil {
		return layout{}, err
	}
	if int(p.NodeID) >= p.Slots {
		return layout{}, fmt.Errorf("meta: %w: node id %d needs more than %d bitmap slots",
			ErrInvalidParams, p.NodeID, p.Slots)
	}
	return l, nil
}

// layout is the geometry of one metadata area, derived from the data size,
// the slot count and the block size.
type layout struct {
	dataSize  uint64
	slots     int
	blockSize uint32
	bits      uint64 // bits per bitmap slot: one per block
	words     int    // uint64 words per bitmap slot
	slotBytes int64  // bytes per bitmap slot, a PageSize multiple
}

func checkGeometry(slots int, blockSize uint32) error {
	if slots < 1 || slots > MaxSlots {
		return fmt.Errorf("meta: %w: %d bitmap slots, want 1 to %d", ErrInvalidParams, slots, MaxSlots)
	}
	if blockSize < MinBlockSize || blockSize > MaxBlockSize || bits.OnesCount32(blockSize) != 1 {
		return fmt.Errorf("meta: %w: block size %d, want a power of two from %d to %d",
			ErrInvalidParams, blockSize, MinBlockSize, MaxBlockSize)
	}
	return nil
}

// newLayout validates its arguments (blockSize 0 meaning DefaultBlockSize)
// and computes the geometry.
func newLayout(dataSize uint64, slots int, blockSize uint32) (layout, error) {
	if blockSize == 0 {
		blockSize = DefaultBlockSize
	}
	if err := checkGeometry(slots, blockSize); err != nil {
		return layout{}, err
	}
	if dataSize == 0 || dataSize > MaxDataSize {
		return layout{}, fmt.Errorf("meta: %w: data size %d, want 1 to %d bytes",
			ErrInvalidParams, dataSize, uint64(MaxDataSize))
	}
	nbits := (dataSize + uint64(blockSize) - 1) / uint64(blockSize)
	words := (nbits + 63) / 64
	return layout{
		dataSize:  dataSize,
		slots:     slots,
		blockSize: blockSize,
		bits:      nbits,
		words:     int(words),
		slotBytes: roundUp(int64(words)*8, PageSize),
	}, nil
}

// size is the number of bytes of the whole metadata area.
func (l layout) size() int64 { return bitmapOffset + l.bitmapLen() }

func (l layout) bitmapLen() int64 { return int64(l.slots) * l.slotBytes }

// slotOffset is the offset of bitmap slot i from the start of the metadata.
func (l layout) slotOffset(i int) int64 { return bitmapOffset + int64(i)*l.slotBytes }

func (l layout) pagesPerSlot() int { return int(l.slotBytes / PageSize) }

func roundUp(n, to int64) int64 { return (n + to - 1) / to * to }

// InternalLayout computes where internal metadata lives on a backing device
// of deviceSize bytes: the metadata area of metaSize bytes starts at
// metaOffset, PageSize aligned, and ends at the device size rounded down to
// PageSize; the data area is [0, dataSize), the largest multiple of
// blockSize that fits before metaOffset. blockSize 0 means
// DefaultBlockSize.
//
// The result depends on slots and blockSize: metadata created with one
// pair is not found at the offset computed with another.
//
// It returns ErrInvalidParams for a negative size or an invalid slot count
// or block size, and ErrTooSmall, with the minimum size, when not even one
// block of data fits.
func InternalLayout(deviceSize int64, slots int, blockSize uint32) (dataSize uint64, metaOffset, metaSize int64, err error) {
	if blockSize == 0 {
		blockSize = DefaultBlockSize
	}
	if err := checkGeometry(slots, blockSize); err != nil {
		return 0, 0, 0, err
	}
	if deviceSize < 0 {
		return 0, 0, 0, fmt.Errorf("meta: %w: device size %d", ErrInvalidParams, deviceSize)
	}
	end := deviceSize / PageSize * PageSize
	bs := uint64(blockSize)
	// fits reports whether n blocks of data and their metadata fit; it is
	// monotone (true up to some n, false after), so binary search finds the
	// largest n.
	fits := func(n uint64) (layout, bool) {
		l, err := newLayout(n*bs, slots, blockSize)
		if err != nil {
			return layout{}, false
		}
		return l, int64(n*bs) <= end-l.size()
	}
	lo, hi := uint64(0), min(uint64(end)/bs, MaxDataSize/bs)
	for lo < hi {
		mid := lo + (hi-lo+1)/2
		if _, ok := fits(mid); ok {
			lo = mid
		} else {
			hi = mid - 1
		}
	}
	if lo == 0 {
		minimum, _ := newLayout(bs, slots, blockSize)
		return 0, 0, 0, fmt.Errorf("meta: %w: %d bytes cannot hold internal metadata for %d slots at block size %d; need at least %d bytes",
			ErrTooSmall, deviceSize, slots, blockSize, roundUp(int64(bs), PageSize)+minimum.size())
	}
	l, _ := fits(lo)
	return lo * bs, end - l.size(), l.size(), nil
}

// ExternalSize returns the number of bytes an external metadata file needs
// for dataSize bytes of data, slots bitmap slots and the given block size
// (0 meaning DefaultBlockSize). It returns 0 when the arguments are outside
// the ranges documented on Params; Params.Validate says which.
func ExternalSize(dataSize uint64, slots int, blockSize uint32) int64 {
	l, err := newLayout(dataSize, slots, blockSize)
	if err != nil {
		return 0
	}
	return l.size()
}

// checkOffset validates a metadata offset and that the area of size bytes
// starting there stays inside int64.
func checkOffset(off, size int64) error {
	if off < 0 || off%PageSize != 0 {
		return fmt.Errorf("meta: %w: metadata offset %d must be a non-negative multiple of %d",
			ErrInvalidParams, off, PageSize)
	}
	if off > math.MaxInt64-size {
		return fmt.Errorf("meta: %w: metadata of %d bytes at offset %d ends beyond the largest possible offset",
			ErrInvalidParams, size, off)
	}
	return nil
}
