package meta

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
)

// setBits returns a bitmap for st with the given bits set.
func setBits(st *Store, bits ...uint64) []uint64 {
	words := make([]uint64, st.BitmapWords())
	for _, b := range bits {
		words[b/64] |= 1 << (b % 64)
	}
	return words
}

func TestSummary(t *testing.T) {
	// 100 blocks of 4 KiB, the last one 1000 bytes short.
	const dataSize = 100*4096 - 1000
	st := mustCreate(t, &memDevice{}, 0, Params{Resource: "r0", NodeID: 1, Slots: 3, DataSize: dataSize, BlockSize: 4096, DiskState: 6})
	mustUpdate(t, st, func(sb *Superblock) {
		sb.Primary, sb.Current, sb.History = true, 0xabc, [2]uint64{0x12, 0}
		sb.BitmapUUID[2] = 0xdef
	})
	if err := st.WriteBitmap(2, setBits(st, 0, 1, 2, 63, 64, 65, 99)); err != nil {
		t.Fatal(err)
	}
	sum, err := st.Summary()
	if err != nil {
		t.Fatal(err)
	}
	want := Summary{
		Resource: "r0", NodeID: 1, DataSize: dataSize, BlockSize: 4096, DiskState: 6, Primary: true,
		MetaOffset: 0, MetaSize: ExternalSize(dataSize, 3, 4096), Seq: 2,
		Current: "0000000000000abc", History: [2]string{"0000000000000012", "0000000000000000"},
		Peers: []PeerSummary{
			{NodeID: 0, BitmapUUID: "0000000000000000", Ranges: []ByteRange{}},
			{NodeID: 2, BitmapUUID: "0000000000000def", OutOfSyncBlocks: 7, OutOfSyncBytes: 7*4096 - 1000,
				Ranges: []ByteRange{{0, 3 * 4096}, {63 * 4096, 3 * 4096}, {99 * 4096, 4096 - 1000}}},
		},
		ActivityLog: []uint64{},
	}
	if !reflect.DeepEqual(sum, want) {
		t.Fatalf("Summary:\n got %+v\nwant %+v", sum, want)
	}
	js, err := json.Marshal(sum)
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{`"resource":"r0"`, `"current_gen":"0000000000000abc"`, `"out_of_sync_bytes":27672`,
		`"first_out_of_sync":[{"offset":0,"length":12288}`, `"more_ranges":false`} {
		if !bytes.Contains(js, []byte(key)) {
			t.Errorf("JSON %s lacks %s", js, key)
		}
	}
	if bytes.Contains(js, []byte("warnings")) {
		t.Errorf("JSON %s has warnings without a damaged slot", js)
	}
}

func TestSummaryMoreRanges(t *testing.T) {
	st := mustCreate(t, &memDevice{}, 0, testParams())
	var bits []uint64
	for b := uint64(0); b < 2*(MaxSummaryRanges+1); b += 2 {
		bits = append(bits, b)
	}
	for _, n := range []int{MaxSummaryRanges, MaxSummaryRanges + 1} {
		if err := st.WriteBitmap(0, setBits(st, bits[:n]...)); err != nil {
			t.Fatal(err)
		}
		sum, err := st.Summary()
		if err != nil {
			t.Fatal(err)
		}
		p := sum.Peers[0]
		if len(p.Ranges) != MaxSummaryRanges || p.MoreRanges != (n > MaxSummaryRanges) || p.OutOfSyncBlocks != uint64(n) {
			t.Errorf("%d single-block ranges: %d listed, more=%v, %d blocks", n, len(p.Ranges), p.MoreRanges, p.OutOfSyncBlocks)
		}
	}
}

func TestNextSetClear(t *testing.T) {
	words := []uint64{0, 1 << 63, ^uint64(0), 0b101}
	tests := []struct {
		from, n, set, clear uint64
	}{
		{0, 256, 127, 0},
		{127, 256, 127, 193},
		{128, 256, 128, 193},
		{192, 256, 192, 193},
		{193, 256, 194, 193},
		{195, 256, 256, 195},
		{0, 100, 100, 0}, // bits at or beyond n do not count
		{128, 150, 128, 150},
	}
	for _, tt := range tests {
		if got := nextSet(words, tt.from, tt.n); got != tt.set {
			t.Errorf("nextSet(from %d, n %d) = %d, want %d", tt.from, tt.n, got, tt.set)
		}
		if got := nextClear(words, tt.from, tt.n); got != tt.clear {
			t.Errorf("nextClear(from %d, n %d) = %d, want %d", tt.from, tt.n, got, tt.clear)
		}
	}
}

func TestDump(t *testing.T) {
	dev := &memDevice{}
	st := mustCreate(t, dev, 0, testParams())
	if err := st.WriteBitmap(2, setBits(st, 5)); err != nil {
		t.Fatal(err)
	}
	if err := st.WriteActivityLog([]uint64{0}); err != nil {
		t.Fatal(err)
	}
	mustUpdate(t, st, func(sb *Superblock) { sb.Current = 0x41 }) // seq 2, slot 0
	mustUpdate(t, st, func(sb *Superblock) { sb.Current = 0x42 }) // seq 3, slot 1
	flip(dev, 10)                                                 // damage the older slot
	re := mustOpen(t, dev, 0)

	var named, plain bytes.Buffer
	if err := re.Dump(&named, func(d uint8) string { return fmt.Sprintf("State%d", d) }); err != nil {
		t.Fatal(err)
	}
	if err := re.Dump(&plain, nil); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"format version 3", "superblock seq 3", "WARNING: superblock slot 0 at offset 0",
		"resource        r0", "disk state      State3 (3)", "current gen     0000000000000042", "last promoted   unknown",
		"peer 0", "peer 2", "out of sync: 1 blocks, 4096 bytes", "[20480, 24576) 4096 bytes",
		"activity log    1 extents of 4194304 bytes 0\n",
	} {
		if !strings.Contains(named.String(), want) {
			t.Errorf("Dump lacks %q:\n%s", want, named.String())
		}
	}
	if !strings.Contains(plain.String(), "disk state      3\n") {
		t.Errorf("Dump without names:\n%s", plain.String())
	}
	if strings.Contains(named.String(), "peer 1 ") {
		t.Errorf("Dump lists the node's own slot:\n%s", named.String())
	}

	werr := errors.New("disk full")
	if err := re.Dump(failWriter{werr}, nil); !errors.Is(err, werr) {
		t.Errorf("Dump to a failing writer: %v", err)
	}
}

type failWriter struct{ err error }

func (w failWriter) Write([]byte) (int, error) { return 0, w.err }
