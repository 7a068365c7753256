package meta

import (
	"bytes"
	"errors"
	"slices"
	"testing"
)

// TestGrowCrashAtEveryWrite grows internal metadata from the end of a
// device of d0 bytes to the end of d1 bytes and crashes at every write of
// Grow in turn (the write torn in half, nothing after it). After each
// crash, what an attach finds is either the new metadata, complete, or the
// old one, found through the resize record or (when the crash came before
// the record) at the old end once the device has its old size again; and
// the data area is untouched either way.
func TestGrowCrashAtEveryWrite(t *testing.T) {
	const d0, d1 = 2<<20 + 5000, 24<<20 + 300
	p := Params{Resource: "r0", NodeID: 1, Slots: 3, BlockSize: 512, DiskState: 6}
	old0, off0, _, err := InternalLayout(d0, p.Slots, p.BlockSize)
	if err != nil {
		t.Fatal(err)
	}
	new1, off1, _, err := InternalLayout(d1, p.Slots, p.BlockSize)
	if err != nil {
		t.Fatal(err)
	}
	p.DataSize = old0
	base := &memDevice{data: make([]byte, d0)}
	for i := range base.data[:old0] {
		base.data[i] = byte(i*7 + i>>9)
	}
	st := mustCreate(t, base, off0, p)
	mustUpdate(t, st, func(sb *Superblock) { sb.Current, sb.BitmapUUID[0], sb.BitmapUUID[2] = 0xc0de, 0xc0de, 0xbeef })
	oldWords := make([]uint64, st.BitmapWords())
	oldWords[0], oldWords[len(oldWords)-1] = 0xf0, 1<<((old0/512-1)%64)
	if err := st.WriteBitmap(2, oldWords); err != nil {
		t.Fatal(err)
	}
	slot0 := make([]uint64, st.BitmapWords())
	slot0[3] = 0xff
	if err := st.WriteBitmap(0, slot0); err != nil {
		t.Fatal(err)
	}
	if err := st.WriteActivityLog([]uint64{0}); err != nil {
		t.Fatal(err)
	}
	// The operator grew the device: stale bytes beyond the old end.
	base.data = append(base.data, bytes.Repeat([]byte{'g'}, d1-d0)...)
	dataBefore := slices.Clone(base.data[:old0])

	// The engine's grown bitmap for slot 2: the old marks and the new
	// space marked; slot 0 is copied from the old area.
	newBits := new1 / 512
	grown := make([]uint64, (newBits+63)/64)
	copy(grown, oldWords)
	for b := old0 / 512; b < newBits; b++ {
		grown[b/64] |= 1 << (b % 64)
	}
	rec := ResizeRecord{OldDeviceSize: d0, OldDataSize: old0, NewDataSize: new1}

	// An uninterrupted run first, to count the writes.
	full := base.snapshot()
	fs := mustOpen(t, full, off0)
	if err := fs.Grow(full, off1, new1, map[int][]uint64{2: grown}, rec, func(sb *Superblock) { sb.BitmapUUID[1] = 0xc0de }); err != nil {
		t.Fatalf("Grow: %v", err)
	}
	writes := full.writes
	if sb := fs.Superblock(); sb.DataSize != new1 || sb.Current != 0xc0de {
		t.Fatalf("grown store: %+v", sb)
	}
	if err := fs.UpdateSuperblock(func(sb *Superblock) { sb.DiskState = 5 }); err != nil {
		t.Fatalf("update after Grow: %v", err)
	}

	sawOld, sawNew := false, false
	for k := 0; k <= writes; k++ {
		dev := base.snapshot()
		s := mustOpen(t, dev, off0)
		n := 0
		dev.tear = func(_ int64, size int) int {
			n++
			switch {
			case n-1 < k:
				return size
			case n-1 == k:
				return size / 2
			}
			return 0
		}
		err := s.Grow(dev, off1, new1, map[int][]uint64{2: grown}, rec, func(sb *Superblock) { sb.BitmapUUID[1] = 0xc0de })
		if k < writes && !errors.Is(err, errTorn) {
			t.Fatalf("crash at write %d: Grow returned %v", k, err)
		}
		dev.tear = nil
		if !bytes.Equal(dev.data[:old0], dataBefore) {
			t.Fatalf("crash at write %d: the old data area changed", k)
		}
		// The restart: internal metadata is where the device's size says.
		re, err := Open(dev, off1)
		if err == nil {
			sawNew = true
			if sb := re.Superblock(); sb.DataSize != new1 || sb.Current != 0xc0de || sb.BitmapUUID[2] != 0xbeef || sb.BitmapUUID[1] != 0xc0de {
				t.Fatalf("crash at write %d: new superblock %+v", k, sb)
			}
			checkSlot(t, re, 2, grown)
			checkSlot(t, re, 0, append(slices.Clone(slot0), make([]uint64, len(grown)-len(slot0))...))
			if ext, err := re.ReadActivityLog(); err != nil || !slices.Equal(ext, []uint64{0}) {
				t.Fatalf("crash at write %d: activity log %v, %v", k, ext, err)
			}
			continue
		}
		r, ok, rerr := ReadResizeRecord(dev, off1)
		if rerr != nil {
			t.Fatalf("crash at write %d: %v", k, rerr)
		}
		if !ok {
			// Before the record: the state of a device grown and not yet
			// resized. With its old size back, the old metadata is found.
			if !errors.Is(err, ErrNoMetadata) {
				t.Fatalf("crash at write %d, no record: Open says %v, want no metadata", k, err)
			}
			r = rec
		}
		sawOld = true
		if r != rec {
			t.Fatalf("crash at write %d: record %+v, want %+v", k, r, rec)
		}
		_, off, _, _ := InternalLayout(r.OldDeviceSize, p.Slots, p.BlockSize)
		old, err := Open(dev, off)
		if err != nil {
			t.Fatalf("crash at write %d: old metadata: %v", k, err)
		}
		if sb := old.Superblock(); sb.DataSize != old0 || sb.Current != 0xc0de || sb.BitmapUUID[1] != 0 {
			t.Fatalf("crash at write %d: old superblock %+v", k, sb)
		}
		checkSlot(t, old, 2, oldWords)
		if ext, err := old.ReadActivityLog(); err != nil || !slices.Equal(ext, []uint64{0}) {
			t.Fatalf("crash at write %d: old activity log %v, %v", k, ext, err)
		}
	}
	if !sawOld || !sawNew {
		t.Fatalf("the crashes found old metadata %v, new %v: want both", sawOld, sawNew)
	}
}

func checkSlot(t *testing.T, s *Store, slot int, want []uint64) {
	t.Helper()
	got, err := s.ReadBitmap(slot)
	if err != nil {
		t.Fatalf("ReadBitmap(%d): %v", slot, err)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("bitmap slot %d: %d set bits, want %d", slot, onesCount(got), onesCount(want))
	}
}

// TestGrowRefusesShrink: Grow only grows, and writes nothing otherwise.
func TestGrowRefusesShrink(t *testing.T) {
	dev := &memDevice{}
	st := mustCreate(t, dev, 0, testParams())
	before := dev.writes
	err := st.Grow(dev, 1<<20, testParams().DataSize, nil, ResizeRecord{}, nil)
	if !errors.Is(err, ErrInvalidParams) || dev.writes != before {
		t.Fatalf("Grow to the same size: %v, %d writes", err, dev.writes-before)
	}
}
