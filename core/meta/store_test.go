package meta

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"pgregory.net/rapid"
)

// testParams describes a 1 MiB resource (256 bits per slot) of three nodes.
func testParams() Params {
	return Params{Resource: "r0", NodeID: 1, Slots: 3, DataSize: 1 << 20, BlockSize: 4096, DiskState: 3}
}

func mustCreate(t *testing.T, dev Device, off int64, p Params) *Store {
	t.Helper()
	st, err := Create(dev, off, p, false)
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	return st
}

func mustOpen(t *testing.T, dev Device, off int64) *Store {
	t.Helper()
	st, err := Open(dev, off)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return st
}

func mustUpdate(t *testing.T, st *Store, fn func(*Superblock)) {
	t.Helper()
	if err := st.UpdateSuperblock(fn); err != nil {
		t.Fatalf("UpdateSuperblock: %v", err)
	}
}

// flip inverts one byte of the device.
func flip(d *memDevice, off int64) { d.data[off] ^= 0xff }

func TestCreateOpenExternal(t *testing.T) {
	dev := &memDevice{}
	p := testParams()
	created := mustCreate(t, dev, 0, p)
	if got, want := int64(len(dev.data)), ExternalSize(p.DataSize, p.Slots, p.BlockSize); got != want {
		t.Fatalf("Create wrote %d bytes, ExternalSize says %d", got, want)
	}
	want := Superblock{
		Resource: "r0", NodeID: 1, Slots: 3, DataSize: 1 << 20, BlockSize: 4096, DiskState: 3,
		BitmapUUID: []uint64{0, 0, 0}, Seq: 1,
	}
	if got := created.Superblock(); !reflect.DeepEqual(got, want) {
		t.Fatalf("created superblock %+v, want %+v", got, want)
	}
	st := mustOpen(t, dev, 0)
	if got := st.Superblock(); !reflect.DeepEqual(got, want) {
		t.Fatalf("opened superblock %+v, want %+v", got, want)
	}
	if err := st.Check("r0", 1, 1<<20, 0); err != nil {
		t.Fatalf("Check: %v", err)
	}
	if st.BitmapBits() != 256 || st.BitmapWords() != 4 {
		t.Fatalf("BitmapBits, BitmapWords = %d, %d; want 256, 4", st.BitmapBits(), st.BitmapWords())
	}
	for _, slot := range []int{0, 2} {
		words, err := st.ReadBitmap(slot)
		if err != nil || onesCount(words) != 0 {
			t.Fatalf("ReadBitmap(%d) = %x, %v; want clear", slot, words, err)
		}
	}
}

// TestCreateOpenInternal puts internal metadata at the end of a sparse
// file and checks that it leaves the data area alone and survives a
// reopen of the file.
func TestCreateOpenInternal(t *testing.T) {
	const devSize = 1<<30 + 12345
	path := filepath.Join(t.TempDir(), "backing")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(devSize); err != nil {
		t.Fatal(err)
	}
	p := testParams()
	dataSize, off, size, err := InternalLayout(devSize, p.Slots, p.BlockSize)
	if err != nil {
		t.Fatal(err)
	}
	p.DataSize = dataSize
	edge := bytes.Repeat([]byte{0xa5}, 4096)
	if _, err := f.WriteAt(edge, int64(dataSize)-4096); err != nil {
		t.Fatal(err)
	}
	st := mustCreate(t, f, off, p)
	mustUpdate(t, st, func(sb *Superblock) { sb.Current = 0xfeed; sb.Primary = true })

	g, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if fi, err := g.Stat(); err != nil || fi.Size() != devSize {
		t.Fatalf("device size changed to %v (%v)", fi.Size(), err)
	}
	if off+size > devSize {
		t.Fatalf("metadata [%d,+%d) beyond device of %d", off, size, devSize)
	}
	re := mustOpen(t, g, off)
	if err := re.Check(p.Resource, p.NodeID, dataSize, 4096); err != nil {
		t.Fatal(err)
	}
	if sb := re.Superblock(); sb.Current != 0xfeed || !sb.Primary || sb.Seq != 2 {
		t.Fatalf("reopened superblock %+v, want the update", sb)
	}
	got := make([]byte, len(edge))
	if _, err := g.ReadAt(got, int64(dataSize)-4096); err != nil || !bytes.Equal(got, edge) {
		t.Fatalf("the last data block changed (%v)", err)
	}
}

