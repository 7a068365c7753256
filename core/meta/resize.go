package meta

import (
	"bytes"
	"fmt"
)

// A resize record marks a metadata area that Store.Grow began to write
// and had not committed yet. It sits in superblock slot 1 of the new area
// until Grow writes the first superblock into slot 0. Internal metadata is
// found from the backing device's size, so after a crash in the middle of
// a resize the device's new end holds no superblock yet; the record says
// where the old, still authoritative metadata is: at the end of a device
// of OldDeviceSize bytes.
//
// Layout (one PageSize page, little-endian):
//
//	0    8  magic "GEORSIZE"
//	8    4  record version (1)
//	12   4  reserved, zero
//	16   8  old device size
//	24   8  old data size
//	32   8  new data size
//	40 ...  reserved, zero
//	4092 4  CRC32C of bytes 0..4091
type ResizeRecord struct {
	OldDeviceSize int64
	OldDataSize   uint64
	NewDataSize   uint64
}

var resizeMagic = [8]byte{'G', 'E', 'O', 'R', 'S', 'I', 'Z', 'E'}

const resizeRecordVersion = 1

func encodeResizeRecord(r ResizeRecord) []byte {
	b := make([]byte, PageSize)
	copy(b, resizeMagic[:])
	le.PutUint32(b[8:], resizeRecordVersion)
	le.PutUint64(b[16:], uint64(r.OldDeviceSize))
	le.PutUint64(b[24:], r.OldDataSize)
	le.PutUint64(b[32:], r.NewDataSize)
	le.PutUint32(b[offCRC:], checksum(b))
	return b
}

// ReadResizeRecord reads superblock slot 1 of the metadata area at off of
// dev and returns the resize record it holds; ok is false when it holds
// none (anything without the record's magic, or a record that fails its
// checksum: Grow syncs the record before it writes anything else, so a
// torn record means nothing was moved yet and the metadata is still where
// it was). Call it when Open finds no valid superblock where the device's
// size says internal metadata is.
func ReadResizeRecord(dev Device, off int64) (r ResizeRecord, ok bool, err error) {
	b := make([]byte, PageSize)
	if _, err := dev.ReadAt(b, off+PageSize); err != nil {
		return r, false, fmt.Errorf("meta: reading superblock slot 1 at offset %d for a resize record: %w", off+PageSize, err)
	}
	if !bytes.Equal(b[:8], resizeMagic[:]) || le.Uint32(b[offCRC:]) != checksum(b) || le.Uint32(b[8:]) != resizeRecordVersion {
		return r, false, nil
	}
	r = ResizeRecord{OldDeviceSize: int64(le.Uint64(b[16:])), OldDataSize: le.Uint64(b[24:]), NewDataSize: le.Uint64(b[32:])}
	if r.OldDeviceSize <= 0 || r.OldDataSize == 0 || r.NewDataSize <= r.OldDataSize {
		return r, false, fmt.Errorf("meta: %w: resize record at offset %d: old device %d bytes, data %d to %d bytes",
			ErrCorrupt, off+PageSize, r.OldDeviceSize, r.OldDataSize, r.NewDataSize)
	}
	return r, true, nil
}

