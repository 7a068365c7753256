package meta

import (
	"errors"
	"fmt"
	"io"
	"math/bits"
	"slices"
	"sync"
)

// Device is where metadata lives: the backing device itself (internal
// metadata) or a separate file (external metadata). *os.File satisfies it.
// Sync must make every completed WriteAt durable. Metadata I/O is small
// and not aligned in memory: the device must accept any buffer (do not
// pass a file opened with O_DIRECT).
type Device interface {
	io.ReaderAt
	io.WriterAt
	Sync() error
}

// Sizer is an optional ability of a Device, found by type assertion: Size
// returns the device's length in bytes. Open uses it to detect truncation
// without reading past the end, which devices such as bounded regions
// refuse with an error of their own; without it, Open relies on reads past
// the end returning io.EOF, as *os.File does.
type Sizer interface {
	Size() int64
}

// Store is the opened metadata of one node of one resource. Its methods are
// safe for concurrent use; they are serialised by one mutex. The Store
// does not own the Device: closing it is the caller's business, after the
// last call.
type Store struct {
	dev Device
	off int64
	lay layout

	mu sync.Mutex
	sb Superblock
	// damaged describes a superblock slot that Open found invalid while
	// the other one was usable, for Summary and Dump; empty otherwise. The
	// next UpdateSuperblock overwrites that slot.
	damaged string
	// alSeq is the sequence number of the current activity-log
	// transaction (0: none), valid once alKnown.
	alSeq   uint64
	alKnown bool
}

// zeroChunk bounds the buffer Create writes zeroes from.
const zeroChunk = 1 << 20

// Create writes fresh metadata for p at offset off of dev and returns it
// opened: a superblock with all generation ids zero ("just created") and
// Seq 1, every bitmap slot clear, the activity-log area zeroed. off must be
// a multiple of PageSize (InternalLayout returns one; use 0 for an
// external file).
//
// Unless force is true, Create refuses, with ErrExists naming what it
// found, to overwrite an area that already holds georepl metadata, valid or
// damaged. Create first invalidates both superblock slots and syncs, then
// writes the areas, then the superblock: if it is interrupted, Open reports
// ErrNoMetadata (or ErrCorrupt), never an old superblock above cleared
// bitmaps.
//
// Invalid parameters give ErrInvalidParams; I/O errors are returned
// wrapped.
func Create(dev Device, off int64, p Params, force bool) (*Store, error) {
	l, err := p.layout()
	if err != nil {
		return nil, err
	}
	if err := checkOffset(off, l.size()); err != nil {
		return nil, err
	}
	old, err := Open(dev, off)
	switch {
	case err == nil && !force:
		sb := old.Superblock()
		return nil, fmt.Errorf("meta: %w at offset %d: resource %q, node %d; force overwriting it only if that data is expendable",
			ErrExists, off, sb.Resource, sb.NodeID)
	case err == nil || errors.Is(err, ErrNoMetadata):
	case errors.Is(err, ErrCorrupt) || errors.Is(err, ErrVersion) || errors.Is(err, ErrTruncated):
		if !force {
			return nil, fmt.Errorf("meta: %w at offset %d, but damaged or unreadable (%w); force overwriting it only if that data is expendable",
				ErrExists, off, err)
		}
	default:
		return nil, err
	}

	if err := writeZeroes(dev, off, superblockAreaSize); err != nil {
		return nil, fmt.Errorf("meta: invalidating superblocks at offset %d: %w", off, err)
	}
	if err := dev.Sync(); err != nil {
		return nil, fmt.Errorf("meta: sync after invalidating superblocks: %w", err)
	}
	if err := writeZeroes(dev, off+alOffset, l.size()-alOffset); err != nil {
		return nil, fmt.Errorf("meta: clearing activity log and bitmaps at offset %d: %w", off+alOffset, err)
	}
	if err := dev.Sync(); err != nil {
		return nil, fmt.Errorf("meta: sync after clearing bitmaps: %w", err)
	}
	sb := Superblock{
		Resource:   p.Resource,
		NodeID:     p.NodeID,
		Slots:      l.slots,
		DataSize:   l.dataSize,
		BlockSize:  l.blockSize,
		DiskState:  p.DiskState,
		BitmapUUID: make([]uint64, l.slots),
	}
	// Both slots get the same content, so that either alone is enough.
	for seq := range uint64(2) {
		sb.Seq = seq
		if _, err := dev.WriteAt(encodeSuperblock(sb, l), off+int64(seq)*PageSize); err != nil {
			return nil, fmt.Errorf("meta: writing superblock slot %d at offset %d: %w", seq, off+int64(seq)*PageSize, err)
		}
	}
	if err := dev.Sync(); err != nil {
		return nil, fmt.Errorf("meta: sync after writing superblocks: %w", err)
	}
	return &Store{dev: dev, off: off, lay: l, sb: sb, alKnown: true}, nil
}

