package meta

import (
	"bytes"
	"errors"
	"math"
	"runtime"
	"testing"
)

// validImage returns the bytes of freshly created metadata for p with an
// update applied and a few bitmap bits set.
func validImage(tb testing.TB, p Params) []byte {
	tb.Helper()
	dev := &memDevice{}
	st, err := Create(dev, 0, p, false)
	if err != nil {
		tb.Fatal(err)
	}
	if err := st.UpdateSuperblock(func(sb *Superblock) { sb.Current, sb.Primary = 0x77, true }); err != nil {
		tb.Fatal(err)
	}
	for slot := range p.Slots {
		if slot != int(p.NodeID) {
			words := make([]uint64, st.BitmapWords())
			words[0] = 0b1011 << slot
			if err := st.WriteBitmap(slot, words); err != nil {
				tb.Fatal(err)
			}
		}
	}
	return dev.data
}

// squeeze drops the activity-log area, which Open never reads, from a
// metadata image, so that fuzz inputs stay small; unsqueeze restores it
// as zeroes.
func squeeze(img []byte) []byte {
	if len(img) <= alOffset {
		return img
	}
	return append(img[:alOffset:alOffset], img[min(len(img), bitmapOffset):]...)
}

func unsqueeze(in []byte) []byte {
	if len(in) <= alOffset {
		return bytes.Clone(in)
	}
	img := make([]byte, bitmapOffset+len(in)-alOffset)
	copy(img, in[:alOffset])
	copy(img[bitmapOffset:], in[alOffset:])
	return img
}

// FuzzOpen feeds arbitrary images to Open: it must not panic, must fail
// only with the documented errors, and whatever it accepts must be usable.
// Inputs are squeezed images (see squeeze).
func FuzzOpen(f *testing.F) {
	small := Params{Resource: "f", NodeID: 0, Slots: 2, DataSize: 64 << 10, BlockSize: 4096}
	img := squeeze(validImage(f, small))
	f.Add(img)
	f.Add(img[:superblockAreaSize]) // truncated after the superblocks
	f.Add(img[:PageSize+100])       // truncated inside slot 1
	damaged := bytes.Clone(img)
	damaged[PageSize+offCurrent] ^= 1 // the newer slot is bad
	f.Add(damaged)
	f.Add(squeeze(validImage(f, Params{Resource: "three", NodeID: 2, Slots: 3, DataSize: 3000, BlockSize: 512})))
	f.Add(make([]byte, superblockAreaSize))
	f.Add([]byte{})

	f.Fuzz(func(t *testing.T, in []byte) {
		// unsqueeze's copy is the device: the slot is compared below
		// before anything writes to it.
		data := unsqueeze(in)
		dev := &memDevice{data: data}
		st, err := Open(dev, 0)
		if err != nil {
			if !errors.Is(err, ErrNoMetadata) && !errors.Is(err, ErrCorrupt) &&
				!errors.Is(err, ErrVersion) && !errors.Is(err, ErrTruncated) {
				t.Fatalf("Open: undocumented error %v", err)
			}
			return
		}
		sb := st.Superblock()
		// What Open accepts is canonical: re-encoding gives the slot back.
		slot := data[sb.Seq%2*PageSize:][:PageSize]
		if enc := encodeSuperblock(sb, st.lay); !bytes.Equal(enc, slot) {
			t.Fatalf("accepted slot does not re-encode to itself")
		}
		if err := st.Check(sb.Resource, sb.NodeID, sb.DataSize, sb.BlockSize); err != nil {
			t.Fatalf("Check against its own superblock: %v", err)
		}
		for i := range sb.Slots {
			if i == int(sb.NodeID) {
				continue
			}
			words, err := st.ReadBitmap(i)
			if err != nil {
				if !errors.Is(err, ErrCorrupt) {
					t.Fatalf("ReadBitmap(%d): %v", i, err)
				}
				continue
			}
			if err := st.WriteBitmapPages(i, words, []int{0}); err != nil {
				t.Fatalf("WriteBitmapPages(%d): %v", i, err)
			}
		}
		if _, err := st.Summary(); err != nil && !errors.Is(err, ErrCorrupt) {
			t.Fatalf("Summary: %v", err)
		}
		if err := st.UpdateSuperblock(func(sb *Superblock) { sb.Current++ }); err != nil {
			t.Fatalf("UpdateSuperblock: %v", err)
		}
		if re, err := Open(dev, 0); err != nil || re.Superblock().Seq != sb.Seq+1 {
			t.Fatalf("reopen after update: %v", err)
		}
	})
}