func TestCreateRefusesExisting(t *testing.T) {
	dev := &memDevice{}
	st := mustCreate(t, dev, 0, testParams())
	mustUpdate(t, st, func(sb *Superblock) { sb.Current = 7 })

	other := testParams()
	other.Resource = "r1"
	_, err := Create(dev, 0, other, false)
	if !errors.Is(err, ErrExists) || !strings.Contains(err.Error(), `resource "r0", node 1`) {
		t.Fatalf("Create over metadata: %v, want ErrExists naming r0 node 1", err)
	}
	if sb := mustOpen(t, dev, 0).Superblock(); sb.Current != 7 {
		t.Fatalf("refused Create changed the superblock: %+v", sb)
	}
	forced, err := Create(dev, 0, other, true)
	if err != nil {
		t.Fatalf("forced Create: %v", err)
	}
	if sb := forced.Superblock(); sb.Resource != "r1" || sb.Current != 0 || sb.Seq != 1 {
		t.Fatalf("forced Create: %+v", sb)
	}

	// Damaged metadata is protected too.
	flip(dev, 100)
	flip(dev, PageSize+100)
	_, err = Create(dev, 0, other, false)
	if !errors.Is(err, ErrExists) || !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Create over damaged metadata: %v, want ErrExists and ErrCorrupt", err)
	}
	if _, err := Create(dev, 0, other, true); err != nil {
		t.Fatalf("forced Create over damaged metadata: %v", err)
	}
}

func TestCreateInvalid(t *testing.T) {
	p := testParams()
	if _, err := Create(&memDevice{}, 100, p, false); !errors.Is(err, ErrInvalidParams) {
		t.Fatalf("unaligned offset: %v", err)
	}
	p.Slots = 0
	if _, err := Create(&memDevice{}, 0, p, false); !errors.Is(err, ErrInvalidParams) {
		t.Fatalf("zero slots: %v", err)
	}
}

// TestInterruptedForcedCreate: a forced Create that dies after
// invalidating the old superblocks must not leave them above the cleared
// bitmaps.
func TestInterruptedForcedCreate(t *testing.T) {
	dev := &memDevice{}
	st := mustCreate(t, dev, 0, testParams())
	words := make([]uint64, st.BitmapWords())
	words[0] = 1
	if err := st.WriteBitmap(0, words); err != nil {
		t.Fatal(err)
	}
	dev.tear = func(off int64, n int) int {
		if off >= alOffset {
			return 0 // dies while clearing the activity log and bitmaps
		}
		return n
	}
	if _, err := Create(dev, 0, testParams(), true); !errors.Is(err, errTorn) {
		t.Fatalf("torn Create: %v", err)
	}
	if _, err := Open(dev.snapshot(), 0); !errors.Is(err, ErrNoMetadata) {
		t.Fatalf("Open after torn Create: %v, want ErrNoMetadata", err)
	}
}

func TestOpenFallsBackToOlderSlot(t *testing.T) {
	for _, at := range []int64{0, offSeq, offResource, offCurrent, offBitmapUUID, 3000, offCRC + 3} {
		dev := &memDevice{}
		st := mustCreate(t, dev, 0, testParams())
		mustUpdate(t, st, func(sb *Superblock) { sb.Current = 2 }) // seq 2, slot 0
		mustUpdate(t, st, func(sb *Superblock) { sb.Current = 3 }) // seq 3, slot 1
		flip(dev, PageSize+at)

		re := mustOpen(t, dev, 0)
		if sb := re.Superblock(); sb.Seq != 2 || sb.Current != 2 {
			t.Fatalf("byte %d of slot 1 flipped: opened seq %d current %d, want slot 0's 2, 2", at, sb.Seq, sb.Current)
		}
		sum, err := re.Summary()
		if err != nil || len(sum.Warnings) != 1 || !strings.Contains(sum.Warnings[0], "slot 1") {
			t.Fatalf("summary warnings %q (%v), want one about slot 1", sum.Warnings, err)
		}
		// The next update repairs the damaged slot.
		mustUpdate(t, re, func(sb *Superblock) { sb.Current = 4 })
		if sb := mustOpen(t, dev, 0).Superblock(); sb.Seq != 3 || sb.Current != 4 {
			t.Fatalf("after repair: %+v", sb)
		}
		flip(dev, at) // now damage slot 0: the repaired slot 1 alone is enough
		if sb := mustOpen(t, dev, 0).Superblock(); sb.Seq != 3 || sb.Current != 4 {
			t.Fatalf("after repair, slot 1 is not valid: %+v", sb)
		}
	}
}

func TestOpenBothCorrupt(t *testing.T) {
	dev := &memDevice{}
	mustCreate(t, dev, 0, testParams())
	flip(dev, offCurrent)
	flip(dev, PageSize+offDataSize)
	_, err := Open(dev, 0)
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Open: %v, want ErrCorrupt", err)
	}
	for _, want := range []string{"slot 0 at offset 0", "slot 1 at offset 4096", "checksum mismatch"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	// A missing magic in one slot and a bad checksum in the other is
	// corruption too, not "no metadata".
	dev.data[0] = 0
	if _, err := Open(dev, 0); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "no magic") {
		t.Fatalf("Open: %v, want ErrCorrupt mentioning the missing magic", err)
	}
}

func TestOpenNoMetadata(t *testing.T) {
	for name, dev := range map[string]*memDevice{
		"empty":  {},
		"zeroed": {data: make([]byte, 1<<20)},
	} {
		_, err := Open(dev, 8192)
		if !errors.Is(err, ErrNoMetadata) || !strings.Contains(err.Error(), "offset 8192") ||
			!strings.Contains(err.Error(), "georepl create-md") {
			t.Errorf("%s device: %v, want ErrNoMetadata naming the offset and create-md", name, err)
		}
	}
	if _, err := Open(&memDevice{}, -4096); !errors.Is(err, ErrInvalidParams) {
		t.Errorf("negative offset: %v", err)
	}
}

func TestOpenTruncated(t *testing.T) {
	dev := &memDevice{}
	st := mustCreate(t, dev, 4096, testParams())
	full := len(dev.data)
	for _, keep := range []int{full - 1, full - PageSize, 4096 + PageSize + 10} {
		short := &memDevice{data: dev.data[:keep]}
		if _, err := Open(short, 4096); !errors.Is(err, ErrTruncated) {
			t.Errorf("device cut to %d of %d bytes: %v, want ErrTruncated", keep, full, err)
		}
	}
	// Open succeeds on the full device but the bitmap read hits the cut.
	dev.data = dev.data[:4096+st.lay.slotOffset(2)+8]
	if _, err := st.ReadBitmap(2); !errors.Is(err, ErrTruncated) {
		t.Errorf("ReadBitmap on cut device: %v, want ErrTruncated", err)
	}
}

// boundedDevice is a memDevice of fixed size that refuses, with an error
// of its own rather than io.EOF, accesses beyond its end, as bounded
// regions do; it reports its size through Sizer.
type boundedDevice struct {
	*memDevice
	size int64
}

var errOutOfBounds = errors.New("out of bounds")

func (d boundedDevice) Size() int64 { return d.size }

func (d boundedDevice) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > d.size {
		return 0, errOutOfBounds
	}
	return d.memDevice.ReadAt(p, off)
}

func TestOpenTruncatedSizer(t *testing.T) {
	dev := &memDevice{}
	mustCreate(t, dev, 0, testParams())
	full := int64(len(dev.data))
	if _, err := Open(boundedDevice{dev, full}, 0); err != nil {
		t.Fatalf("Open on a device of exactly the metadata size: %v", err)
	}
	for _, size := range []int64{full - 1, superblockAreaSize, PageSize + 100, 0} {
		want := ErrTruncated
		if size == 0 {
			want = ErrNoMetadata
		}
		if _, err := Open(boundedDevice{dev, size}, 0); !errors.Is(err, want) {
			t.Errorf("device cut to %d of %d bytes: %v, want %v", size, full, err, want)
		}
	}
}

// rewriteSlot changes slot i of dev and fixes its checksum, as a buggy or
// foreign writer would.
func rewriteSlot(dev *memDevice, i int, change func(b []byte)) {
	b := dev.data[i*PageSize : (i+1)*PageSize]
	change(b)
	le.PutUint32(b[offCRC:], checksum(b))
}

func TestOpenVersion(t *testing.T) {
	dev := &memDevice{}
	mustCreate(t, dev, 0, testParams())
	rewriteSlot(dev, 0, func(b []byte) { le.PutUint32(b[offVersion:], FormatVersion+1) })
	_, err := Open(dev, 0)
	if want := fmt.Sprintf("version %d", FormatVersion+1); !errors.Is(err, ErrVersion) || !strings.Contains(err.Error(), want) {
		t.Fatalf("Open: %v, want ErrVersion naming %s", err, want)
	}
}

// TestDecodeRejects checks the validation of slots whose checksum is right
// but whose content is not.
func TestDecodeRejects(t *testing.T) {
	l, err := testParams().layout()
	if err != nil {
		t.Fatal(err)
	}
	sb := Superblock{Resource: "r0", NodeID: 1, Slots: 3, DataSize: 1 << 20, BlockSize: 4096,
		BitmapUUID: []uint64{1, 2, 3}, Seq: 4}
	tests := []struct {
		name   string
		change func(b []byte)
		in     string
	}{
		{"seq-parity", func(b []byte) { le.PutUint64(b[offSeq:], 5) }, "belongs in slot 1"},
		{"flags", func(b []byte) { le.PutUint32(b[offFlags:], 6) }, "flag bits"},
		{"name-empty", func(b []byte) { b[offResourceLen] = 0 }, "name length 0"},
		{"name-long", func(b []byte) { b[offResourceLen] = MaxResourceLen + 1 }, "name length 65"},
		{"name-utf8", func(b []byte) { b[offResource] = 0xff }, "not UTF-8"},
		{"name-padding", func(b []byte) { b[offResource+10] = 'x' }, "after the 2-byte"},
		{"no-slots", func(b []byte) { b[offSlots] = 0 }, "geometry"},
		{"too-many-slots", func(b []byte) { b[offSlots] = MaxSlots + 1 }, "geometry"},
		{"node-outside", func(b []byte) { b[offNodeID] = 3 }, "node id 3"},
		{"block-zero", func(b []byte) { le.PutUint32(b[offBlockSize:], 0) }, "geometry"},
		{"block-odd", func(b []byte) { le.PutUint32(b[offBlockSize:], 4000) }, "geometry"},
		{"size-zero", func(b []byte) { le.PutUint64(b[offDataSize:], 0) }, "geometry"},
		{"size-huge", func(b []byte) { le.PutUint64(b[offDataSize:], 1<<63) }, "geometry"},
		{"al-offset", func(b []byte) { le.PutUint64(b[offALOffset:], 0) }, "activity log offset"},
		{"al-len", func(b []byte) { le.PutUint64(b[offALLen:], 1) }, "activity log length"},
		{"bitmap-offset", func(b []byte) { le.PutUint64(b[offBitmapOff:], 1) }, "bitmap offset"},
		{"bitmap-len", func(b []byte) { le.PutUint64(b[offBitmapLen:], 1<<40) }, "bitmap length"},
		{"slot-len", func(b []byte) { le.PutUint64(b[offSlotLen:], 8192) }, "slot length"},
		{"reserved", func(b []byte) { b[offReserved+3] = 1 }, "reserved bytes 184..255"},
		{"uuid-beyond-slots", func(b []byte) { b[offBitmapUUID+3*8] = 1 }, "reserved bytes 280..4091"},
		{"tail", func(b []byte) { b[offCRC-1] = 1 }, "reserved bytes 280..4091"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := encodeSuperblock(sb, l)
			tt.change(b)
			le.PutUint32(b[offCRC:], checksum(b))
			_, _, err := decodeSuperblock(b, 0)
			if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), tt.in) {
				t.Fatalf("decode: %v, want ErrCorrupt mentioning %q", err, tt.in)
			}
		})
	}
}

func TestCheckForeign(t *testing.T) {
	st := mustCreate(t, &memDevice{}, 0, testParams())
	tests := []struct {
		name     string
		resource string
		node     uint8
		size     uint64
		bs       uint32
		in       []string
	}{
		{"resource", "r9", 1, 1 << 20, 4096, []string{`configured "r9", metadata has "r0"`}},
		{"node", "r0", 2, 1 << 20, 4096, []string{"node id: configured 2, metadata has 1"}},
		{"size", "r0", 1, 2 << 20, 4096, []string{"data size: configured 2097152, metadata has 1048576"}},
		{"block", "r0", 1, 1 << 20, 512, []string{"block size: configured 512, metadata has 4096"}},
		{"all", "x", 0, 1, 8192, []string{"resource", "node id", "data size", "block size"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := st.Check(tt.resource, tt.node, tt.size, tt.bs)
			if !errors.Is(err, ErrForeign) {
				t.Fatalf("Check: %v, want ErrForeign", err)
			}
			for _, want := range tt.in {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not say %q", err, want)
				}
			}
		})
	}
}

func TestUpdateSuperblock(t *testing.T) {
	dev := &memDevice{}
	st := mustCreate(t, dev, 0, testParams())
	syncs := dev.syncs
	mustUpdate(t, st, func(sb *Superblock) {
		sb.DiskState, sb.Primary = 6, true
		sb.Current, sb.History = 0xc0ffee, [2]uint64{0xa, 0xb}
		sb.BitmapUUID[2] = 0x1234
		sb.Seq = 999 // ignored
	})
	if dev.syncs != syncs+1 {
		t.Fatalf("UpdateSuperblock synced %d times, want once", dev.syncs-syncs)
	}
	want := Superblock{Resource: "r0", NodeID: 1, Slots: 3, DataSize: 1 << 20, BlockSize: 4096,
		DiskState: 6, Primary: true, Current: 0xc0ffee, History: [2]uint64{0xa, 0xb},
		BitmapUUID: []uint64{0, 0, 0x1234}, Seq: 2}
	for name, got := range map[string]Superblock{"in memory": st.Superblock(), "reopened": mustOpen(t, dev, 0).Superblock()} {
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s: %+v, want %+v", name, got, want)
		}
	}
	// Superblock returns a copy.
	st.Superblock().BitmapUUID[0] = 42
	if st.Superblock().BitmapUUID[0] != 0 {
		t.Fatal("Superblock shares BitmapUUID with the store")
	}

	before := append([]byte(nil), dev.data...)
	for name, change := range map[string]func(*Superblock){
		"Resource":          func(sb *Superblock) { sb.Resource = "r1" },
		"NodeID":            func(sb *Superblock) { sb.NodeID = 0 },
		"Slots":             func(sb *Superblock) { sb.Slots = 4 },
		"DataSize":          func(sb *Superblock) { sb.DataSize++ },
		"BlockSize":         func(sb *Superblock) { sb.BlockSize = 512 },
		"BitmapUUID length": func(sb *Superblock) { sb.BitmapUUID = sb.BitmapUUID[:2] },
	} {
		err := st.UpdateSuperblock(change)
		if !errors.Is(err, ErrImmutable) || !strings.HasSuffix(err.Error(), name) {
			t.Errorf("changing %s: %v, want ErrImmutable naming it", name, err)
		}
	}
	if !bytes.Equal(before, dev.data) || st.Superblock().Seq != 2 {
		t.Fatal("a refused update wrote something")
	}
}