// Grow moves the metadata to offset off of dev, for dataSize bytes of data
// (more than now), and makes the store use it from then on. words holds,
// per bitmap slot, the bitmap to write there (dataSize's number of bits; a
// slot not in words keeps its bits, read from the current area). The
// activity log and the superblock (with a new data size and the next
// sequence numbers) are copied; apply, if not nil, changes the copy as an
// UpdateSuperblock function would, so that the commit carries the state
// that goes with the grown bitmaps (their bitmap ids).
//
// The current area is not written at all, so a crash before the commit
// leaves it valid. Grow writes the new area in this order, syncing after
// each step:
//
//  1. superblock slot 0 zeroed, then slot 1 a resize record (rec): from here on,
//     the new area says where the old metadata is (ReadResizeRecord);
//  2. the activity log and every bitmap slot;
//  3. the commit: superblock slot 0, with the data size dataSize. Open at
//     off now finds the new metadata (slot 1 lacks the magic, a damaged
//     older slot);
//  4. superblock slot 1, with the next sequence number.
//
// A crash before step 3 is durable leaves the new area without a valid
// superblock but with the record: Open there fails, and ReadResizeRecord
// says where the old metadata is. The caller makes sure that the new area
// does not overlap the current one, which must stay intact until the
// commit. On an error the store keeps using the current area.
func (s *Store) Grow(dev Device, off int64, dataSize uint64, words map[int][]uint64, rec ResizeRecord, apply func(*Superblock)) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if dataSize <= s.lay.dataSize {
		return fmt.Errorf("meta: %w: data size %d does not grow the current %d bytes", ErrInvalidParams, dataSize, s.lay.dataSize)
	}
	l, err := newLayout(dataSize, s.lay.slots, s.lay.blockSize)
	if err != nil {
		return err
	}
	if err := checkOffset(off, l.size()); err != nil {
		return err
	}
	// Everything read from the current area first: nothing of it is
	// written, but the new area must be complete before the commit.
	seq, extents, err := s.readActivityLog()
	if err != nil {
		return fmt.Errorf("meta: reading the activity log to move it: %w", err)
	}
	slots := make([][]uint64, l.slots)
	for i := range l.slots {
		w, given := words[i]
		if !given {
			if w, err = s.readSlot(i); err != nil {
				return err
			}
		}
		if len(w) > l.words {
			return fmt.Errorf("meta: %w: slot %d: %d words, the grown bitmap has %d", ErrBitmapShape, i, len(w), l.words)
		}
		grown := make([]uint64, l.words)
		copy(grown, w)
		if tail := l.bits % 64; tail != 0 && grown[l.words-1]>>tail != 0 {
			return fmt.Errorf("meta: %w: slot %d has bits set beyond block %d", ErrBitmapShape, i, l.bits)
		}
		slots[i] = grown
	}
	write := func(what string, b []byte, at int64) error {
		if _, err := dev.WriteAt(b, at); err != nil {
			return fmt.Errorf("meta: resize: writing %s at offset %d: %w", what, at, err)
		}
		return nil
	}
	sync := func(after string) error {
		if err := dev.Sync(); err != nil {
			return fmt.Errorf("meta: resize: sync after %s: %w", after, err)
		}
		return nil
	}
	// 1. The record, after slot 0 is durably zero: stale bytes there
	// (the device held georepl metadata before) never read as a
	// superblock next to it.
	if err := write("superblock slot 0 (zeroes)", make([]byte, PageSize), off); err != nil {
		return err
	}
	if err := sync("zeroing superblock slot 0"); err != nil {
		return err
	}
	if err := write("the resize record", encodeResizeRecord(rec), off+PageSize); err != nil {
		return err
	}
	if err := sync("the resize record"); err != nil {
		return err
	}
	// 2. Activity log and bitmaps. The log keeps its sequence number, in
	// its slot; the other slot is zeroed, so that no stale bytes of the
	// new area read as a newer transaction.
	al := make([]byte, ActivityLogSize)
	if seq > 0 {
		copy(al[int64(seq%2)*alSlotSize:], encodeALTransaction(seq, extents))
	}
	if err := write("the activity log", al, off+alOffset); err != nil {
		return err
	}
	for i, w := range slots {
		buf := make([]byte, l.slotBytes)
		for j, v := range w {
			le.PutUint64(buf[8*j:], v)
		}
		if err := write(fmt.Sprintf("bitmap slot %d", i), buf, off+l.slotOffset(i)); err != nil {
			return err
		}
	}
	if err := sync("the activity log and bitmaps"); err != nil {
		return err
	}
	// 3. The commit, in slot 0: an even sequence number above the
	// current one.
	next := s.sb.clone()
	if apply != nil {
		apply(&next)
		if err := sameIdentity(s.sb, next); err != nil {
			return err
		}
	}
	next.DataSize = dataSize
	next.Seq = s.sb.Seq + 1
	if next.Seq%2 != 0 {
		next.Seq++
	}
	if err := write("superblock slot 0 (the commit)", encodeSuperblock(next, l), off); err != nil {
		return err
	}
	if err := sync("the commit"); err != nil {
		return err
	}
	s.dev, s.off, s.lay, s.sb, s.alSeq, s.alKnown = dev, off, l, next, seq, true
	s.damaged = "superblock slot 1: the resize record, until the next update"
	// 4. Slot 1: both slots valid again. A failure here leaves the
	// committed slot 0, and the next update rewrites slot 1.
	next.Seq++
	if err := write("superblock slot 1", encodeSuperblock(next, l), off+PageSize); err != nil {
		return err
	}
	if err := sync("superblock slot 1"); err != nil {
		return err
	}
	s.sb, s.damaged = next, ""
	return nil
}

// readSlot reads bitmap slot i from the current area. The caller holds
// s.mu.
func (s *Store) readSlot(i int) ([]uint64, error) {
	buf := make([]byte, s.lay.words*8)
	at := s.off + s.lay.slotOffset(i)
	if _, err := s.dev.ReadAt(buf, at); err != nil {
		return nil, fmt.Errorf("meta: reading bitmap slot %d at offset %d: %w", i, at, err)
	}
	w := make([]uint64, s.lay.words)
	for j := range w {
		w[j] = le.Uint64(buf[8*j:])
	}
	return w, nil
}
