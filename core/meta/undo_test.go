package meta

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
)

const undoGoldenPath = "testdata/undo.hex"

const (
	undoBS   = 512
	undoData = 64 * undoBS
)

func newUndo(t testing.TB, size int64) (*UndoLog, *memDevice) {
	t.Helper()
	dev := &memDevice{}
	u, err := CreateUndo(dev, size, "u0", 1, undoData, undoBS, false)
	if err != nil {
		t.Fatal(err)
	}
	return u, dev
}

func blocks(fill byte, n int) []byte { return bytes.Repeat([]byte{fill}, n*undoBS) }

type undoRec struct {
	first uint64
	data  []byte
}

func readRecords(t testing.TB, u *UndoLog) []undoRec {
	t.Helper()
	var out []undoRec
	if err := u.Records(func(first uint64, data []byte) error {
		out = append(out, undoRec{first, bytes.Clone(data)})
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestUndoGolden pins the encoding of a header slot and of a record: a
// change in the bytes is a format change.
func TestUndoGolden(t *testing.T) {
	u, dev := newUndo(t, 1<<20)
	if err := u.Begin(0x0102030405060708, 5, 0x1122334455667788, [2]uint64{0x99, 0xaa}); err != nil {
		t.Fatal(err)
	}
	if err := u.Append(3, blocks(0xee, 1)); err != nil {
		t.Fatal(err)
	}
	// The header of Begin (seq 2, slot 0), then the record's header and
	// the first bytes of its block.
	img := append(bytes.Clone(dev.data[:144]), dev.data[UndoRecordsOffset:UndoRecordsOffset+UndoRecordHeader+8]...)
	text := strings.Replace(formatHex(img), "superblock slot 1 of the golden superblock (superblock_test.go)",
		"undo log header bytes 0..143 after Begin, then record 0 of block 3 and its first 8 bytes (undo_test.go)", 1)
	if *rewrite {
		if err := os.WriteFile(undoGoldenPath, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	stored, err := os.ReadFile(undoGoldenPath)
	if err != nil {
		t.Fatalf("%v (run with -rewrite to create it)", err)
	}
	golden, err := parseHex(string(stored))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(img, golden) {
		t.Fatalf("encoding differs from %s:\n%s", undoGoldenPath, text)
	}
	if string(golden[:8]) != "GEORUNDO" || le.Uint32(golden[8:]) != 1 || golden[12] != 1 || golden[13] != 1 ||
		golden[14] != 2 || golden[15] != 5 || le.Uint64(golden[16:]) != 2 || le.Uint64(golden[24:]) != 0x0102030405060708 ||
		le.Uint64(golden[32:]) != undoData || le.Uint32(golden[40:]) != undoBS || le.Uint64(golden[48:]) != 0x1122334455667788 ||
		le.Uint64(golden[56:]) != 0x99 || le.Uint64(golden[64:]) != 0xaa || string(golden[72:74]) != "u0" || le.Uint64(golden[136:]) != 1<<20 {
		t.Errorf("header fields not where the layout says")
	}
	r := golden[144:]
	if string(r[:8]) != "GEORUREC" || le.Uint64(r[8:]) != 0x0102030405060708 || le.Uint64(r[16:]) != 0 ||
		le.Uint64(r[24:]) != 3 || le.Uint32(r[32:]) != 1 || r[UndoRecordHeader] != 0xee {
		t.Errorf("record fields not where the layout says")
	}
}

// TestUndoSession: records survive a reopen in order, the log refuses
// what does not fit without writing, and End empties it.
func TestUndoSession(t *testing.T) {
	size := int64(UndoRecordsOffset + 3*(UndoRecordHeader+undoBS))
	u, dev := newUndo(t, size)
	if err := u.Append(0, blocks(1, 1)); err == nil {
		t.Fatal("Append to an idle log succeeded")
	}
	if err := u.Begin(7, 4, 0x10, [2]uint64{0x20, 0x30}); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if err := u.Append(uint64(10+i), blocks(byte(i+1), 1)); err != nil {
			t.Fatal(err)
		}
	}
	writes := dev.writes
	if err := u.Append(20, blocks(9, 1)); !errors.Is(err, ErrUndoFull) {
		t.Fatalf("Append past the capacity: %v, want ErrUndoFull", err)
	}
	if dev.writes != writes {
		t.Fatal("a refused Append wrote")
	}
	if used, free := u.Used(); used != 3*(UndoRecordHeader+undoBS) || free != 0 {
		t.Fatalf("Used = %d, %d", used, free)
	}
	re, err := OpenUndo(dev.snapshot())
	if err != nil {
		t.Fatal(err)
	}
	if h := re.Header(); h.State != UndoActive || h.Session != 7 || h.Disk != 4 || h.Current != 0x10 || h.History != [2]uint64{0x20, 0x30} {
		t.Fatalf("reopened header %+v", h)
	}
	got := readRecords(t, re)
	if len(got) != 3 || got[0].first != 10 || got[2].first != 12 || got[1].data[0] != 2 {
		t.Fatalf("reopened records %v", got)
	}
	if err := re.Check("u0", 1, undoData, undoBS); err != nil {
		t.Fatal(err)
	}
	if err := re.Check("u0", 2, undoData, undoBS); !errors.Is(err, ErrForeign) {
		t.Fatalf("Check of another node: %v", err)
	}
	if err := u.SetState(UndoExhausted); err != nil {
		t.Fatal(err)
	}
	if err := u.End(); err != nil {
		t.Fatal(err)
	}
	snap := dev.snapshot()
	re, err = OpenUndo(snap)
	if err != nil {
		t.Fatal(err)
	}
	if h := re.Header(); h.State != UndoIdle || len(readRecords(t, re)) != 0 {
		t.Fatalf("after End: %+v", h)
	}
	// A new session does not see the old one's records.
	if err := re.Begin(8, 4, 0x10, [2]uint64{}); err != nil {
		t.Fatal(err)
	}
	if err := re.Append(1, blocks(5, 2)); err != nil {
		t.Fatal(err)
	}
	again, err := OpenUndo(snap)
	if err != nil {
		t.Fatal(err)
	}
	if got := readRecords(t, again); len(got) != 1 || got[0].first != 1 || len(got[0].data) != 2*undoBS {
		t.Fatalf("second session's records %v", got)
	}
}

// TestUndoCrashEverywhere runs a session (Begin, appends, exhausted,
// rolling back, End) and crashes it at every write, tearing that write at
// several points: the log reopens, shows the state before or after the
// interrupted step, and every record whose Append returned is there, in
// order, intact; the torn one is never half there.
func TestUndoCrashEverywhere(t *testing.T) {
	const size = 1 << 16
	type step struct {
		name string
		do   func(u *UndoLog) error
	}
	var steps []step
	steps = append(steps, step{"begin", func(u *UndoLog) error { return u.Begin(42, 4, 0x10, [2]uint64{0x20, 0}) }})
	for i := range 4 {
		steps = append(steps, step{fmt.Sprintf("append %d", i), func(u *UndoLog) error {
			return u.Append(uint64(5*i), blocks(byte(0x10+i), i+1))
		}})
	}
	steps = append(steps,
		step{"exhausted", func(u *UndoLog) error { return u.SetState(UndoExhausted) }},
		step{"rolling back", func(u *UndoLog) error { return u.SetState(UndoRollingBack) }},
		step{"end", func(u *UndoLog) error { return u.End() }})

	// Count the writes of a clean run.
	_, clean := newUndo(t, size)
	base := clean.writes
	{
		u, err := OpenUndo(clean)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range steps {
			if err := s.do(u); err != nil {
				t.Fatal(err)
			}
		}
	}
	total := clean.writes - base
	crashes := 0
	for w := 1; w <= total; w++ {
		for _, cut := range []int{0, 1, 60, 64, 300, -1} {
			_, dev := newUndo(t, size)
			u, err := OpenUndo(dev)
			if err != nil {
				t.Fatal(err)
			}
			count := 0
			dev.tear = func(off int64, n int) int {
				count++
				if count != w {
					return n
				}
				if cut < 0 || cut > n {
					return n - 1
				}
				return cut
			}
			done := 0 // steps that returned
			interrupted := ""
			for _, s := range steps {
				if err := s.do(u); err != nil {
					interrupted = s.name
					break
				}
				done++
			}
			if interrupted == "" {
				t.Fatalf("write %d cut %d: nothing was torn", w, cut)
			}
			crashes++
			re, err := OpenUndo(dev.snapshot())
			if err != nil {
				t.Fatalf("crash in %s (write %d, cut %d): reopen: %v", interrupted, w, cut, err)
			}
			h := re.Header()
			recs := readRecords(t, re)
			appended := min(max(done-1, 0), 4) // appends that returned
			switch {
			case done == 0: // Begin torn: idle, or active if the slot landed
				if h.State != UndoIdle && !(h.State == UndoActive && h.Session == 42) {
					t.Fatalf("crash in begin: state %s", h.State)
				}
			case done < 5: // an Append torn
				// Cut by one byte, the write lost only the zeroes after the
				// record: the record landed, though Append failed.
				landed := 0
				if cut < 0 {
					landed = 1
				}
				if h.State != UndoActive || len(recs) != appended+landed {
					t.Fatalf("crash in %s (write %d, cut %d): state %s, %d records, want active and %d", interrupted, w, cut, h.State, len(recs), appended+landed)
				}
			case done == 5:
				if h.State != UndoActive && h.State != UndoExhausted {
					t.Fatalf("crash in %s: state %s", interrupted, h.State)
				}
			case done == 6:
				if h.State != UndoExhausted && h.State != UndoRollingBack {
					t.Fatalf("crash in %s: state %s", interrupted, h.State)
				}
			case done == 7:
				if h.State != UndoRollingBack && h.State != UndoIdle {
					t.Fatalf("crash in %s: state %s", interrupted, h.State)
				}
			}
			if h.State != UndoIdle {
				if len(recs) < appended {
					t.Fatalf("crash in %s: %d records, %d appends returned", interrupted, len(recs), appended)
				}
				for i, r := range recs {
					if r.first != uint64(5*i) || !bytes.Equal(r.data, blocks(byte(0x10+i), i+1)) {
						t.Fatalf("crash in %s: record %d is block %d with %d bytes", interrupted, i, r.first, len(r.data))
					}
				}
				// The log goes on where it ends: a new record lands after
				// the intact ones and is read back.
				if h.State == UndoActive {
					if err := re.Append(60, blocks(0x77, 1)); err != nil {
						t.Fatal(err)
					}
					after := readRecords(t, re)
					if len(after) != len(recs)+1 || after[len(recs)].first != 60 {
						t.Fatalf("crash in %s: append after reopen: %d records", interrupted, len(after))
					}
				}
			}
		}
	}
	if crashes == 0 {
		t.Fatal("no crash simulated")
	}
}

// TestUndoDamagedHeaderIsCorrupt: a record header that damage changed in
// the middle of the log is not read as the log's end, which would drop the
// records after it from a rollback without a word: opening the log fails
// with ErrCorrupt naming the record. (Append's zeroes after each record
// are what tell the two apart: see TestUndoAppendEndsTheLog.)
func TestUndoDamagedHeaderIsCorrupt(t *testing.T) {
	for _, tc := range []struct {
		name   string
		record int // whose header is damaged
		field  int // offset in the header
	}{
		{"magic of the first record", 0, 0},
		{"index of the second record", 1, 16},
		{"magic of the last record", 2, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u, dev := newUndo(t, 1<<15)
			if err := u.Begin(3, 4, 0x10, [2]uint64{1, 2}); err != nil {
				t.Fatal(err)
			}
			at := int64(UndoRecordsOffset)
			var offsets []int64
			for i := range 3 {
				offsets = append(offsets, at)
				if err := u.Append(uint64(i*2), blocks(byte(i+1), i+1)); err != nil {
					t.Fatal(err)
				}
				at += UndoRecordHeader + int64(i+1)*undoBS
			}
			dev.data[offsets[tc.record]+int64(tc.field)] ^= 1
			_, err := OpenUndo(dev)
			if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), fmt.Sprintf("undo record %d at offset %d", tc.record, offsets[tc.record])) {
				t.Fatalf("OpenUndo of a log whose record %d has a damaged header: %v, want ErrCorrupt naming that record", tc.record, err)
			}
		})
	}
}

// TestUndoAppendEndsTheLog: whatever lies after a session's last record
// (here, bytes of an earlier, longer record's data) is not read as more
// records, nor as damage: each Append writes zeroes where the next
// record's header would go.
func TestUndoAppendEndsTheLog(t *testing.T) {
	u, dev := newUndo(t, 1<<15)
	for i := UndoRecordsOffset; i < len(dev.data); i++ {
		dev.data[i] = 0xA5 // an earlier session's data, not a header
	}
	if err := u.Begin(3, 4, 0x10, [2]uint64{1, 2}); err != nil {
		t.Fatal(err)
	}
	if err := u.Append(7, blocks(9, 1)); err != nil {
		t.Fatal(err)
	}
	for _, log := range []*UndoLog{u, mustOpenUndo(t, dev)} {
		if recs := readRecords(t, log); len(recs) != 1 || recs[0].first != 7 {
			var firsts []uint64
			for _, r := range recs {
				firsts = append(firsts, r.first)
			}
			t.Fatalf("records of blocks %v after one append, want [7]", firsts)
		}
	}
}

func mustOpenUndo(t *testing.T, dev *memDevice) *UndoLog {
	t.Helper()
	u, err := OpenUndo(dev)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func TestUndoCorrupt(t *testing.T) {
	const size = 1 << 16
	u, dev := newUndo(t, size)
	if err := u.Begin(9, 4, 0x10, [2]uint64{}); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if err := u.Append(uint64(i), blocks(byte(i+1), 1)); err != nil {
			t.Fatal(err)
		}
	}
	// The newer slot damaged: the older one (idle) stands.
	d := dev.snapshot()
	d.data[0+100] ^= 1 // slot 0 holds seq 2
	re, err := OpenUndo(d)
	if err != nil || re.Header().State != UndoIdle {
		t.Fatalf("newer slot damaged: %v, %+v", err, re)
	}
	// Both damaged.
	d.data[PageSize+100] ^= 1
	if _, err := OpenUndo(d); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "slot 0 at offset 0") ||
		!strings.Contains(err.Error(), "slot 1 at offset 4096") {
		t.Fatalf("both slots damaged: %v", err)
	}
	// Never written.
	if _, err := OpenUndo(&memDevice{data: make([]byte, size)}); !errors.Is(err, ErrNoMetadata) {
		t.Fatalf("zeroes: %v", err)
	}
	if _, err := OpenUndo(&memDevice{}); !errors.Is(err, ErrNoMetadata) {
		t.Fatalf("empty file: %v", err)
	}
	// A newer version.
	d = dev.snapshot()
	for slot := range 2 {
		b := d.data[slot*PageSize : (slot+1)*PageSize]
		le.PutUint32(b[uOffVersion:], 2)
		fixUndoCRC(b)
	}
	if _, err := OpenUndo(d); !errors.Is(err, ErrVersion) {
		t.Fatalf("version 2: %v", err)
	}
	// A damaged middle record (its data) is damage, not a torn write:
	// refused, naming it.
	d = dev.snapshot()
	d.data[UndoRecordsOffset+(UndoRecordHeader+undoBS)+UndoRecordHeader+5] ^= 1
	if _, err := OpenUndo(d); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "undo record 1 at offset 8768") {
		t.Fatalf("damaged record 1: %v", err)
	}
	// The same damage on the last record reads as a torn write: the log
	// ends before it.
	d = dev.snapshot()
	d.data[UndoRecordsOffset+2*(UndoRecordHeader+undoBS)+UndoRecordHeader+5] ^= 1
	re, err = OpenUndo(d)
	if err != nil {
		t.Fatal(err)
	}
	if got := readRecords(t, re); len(got) != 2 {
		t.Fatalf("damaged last record: %d records readable, want 2", len(got))
	}
	// A truncated file may have lost records: refused, saying so.
	d = dev.snapshot()
	d.data = d.data[:UndoRecordsOffset+2*(UndoRecordHeader+undoBS)+10]
	if _, err := OpenUndo(d); !errors.Is(err, ErrTruncated) || !strings.Contains(err.Error(), "capacity of 65536 bytes") {
		t.Fatalf("truncated: %v", err)
	}
	// Create refuses to overwrite a session without force.
	if _, err := CreateUndo(dev, size, "u0", 1, undoData, undoBS, false); !errors.Is(err, ErrExists) {
		t.Fatalf("CreateUndo over an active session: %v", err)
	}
	if _, err := CreateUndo(dev, 100, "u0", 1, undoData, undoBS, true); !errors.Is(err, ErrInvalidParams) {
		t.Fatalf("CreateUndo too small: %v", err)
	}
}

func fixUndoCRC(b []byte) { le.PutUint32(b[offCRC:], crcOf(b[:offCRC])) }

// FuzzOpenUndo feeds arbitrary logs (header slots, then records) to
// OpenUndo: it must not panic, must fail only with the documented errors,
// and a log it accepts can be read and extended.
func FuzzOpenUndo(f *testing.F) {
	const size = 1 << 15
	u, dev := newUndo(f, size)
	f.Add(bytes.Clone(dev.data))
	if err := u.Begin(3, 4, 0x10, [2]uint64{1, 2}); err != nil {
		f.Fatal(err)
	}
	for i := range 3 {
		if err := u.Append(uint64(i*2), blocks(byte(i), i+1)); err != nil {
			f.Fatal(err)
		}
	}
	f.Add(bytes.Clone(dev.data))
	torn := bytes.Clone(dev.data)
	torn[UndoRecordsOffset+3*UndoRecordHeader+6*undoBS-100] ^= 1
	f.Add(torn)
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) > size {
			return
		}
		d := &memDevice{data: bytes.Clone(in)}
		u, err := OpenUndo(d)
		if err != nil {
			if !errors.Is(err, ErrNoMetadata) && !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrVersion) && !errors.Is(err, ErrTruncated) {
				t.Fatalf("OpenUndo: undocumented error %v", err)
			}
			return
		}
		h := u.Header()
		slot := in[h.Seq%2*PageSize:][:PageSize]
		if !bytes.Equal(encodeUndoHeader(h), slot) {
			t.Fatal("accepted header does not re-encode to itself")
		}
		var firsts []uint64
		if err := u.Records(func(first uint64, data []byte) error {
			if len(data) == 0 || len(data)%int(h.BlockSize) != 0 || (first+uint64(len(data)/int(h.BlockSize)))*uint64(h.BlockSize) > h.DataSize+uint64(h.BlockSize)-1 {
				t.Fatalf("record of block %d with %d bytes accepted", first, len(data))
			}
			firsts = append(firsts, first)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if h.State == UndoActive {
			used, free := u.Used()
			if used < 0 || free < 0 {
				t.Fatalf("Used = %d, %d", used, free)
			}
			if free >= UndoRecordHeader+int64(h.BlockSize) {
				if err := u.Append(0, make([]byte, h.BlockSize)); err != nil {
					t.Fatalf("Append: %v", err)
				}
				var again []uint64
				u.Records(func(first uint64, _ []byte) error { again = append(again, first); return nil })
				if !slices.Equal(again[:len(again)-1], firsts) {
					t.Fatal("appending changed the earlier records")
				}
			}
		}
	})
}
