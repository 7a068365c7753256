package meta

import (
	"bytes"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"slices"
)

// Activity-log constants. They are part of the on-disk format.
const (
	// ActivityLogExtentSize is the size of one activity-log extent: extent
	// x covers the data bytes [x*ActivityLogExtentSize,
	// (x+1)*ActivityLogExtentSize).
	ActivityLogExtentSize = 4 << 20

	// MaxActivityLogExtents is the most extents one activity-log
	// transaction holds: what fits in one of its two slots.
	MaxActivityLogExtents = (alSlotSize - alHeaderSize - 4) / 8
)

// The activity-log area holds two slots; a transaction with sequence
// number n lives in slot n%2.
const (
	alSlotSize   = ActivityLogSize / 2
	alHeaderSize = 24

	alOffMagic      = 0
	alOffSeq        = 8
	alOffExtentSize = 16
	alOffCount      = 20
	alOffExtents    = alHeaderSize
)

// alMagic opens every activity-log transaction.
var alMagic = [8]byte{'G', 'E', 'O', 'R', 'A', 'L', 'O', 'G'}

// ActivityLogExtents returns the number of activity-log extents of the
// data area: ceil(DataSize / ActivityLogExtentSize).
func (s *Store) ActivityLogExtents() uint64 {
	return (s.lay.dataSize + ActivityLogExtentSize - 1) / ActivityLogExtentSize
}

// encodeALTransaction returns the bytes of a transaction with sequence
// number seq holding extents, which must be sorted and without duplicates.
func encodeALTransaction(seq uint64, extents []uint64) []byte {
	b := make([]byte, alHeaderSize+8*len(extents)+4)
	copy(b[alOffMagic:], alMagic[:])
	le.PutUint64(b[alOffSeq:], seq)
	le.PutUint32(b[alOffExtentSize:], ActivityLogExtentSize)
	le.PutUint32(b[alOffCount:], uint32(len(extents)))
	for i, x := range extents {
		le.PutUint64(b[alOffExtents+8*i:], x)
	}
	end := len(b) - 4
	le.PutUint32(b[end:], crc32.Checksum(b[:end], castagnoli))
	return b
}

// errNoTransaction marks a slot without the activity-log magic: never
// written since Create. It never leaves the package.
var errNoTransaction = errors.New("no transaction")

// decodeALTransaction decodes slot number slot (0 or 1), whose alSlotSize
// bytes are b, for a data area of nExtents extents. Errors are
// errNoTransaction or a *slotError of kind ErrCorrupt.
func decodeALTransaction(b []byte, slot int, nExtents uint64) (seq uint64, extents []uint64, err error) {
	if !bytes.Equal(b[alOffMagic:alOffMagic+len(alMagic)], alMagic[:]) {
		return 0, nil, errNoTransaction
	}
	n := le.Uint32(b[alOffCount:])
	if n > MaxActivityLogExtents {
		return 0, nil, slotErrorf(ErrCorrupt, "%d extents, at most %d fit", n, MaxActivityLogExtents)
	}
	end := alHeaderSize + 8*int(n)
	stored, computed := le.Uint32(b[end:]), crc32.Checksum(b[:end], castagnoli)
	if stored != computed {
		return 0, nil, slotErrorf(ErrCorrupt, "checksum mismatch (stored %08x, computed %08x): a torn or damaged transaction",
			stored, computed)
	}
	seq = le.Uint64(b[alOffSeq:])
	if seq == 0 || int(seq%2) != slot {
		return 0, nil, slotErrorf(ErrCorrupt, "sequence %d does not belong in slot %d", seq, slot)
	}
	if sz := le.Uint32(b[alOffExtentSize:]); sz != ActivityLogExtentSize {
		return 0, nil, slotErrorf(ErrCorrupt, "extent size %d, this build uses %d", sz, ActivityLogExtentSize)
	}
	extents = make([]uint64, n)
	for i := range extents {
		extents[i] = le.Uint64(b[alOffExtents+8*i:])
		if extents[i] >= nExtents {
			return 0, nil, slotErrorf(ErrCorrupt, "extent %d beyond the %d extents of the data", extents[i], nExtents)
		}
		if i > 0 && extents[i] <= extents[i-1] {
			return 0, nil, slotErrorf(ErrCorrupt, "extents not in increasing order (%d after %d)", extents[i], extents[i-1])
		}
	}
	return seq, extents, nil
}