func writeZeroes(dev Device, off, n int64) error {
	zero := make([]byte, min(n, zeroChunk))
	for n > 0 {
		chunk := zero[:min(n, int64(len(zero)))]
		if _, err := dev.WriteAt(chunk, off); err != nil {
			return err
		}
		off += int64(len(chunk))
		n -= int64(len(chunk))
	}
	return nil
}

// Open reads and verifies the metadata at offset off of dev. Of the two
// superblock slots it takes the valid one with the higher sequence number.
//
// Errors: ErrNoMetadata when neither slot carries the magic; ErrCorrupt
// when neither slot is valid (the message says why, for each slot);
// ErrVersion when a slot with a valid checksum has another format version;
// ErrTruncated when dev ends before the metadata does; ErrInvalidParams for
// a bad offset. Open allocates only the two superblock slots, whatever the
// superblock claims. Call Store.Check next to verify the metadata belongs
// to the configured resource.
func Open(dev Device, off int64) (*Store, error) {
	if err := checkOffset(off, superblockAreaSize); err != nil {
		return nil, err
	}
	devSize := int64(-1) // unknown
	if sz, ok := dev.(Sizer); ok {
		devSize = sz.Size()
	}
	buf := make([]byte, superblockAreaSize)
	readable := buf
	if devSize >= 0 {
		readable = buf[:min(max(devSize-off, 0), superblockAreaSize)]
	}
	n := 0
	if len(readable) > 0 {
		var err error
		n, err = dev.ReadAt(readable, off)
		if err != nil && !errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("meta: reading superblocks at offset %d: %w", off, err)
		}
	}
	clear(buf[n:]) // ReadAt may have used the rest as scratch space
	var (
		sbs   [2]Superblock
		lays  [2]layout
		errs  [2]error
		empty = 0
	)
	for i := range 2 {
		sbs[i], lays[i], errs[i] = decodeSuperblock(buf[i*PageSize:(i+1)*PageSize], i)
		if errors.Is(errs[i], errNoMagic) {
			empty++
		}
	}
	slotErr := func(i int) string {
		return fmt.Sprintf("slot %d at offset %d: %v", i, off+int64(i)*PageSize, errs[i])
	}
	switch {
	case empty == 2:
		return nil, fmt.Errorf("meta: %w at offset %d — run `georepl create-md` to initialise it "+
			"(if this device holds georepl data, check the metadata location, slot count and block size)",
			ErrNoMetadata, off)
	case n < len(buf):
		return nil, fmt.Errorf("meta: %w: the device ends at byte %d, inside the superblocks at offset %d",
			ErrTruncated, off+int64(n), off)
	}
	for i := range 2 {
		if errors.Is(errs[i], ErrVersion) {
			return nil, fmt.Errorf("meta: %w: superblock %s; upgrade georepl to a release that reads it",
				ErrVersion, slotErr(i))
		}
	}
	best := -1
	for i := range 2 {
		if errs[i] == nil && (best < 0 || sbs[i].Seq > sbs[best].Seq) {
			best = i
		}
	}
	if best < 0 {
		return nil, fmt.Errorf("meta: %w: both superblock slots are invalid: %s; %s",
			ErrCorrupt, slotErr(0), slotErr(1))
	}
	l := lays[best]
	if err := checkOffset(off, l.size()); err != nil {
		return nil, fmt.Errorf("meta: %w: %w", ErrTruncated, err)
	}
	end := off + l.size()
	truncated := devSize >= 0 && end > devSize
	if devSize < 0 {
		if _, err := dev.ReadAt(make([]byte, 1), end-1); errors.Is(err, io.EOF) {
			truncated = true
		} else if err != nil {
			return nil, fmt.Errorf("meta: reading the last metadata byte at %d: %w", end-1, err)
		}
	}
	if truncated {
		return nil, fmt.Errorf("meta: %w: the metadata at offset %d is %d bytes long, ending at byte %d, but the device is shorter",
			ErrTruncated, off, l.size(), end)
	}
	s := &Store{dev: dev, off: off, lay: l, sb: sbs[best]}
	if other := 1 - best; errs[other] != nil {
		s.damaged = "superblock " + slotErr(other)
	}
	return s, nil
}

// Check verifies that the metadata belongs to resource and node nodeID and
// describes dataSize bytes of data at bitmap granularity blockSize (0
// meaning DefaultBlockSize). Every mismatch is listed, with the configured
// and the stored value, in an error wrapping ErrForeign.
func (s *Store) Check(resource string, nodeID uint8, dataSize uint64, blockSize uint32) error {
	if blockSize == 0 {
		blockSize = DefaultBlockSize
	}
	s.mu.Lock()
	sb := s.sb
	s.mu.Unlock()
	var diffs []string
	if sb.Resource != resource {
		diffs = append(diffs, fmt.Sprintf("resource: configured %q, metadata has %q", resource, sb.Resource))
	}
	if sb.NodeID != nodeID {
		diffs = append(diffs, fmt.Sprintf("node id: configured %d, metadata has %d", nodeID, sb.NodeID))
	}
	if sb.DataSize != dataSize {
		diffs = append(diffs, fmt.Sprintf("data size: configured %d, metadata has %d", dataSize, sb.DataSize))
	}
	if sb.BlockSize != blockSize {
		diffs = append(diffs, fmt.Sprintf("block size: configured %d, metadata has %d", blockSize, sb.BlockSize))
	}
	if len(diffs) == 0 {
		return nil
	}
	msg := diffs[0]
	for _, d := range diffs[1:] {
		msg += "; " + d
	}
	return fmt.Errorf("meta: %w at offset %d: %s", ErrForeign, s.off, msg)
}

// Superblock returns a copy of the current superblock.
func (s *Store) Superblock() Superblock {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sb.clone()
}

// UpdateSuperblock applies fn to a copy of the superblock and writes the
// result, with the next sequence number, into the slot that does not hold
// the current superblock, then syncs. A crash at any point leaves either
// the old or the new superblock readable: the update is atomic and, once
// UpdateSuperblock returns nil, durable.
//
// fn may change DiskState, Primary, Current, History and the elements of
// BitmapUUID; a change to any other field gives ErrImmutable and nothing is
// written. Seq is maintained by the store. On an I/O error the in-memory
// superblock stays the old one, and the update may or may not have
// reached the disk.
func (s *Store) UpdateSuperblock(fn func(*Superblock)) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	next := s.sb.clone()
	fn(&next)
	if err := sameIdentity(s.sb, next); err != nil {
		return err
	}
	next.Seq = s.sb.Seq + 1
	at := s.off + int64(next.Seq%2)*PageSize
	if _, err := s.dev.WriteAt(encodeSuperblock(next, s.lay), at); err != nil {
		return fmt.Errorf("meta: writing superblock seq %d at offset %d: %w", next.Seq, at, err)
	}
	if err := s.dev.Sync(); err != nil {
		return fmt.Errorf("meta: sync after writing superblock seq %d: %w", next.Seq, err)
	}
	s.sb = next
	s.damaged = ""
	return nil
}

func sameIdentity(old, next Superblock) error {
	var field string
	switch {
	case next.Resource != old.Resource:
		field = "Resource"
	case next.NodeID != old.NodeID:
		field = "NodeID"
	case next.Slots != old.Slots:
		field = "Slots"
	case next.DataSize != old.DataSize:
		field = "DataSize"
	case next.BlockSize != old.BlockSize:
		field = "BlockSize"
	case len(next.BitmapUUID) != len(old.BitmapUUID):
		field = "BitmapUUID length"
	default:
		return nil
	}
	return fmt.Errorf("meta: %w: %s", ErrImmutable, field)
}

// BitmapBits returns the number of bits of each bitmap slot: one per
// BlockSize block of data, the last block possibly partial.
func (s *Store) BitmapBits() uint64 { return s.lay.bits }

// BitmapWords returns the number of uint64 words of each bitmap slot, the
// length ReadBitmap returns and WriteBitmap expects. Bit i of the bitmap is
// bit i%64 (least significant first) of word i/64; bit set means the block
// is out of sync with the slot's peer.
func (s *Store) BitmapWords() int { return s.lay.words }

// checkSlot admits the slots of peers: 0 <= slot < Slots, not NodeID.
func (s *Store) checkSlot(slot int) error {
	if slot < 0 || slot >= s.lay.slots {
		return fmt.Errorf("meta: %w: slot %d, the metadata has slots 0 to %d", ErrSlot, slot, s.lay.slots-1)
	}
	if slot == int(s.sb.NodeID) {
		return fmt.Errorf("meta: %w: slot %d is this node's own and stays unused", ErrSlot, slot)
	}
	return nil
}

// ReadBitmap returns the bitmap towards peer node slot, BitmapWords long.
// It returns ErrSlot for slot out of range or the node's own, ErrTruncated
// when the device ends inside the slot, and ErrCorrupt when a bit beyond
// BitmapBits is set.
func (s *Store) ReadBitmap(slot int) ([]uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.checkSlot(slot); err != nil {
		return nil, err
	}
	at := s.off + s.lay.slotOffset(slot)
	buf := make([]byte, s.lay.words*8)
	if _, err := s.dev.ReadAt(buf, at); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("meta: %w: the device ends inside bitmap slot %d at offset %d", ErrTruncated, slot, at)
		}
		return nil, fmt.Errorf("meta: reading bitmap slot %d at offset %d: %w", slot, at, err)
	}
	words := make([]uint64, s.lay.words)
	for i := range words {
		words[i] = le.Uint64(buf[8*i:])
	}
	if extra := words[len(words)-1] & s.padMask(); extra != 0 {
		return nil, fmt.Errorf("meta: %w: bitmap slot %d at offset %d has bits set beyond its %d blocks (last word %#016x)",
			ErrCorrupt, slot, at, s.lay.bits, words[len(words)-1])
	}
	return words, nil
}

// padMask selects the bits of the last word that lie beyond BitmapBits.
func (s *Store) padMask() uint64 {
	if r := s.lay.bits % 64; r != 0 {
		return ^uint64(0) << r
	}
	return 0
}

func (s *Store) checkWords(words []uint64) error {
	if len(words) != s.lay.words {
		return fmt.Errorf("meta: %w: %d words, want %d", ErrBitmapShape, len(words), s.lay.words)
	}
	if words[len(words)-1]&s.padMask() != 0 {
		return fmt.Errorf("meta: %w: bits set beyond bit %d", ErrBitmapShape, s.lay.bits)
	}
	return nil
}

// WriteBitmap writes the whole bitmap towards peer node slot and syncs.
// words must be BitmapWords long with no bit set beyond BitmapBits
// (ErrBitmapShape otherwise). The write is not atomic: after a crash some
// pages may be old and some new, which is why the engine sets bits on disk
// before the blocks change and clears them only after they are in sync.
func (s *Store) WriteBitmap(slot int, words []uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	pages := make([]int, s.lay.pagesPerSlot())
	for i := range pages {
		pages[i] = i
	}
	return s.writePages(slot, words, pages)
}

// WriteBitmapPages writes only the given pages of the bitmap towards peer
// node slot, then syncs. Page p holds words [p*WordsPerPage,
// (p+1)*WordsPerPage); words is the whole bitmap, as for WriteBitmap. pages
// may be unsorted and hold duplicates; adjacent pages are written with one
// call. With no pages it writes nothing and does not sync. A page index out
// of range gives ErrBitmapShape and writes nothing.
func (s *Store) WriteBitmapPages(slot int, words []uint64, pages []int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	pages = slices.Clone(pages)
	slices.Sort(pages)
	return s.writePages(slot, words, slices.Compact(pages))
}

// writePages writes pages, sorted and without duplicates, of slot from
// words and syncs. The caller holds s.mu.
func (s *Store) writePages(slot int, words []uint64, pages []int) error {
	if err := s.checkSlot(slot); err != nil {
		return err
	}
	if err := s.checkWords(words); err != nil {
		return err
	}
	if len(pages) == 0 {
		return nil
	}
	total := s.lay.pagesPerSlot()
	for _, p := range []int{pages[0], pages[len(pages)-1]} { // sorted: the extremes suffice
		if p < 0 || p >= total {
			return fmt.Errorf("meta: %w: page index %d, slot %d has pages 0 to %d",
				ErrBitmapShape, p, slot, total-1)
		}
	}
	base := s.off + s.lay.slotOffset(slot)
	for len(pages) > 0 {
		run := 1
		for run < len(pages) && pages[run] == pages[0]+run {
			run++
		}
		buf := make([]byte, run*PageSize)
		for i := range run * WordsPerPage {
			if w := pages[0]*WordsPerPage + i; w < len(words) {
				le.PutUint64(buf[8*i:], words[w])
			}
		}
		at := base + int64(pages[0])*PageSize
		if _, err := s.dev.WriteAt(buf, at); err != nil {
			return fmt.Errorf("meta: writing bitmap slot %d pages %d..%d at offset %d: %w",
				slot, pages[0], pages[0]+run-1, at, err)
		}
		pages = pages[run:]
	}
	if err := s.dev.Sync(); err != nil {
		return fmt.Errorf("meta: sync after writing bitmap slot %d: %w", slot, err)
	}
	return nil
}

// onesCount returns the number of set bits of words.
func onesCount(words []uint64) uint64 {
	var n uint64
	for _, w := range words {
		n += uint64(bits.OnesCount64(w))
	}
	return n
}