// TestOpenLyingHeader: a superblock that claims an exabyte of data on a
// tiny device is refused as truncated, without allocating for it.
func TestOpenLyingHeader(t *testing.T) {
	huge := Superblock{Resource: "liar", NodeID: 0, Slots: MaxSlots, DataSize: MaxDataSize, BlockSize: MinBlockSize,
		BitmapUUID: make([]uint64, MaxSlots)}
	l, err := newLayout(huge.DataSize, huge.Slots, huge.BlockSize)
	if err != nil {
		t.Fatal(err)
	}
	dev := &memDevice{}
	for seq := range uint64(2) {
		huge.Seq = seq
		if _, err := dev.WriteAt(encodeSuperblock(huge, l), int64(seq)*PageSize); err != nil {
			t.Fatal(err)
		}
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err = Open(dev, 0)
	runtime.ReadMemStats(&after)
	if !errors.Is(err, ErrTruncated) {
		t.Fatalf("Open: %v, want ErrTruncated", err)
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 1<<20 {
		t.Fatalf("Open allocated %d bytes for a lying header", alloc)
	}

	// The same superblocks near the end of the int64 offset range describe
	// an area that would end beyond it.
	base := int64(math.MaxInt64)/PageSize*PageSize - superblockAreaSize
	if _, err := Open(shiftedDevice{dev, base}, base); !errors.Is(err, ErrTruncated) {
		t.Fatalf("Open at %d: %v, want ErrTruncated", base, err)
	}
}

// shiftedDevice shows the bytes of a memDevice at offset base onwards.
type shiftedDevice struct {
	*memDevice
	base int64
}

func (d shiftedDevice) ReadAt(p []byte, off int64) (int, error) {
	return d.memDevice.ReadAt(p, off-d.base)
}

func (d shiftedDevice) WriteAt(p []byte, off int64) (int, error) {
	return d.memDevice.WriteAt(p, off-d.base)
}

// FuzzDecodeSuperblock reaches past the checksum: it fixes the CRC of
// every input before decoding, so that the field validation is what gets
// fuzzed. Whatever decodes must re-encode to the same bytes.
func FuzzDecodeSuperblock(f *testing.F) {
	l, err := newLayout(goldenSuperblock.DataSize, goldenSuperblock.Slots, goldenSuperblock.BlockSize)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(encodeSuperblock(goldenSuperblock, l)[:offTail])
	small := Superblock{Resource: "s", Slots: 1, DataSize: 1, BlockSize: MaxBlockSize, BitmapUUID: []uint64{9}}
	ls, err := newLayout(small.DataSize, small.Slots, small.BlockSize)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(encodeSuperblock(small, ls)[:offTail])

	f.Fuzz(func(t *testing.T, head []byte) {
		b := make([]byte, PageSize)
		copy(b[:offCRC], head)
		le.PutUint32(b[offCRC:], checksum(b))
		slot := int(le.Uint64(b[offSeq:]) % 2)
		sb, l, err := decodeSuperblock(b, slot)
		if err != nil {
			if !errors.Is(err, errNoMagic) && !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrVersion) {
				t.Fatalf("undocumented error %v", err)
			}
			return
		}
		if !bytes.Equal(encodeSuperblock(sb, l), b) {
			t.Fatalf("decoded %+v does not re-encode to its bytes", sb)
		}
	})
}
