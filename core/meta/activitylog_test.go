package meta

import (
	"bytes"
	"errors"
	"hash/crc32"
	"os"
	"reflect"
	"strings"
	"testing"
)

const alGoldenPath = "testdata/activitylog.hex"

// alParams gives a data area of 10 activity-log extents (the last partial).
var alParams = Params{Resource: "al", NodeID: 0, Slots: 2, DataSize: 9*ActivityLogExtentSize + 4096, BlockSize: 4096}

func newALStore(t *testing.T) (*Store, *memDevice) {
	t.Helper()
	dev := &memDevice{}
	st, err := Create(dev, 0, alParams, false)
	if err != nil {
		t.Fatal(err)
	}
	return st, dev
}

// TestActivityLogGolden pins the encoding of a transaction: a change in
// the bytes is a format change.
func TestActivityLogGolden(t *testing.T) {
	encoded := encodeALTransaction(5, []uint64{0, 3, 0x0102030405060708})
	text := strings.Replace(formatHex(encoded), "superblock slot 1 of the golden superblock (superblock_test.go)",
		"activity-log transaction seq 5, extents 0, 3, 0x0102030405060708 (activitylog_test.go)", 1)
	if *rewrite {
		if err := os.WriteFile(alGoldenPath, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	stored, err := os.ReadFile(alGoldenPath)
	if err != nil {
		t.Fatalf("%v (run with -rewrite to create it)", err)
	}
	golden, err := parseHex(string(stored))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(encoded, golden) {
		t.Fatalf("encoding differs from %s:\n%s", alGoldenPath, text)
	}
	if string(golden[:8]) != "GEORALOG" || le.Uint64(golden[8:]) != 5 || le.Uint32(golden[16:]) != 4<<20 ||
		le.Uint32(golden[20:]) != 3 || le.Uint64(golden[24+8:]) != 3 || len(golden) != 24+3*8+4 {
		t.Errorf("fields not where doc.go says")
	}
	slot := make([]byte, alSlotSize)
	copy(slot, golden)
	seq, ext, err := decodeALTransaction(slot, 1, 1<<60)
	if err != nil || seq != 5 || !reflect.DeepEqual(ext, []uint64{0, 3, 0x0102030405060708}) {
		t.Fatalf("decode: seq %d, extents %v, err %v", seq, ext, err)
	}
}

func TestActivityLogRoundTrip(t *testing.T) {
	st, dev := newALStore(t)
	if st.ActivityLogExtents() != 10 {
		t.Fatalf("ActivityLogExtents = %d, want 10", st.ActivityLogExtents())
	}
	got, err := st.ReadActivityLog()
	if err != nil || len(got) != 0 {
		t.Fatalf("fresh log: %v, %v; want empty", got, err)
	}
	for i, set := range [][]uint64{{3, 1, 3}, {9}, {}, {0, 1, 2, 3, 4, 5, 6, 7, 8, 9}} {
		syncs := dev.syncs
		if err := st.WriteActivityLog(set); err != nil {
			t.Fatal(err)
		}
		if dev.syncs == syncs {
			t.Fatalf("write %d did not sync", i)
		}
		// A new Store (a restart) reads what was written.
		re, err := Open(dev, 0)
		if err != nil {
			t.Fatal(err)
		}
		got, err := re.ReadActivityLog()
		if err != nil {
			t.Fatal(err)
		}
		want := map[int][]uint64{0: {1, 3}, 1: {9}, 2: {}, 3: {0, 1, 2, 3, 4, 5, 6, 7, 8, 9}}[i]
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("write %d: read %v, want %v", i, got, want)
		}
		// The reopened store continues the sequence.
		if err := re.WriteActivityLog(want); err != nil {
			t.Fatal(err)
		}
		st = re
	}
}

func TestActivityLogInvalid(t *testing.T) {
	st, dev := newALStore(t)
	writes := dev.writes
	if err := st.WriteActivityLog([]uint64{10}); !errors.Is(err, ErrInvalidParams) {
		t.Errorf("extent beyond the data: %v, want ErrInvalidParams", err)
	}
	many := make([]uint64, MaxActivityLogExtents+1)
	for i := range many {
		many[i] = uint64(i)
	}
	if err := st.WriteActivityLog(many); !errors.Is(err, ErrInvalidParams) {
		t.Errorf("too many extents: %v, want ErrInvalidParams", err)
	}
	if dev.writes != writes {
		t.Errorf("a refused write reached the device")
	}
	if MaxActivityLogExtents < 16000 {
		t.Errorf("MaxActivityLogExtents = %d", MaxActivityLogExtents)
	}
}

// TestActivityLogTorn: a transaction torn at any byte leaves the previous
// log readable, and the next write succeeds.
func TestActivityLogTorn(t *testing.T) {
	for _, first := range []bool{true, false} {
		st, dev := newALStore(t)
		var prev []uint64 = []uint64{}
		if !first {
			prev = []uint64{2, 4}
			if err := st.WriteActivityLog(prev); err != nil {
				t.Fatal(err)
			}
		}
		next := []uint64{1, 5, 7}
		size := len(encodeALTransaction(1, next))
		for cut := 0; cut < size; cut += 3 {
			crashed := dev.snapshot()
			re, err := Open(crashed, 0)
			if err != nil {
				t.Fatal(err)
			}
			crashed.tear = func(off int64, n int) int { return min(cut, n) }
			if err := re.WriteActivityLog(next); !errors.Is(err, errTorn) {
				t.Fatalf("torn write: %v", err)
			}
			crashed.tear = nil
			got, err := re.ReadActivityLog()
			if err != nil || !reflect.DeepEqual(got, prev) {
				t.Fatalf("first=%v cut %d: read %v, %v; want %v", first, cut, got, err, prev)
			}
			if err := re.WriteActivityLog(next); err != nil {
				t.Fatal(err)
			}
			if got, err := re.ReadActivityLog(); err != nil || !reflect.DeepEqual(got, next) {
				t.Fatalf("after rewrite: %v, %v", got, err)
			}
		}
	}
}

// TestActivityLogCorrupt: a damaged newer slot falls back to the older
// one; two damaged slots are ErrCorrupt, which the next write repairs.
func TestActivityLogCorrupt(t *testing.T) {
	st, dev := newALStore(t)
	if err := st.WriteActivityLog([]uint64{1}); err != nil { // seq 1, slot 1
		t.Fatal(err)
	}
	if err := st.WriteActivityLog([]uint64{2}); err != nil { // seq 2, slot 0
		t.Fatal(err)
	}
	slot0, slot1 := alOffset, alOffset+alSlotSize
	damage := []struct {
		name string
		fn   func(b []byte)
	}{
		{"crc", func(b []byte) { b[alHeaderSize] ^= 1 }},
		{"count", func(b []byte) { le.PutUint32(b[alOffCount:], MaxActivityLogExtents+1) }},
		{"seq", func(b []byte) { le.PutUint64(b[alOffSeq:], le.Uint64(b[alOffSeq:])+1); fixALCRC(b) }},
		{"extent size", func(b []byte) { le.PutUint32(b[alOffExtentSize:], 1<<20); fixALCRC(b) }},
		{"extent range", func(b []byte) { le.PutUint64(b[alOffExtents:], 10); fixALCRC(b) }},
	}
	for _, d := range damage {
		img := dev.snapshot()
		d.fn(img.data[slot0:])
		re, err := Open(img, 0)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := re.ReadActivityLog(); err != nil || !reflect.DeepEqual(got, []uint64{1}) {
			t.Errorf("%s: read %v, %v; want the older [1]", d.name, got, err)
		}
		d.fn(img.data[slot1:])
		if _, err := re.ReadActivityLog(); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s in both slots: %v, want ErrCorrupt", d.name, err)
		}
		re, _ = Open(img, 0)
		if err := re.WriteActivityLog([]uint64{4}); err != nil {
			t.Fatal(err)
		}
		if got, err := re.ReadActivityLog(); err != nil || !reflect.DeepEqual(got, []uint64{4}) {
			t.Errorf("%s: after repair %v, %v", d.name, got, err)
		}
	}
}