// TestTornUpdate tears the superblock write at every interesting length:
// the reopened metadata is always the previous superblock, and the store
// keeps working afterwards.
func TestTornUpdate(t *testing.T) {
	for _, keep := range []int{0, 1, 8, offSeq + 4, offCurrent + 3, 2048, offCRC, offCRC + 2} {
		dev := &memDevice{}
		st := mustCreate(t, dev, 0, testParams())
		mustUpdate(t, st, func(sb *Superblock) { sb.Current = 1 })
		dev.tear = func(off int64, n int) int { return keep }
		if err := st.UpdateSuperblock(func(sb *Superblock) { sb.Current = 2 }); !errors.Is(err, errTorn) {
			t.Fatalf("torn update: %v", err)
		}
		if sb := st.Superblock(); sb.Current != 1 || sb.Seq != 2 {
			t.Fatalf("in-memory superblock after a failed update: %+v", sb)
		}
		if sb := mustOpen(t, dev.snapshot(), 0).Superblock(); sb.Current != 1 || sb.Seq != 2 {
			t.Fatalf("kept %d bytes of the torn write: reopened %+v, want the previous superblock", keep, sb)
		}
		dev.tear = nil
		mustUpdate(t, st, func(sb *Superblock) { sb.Current = 3 })
		if sb := mustOpen(t, dev, 0).Superblock(); sb.Current != 3 || sb.Seq != 3 {
			t.Fatalf("update after the torn one: %+v", sb)
		}
	}
}

// TestCrashModel runs random updates, some of them torn by a crash, and
// restarts from the device after each crash: the reopened superblock is
// the last one whose update returned nil, or the one being written.
func TestCrashModel(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		dev := &memDevice{}
		st, err := Create(dev, 0, testParams(), false)
		if err != nil {
			t.Fatal(err)
		}
		committed := st.Superblock()
		for range rapid.IntRange(1, 30).Draw(t, "updates") {
			gen := rapid.Uint64().Draw(t, "gen")
			primary := rapid.Bool().Draw(t, "primary")
			crash := rapid.Bool().Draw(t, "crash")
			if crash {
				keep := rapid.IntRange(0, PageSize-1).Draw(t, "keep")
				dev.tear = func(off int64, n int) int { return keep }
			}
			attempted := committed.clone()
			attempted.History[1], attempted.History[0], attempted.Current = committed.History[0], committed.Current, gen
			attempted.Primary = primary
			attempted.Seq++
			err := st.UpdateSuperblock(func(sb *Superblock) { *sb = attempted.clone() })
			dev.tear = nil
			if err == nil {
				committed = st.Superblock()
				if !reflect.DeepEqual(committed, attempted) {
					t.Fatalf("update gave %+v, want %+v", committed, attempted)
				}
				continue
			}
			if !crash {
				t.Fatalf("update failed without a crash: %v", err)
			}
			dev = dev.snapshot()
			if st, err = Open(dev, 0); err != nil {
				t.Fatalf("Open after crash: %v", err)
			}
			// A torn write whose missing tail happened to match the old
			// bytes is a complete write: the update may have landed.
			switch got := st.Superblock(); {
			case reflect.DeepEqual(got, committed):
			case reflect.DeepEqual(got, attempted):
				committed = got
			default:
				t.Fatalf("after crash: %+v, want %+v or %+v", got, committed, attempted)
			}
		}
	})
}