// ReadActivityLog returns the active extents of the newest valid
// activity-log transaction, in increasing order; none (an empty log) when
// no transaction was ever written. A non-empty log at attach means the
// node stopped without retiring its extents: an unclean shutdown.
//
// A slot whose transaction is torn is ignored in favour of the other one.
// It returns ErrCorrupt when both slots hold damaged transactions, and
// ErrTruncated when the device ends inside the activity log.
func (s *Store) ReadActivityLog() ([]uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	seq, extents, err := s.readActivityLog()
	if err != nil {
		return nil, err
	}
	s.alSeq, s.alKnown = seq, true
	return extents, nil
}

// readActivityLog reads both slots and picks the newest valid transaction;
// seq is 0 for an empty log. The caller holds s.mu.
func (s *Store) readActivityLog() (seq uint64, extents []uint64, err error) {
	at := s.off + alOffset
	buf := make([]byte, ActivityLogSize)
	if _, err := s.dev.ReadAt(buf, at); err != nil {
		if errors.Is(err, io.EOF) {
			return 0, nil, fmt.Errorf("meta: %w: the device ends inside the activity log at offset %d", ErrTruncated, at)
		}
		return 0, nil, fmt.Errorf("meta: reading the activity log at offset %d: %w", at, err)
	}
	var (
		seqs    [2]uint64
		exts    [2][]uint64
		errs    [2]error
		damaged int
	)
	for i := range 2 {
		seqs[i], exts[i], errs[i] = decodeALTransaction(buf[i*alSlotSize:(i+1)*alSlotSize], i, s.ActivityLogExtents())
		if errs[i] != nil && !errors.Is(errs[i], errNoTransaction) {
			damaged++
		}
	}
	if damaged == 2 {
		return 0, nil, fmt.Errorf("meta: %w: both activity-log slots are damaged: slot 0 at offset %d: %v; slot 1 at offset %d: %v",
			ErrCorrupt, at, errs[0], at+alSlotSize, errs[1])
	}
	best := -1
	for i := range 2 {
		if errs[i] == nil && (best < 0 || seqs[i] > seqs[best]) {
			best = i
		}
	}
	if best < 0 {
		// Never written, or only a first transaction that was torn: the
		// write it was for never happened.
		return 0, []uint64{}, nil
	}
	return seqs[best], exts[best], nil
}

// WriteActivityLog replaces the activity log by one holding extents (in
// any order, duplicates allowed), and syncs: once it returns nil the new
// log is durable. It writes the next sequence number into the slot that
// does not hold the current transaction, so a torn write leaves the
// previous log readable: the update is atomic.
//
// It returns ErrInvalidParams, writing nothing, for more than
// MaxActivityLogExtents distinct extents or an extent beyond
// ActivityLogExtents. After an I/O error the log is the old or the new
// one; the next write goes to the same slot again.
func (s *Store) WriteActivityLog(extents []uint64) error {
	extents = slices.Clone(extents)
	slices.Sort(extents)
	extents = slices.Compact(extents)
	if len(extents) > MaxActivityLogExtents {
		return fmt.Errorf("meta: %w: %d activity-log extents, at most %d fit", ErrInvalidParams, len(extents), MaxActivityLogExtents)
	}
	if n := len(extents); n > 0 && extents[n-1] >= s.ActivityLogExtents() {
		return fmt.Errorf("meta: %w: activity-log extent %d beyond the %d extents of the data",
			ErrInvalidParams, extents[n-1], s.ActivityLogExtents())
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.alKnown {
		seq, _, err := s.readActivityLog()
		if err != nil && !errors.Is(err, ErrCorrupt) {
			return err
		}
		// Both slots damaged: seq 0 puts the first transaction in slot 1,
		// and the valid one wins from then on.
		s.alSeq, s.alKnown = seq, true
	}
	seq := s.alSeq + 1
	at := s.off + alOffset + int64(seq%2)*alSlotSize
	if _, err := s.dev.WriteAt(encodeALTransaction(seq, extents), at); err != nil {
		return fmt.Errorf("meta: writing activity-log transaction %d at offset %d: %w", seq, at, err)
	}
	if err := s.dev.Sync(); err != nil {
		return fmt.Errorf("meta: sync after writing activity-log transaction %d: %w", seq, err)
	}
	s.alSeq = seq
	return nil
}