// fixALCRC recomputes the checksum of the transaction at the start of b.
func fixALCRC(b []byte) {
	end := alHeaderSize + 8*int(le.Uint32(b[alOffCount:]))
	le.PutUint32(b[end:], crcOf(b[:end]))
}

// FuzzDecodeALTransaction: decoding arbitrary slot bytes never panics,
// fails only with the documented errors, and what decodes re-encodes to
// the same transaction.
func FuzzDecodeALTransaction(f *testing.F) {
	f.Add(encodeALTransaction(1, nil), uint64(10))
	f.Add(encodeALTransaction(2, []uint64{0, 5, 9}), uint64(10))
	f.Add(encodeALTransaction(7, []uint64{3}), uint64(2))
	f.Add([]byte{}, uint64(1))
	f.Fuzz(func(t *testing.T, in []byte, nExtents uint64) {
		b := make([]byte, alSlotSize)
		copy(b, in)
		slot := int(le.Uint64(b[alOffSeq:]) % 2)
		seq, ext, err := decodeALTransaction(b, slot, nExtents)
		if err != nil {
			if !errors.Is(err, errNoTransaction) && !errors.Is(err, ErrCorrupt) {
				t.Fatalf("undocumented error %v", err)
			}
			return
		}
		enc := encodeALTransaction(seq, ext)
		if !bytes.Equal(enc, b[:len(enc)]) {
			t.Fatalf("decoded seq %d %v does not re-encode to its bytes", seq, ext)
		}
	})
}

func crcOf(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }
