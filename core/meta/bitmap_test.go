package meta

import (
	"errors"
	"math/rand/v2"
	"reflect"
	"testing"
)

// bigParams gives a slot of three pages: 80 MiB + 4 KiB at 1 KiB blocks is
// 81924 bits, 1281 words.
func bigParams() Params {
	return Params{Resource: "big", NodeID: 0, Slots: 2, DataSize: 80<<20 + 4096, BlockSize: 1024}
}

// randomBitmap returns a random bitmap shaped for st.
func randomBitmap(st *Store, rng *rand.Rand) []uint64 {
	words := make([]uint64, st.BitmapWords())
	for i := range words {
		words[i] = rng.Uint64()
	}
	words[len(words)-1] &^= st.padMask()
	return words
}

func TestBitmapRoundTrip(t *testing.T) {
	dev := &memDevice{}
	st := mustCreate(t, dev, 0, Params{Resource: "r0", NodeID: 1, Slots: 3, DataSize: 1<<20 - 100, BlockSize: 4096})
	if st.BitmapBits() != 256 {
		t.Fatalf("BitmapBits = %d, want 256 (last block partial)", st.BitmapBits())
	}
	rng := rand.New(rand.NewPCG(1, 2))
	w0, w2 := randomBitmap(st, rng), randomBitmap(st, rng)
	for slot, words := range map[int][]uint64{0: w0, 2: w2} {
		if err := st.WriteBitmap(slot, words); err != nil {
			t.Fatalf("WriteBitmap(%d): %v", slot, err)
		}
	}
	re := mustOpen(t, dev, 0)
	for slot, want := range map[int][]uint64{0: w0, 2: w2} {
		got, err := re.ReadBitmap(slot)
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Fatalf("ReadBitmap(%d) = %x, %v; want %x", slot, got, err, want)
		}
	}
}

func TestBitmapShapeErrors(t *testing.T) {
	dev := &memDevice{}
	st := mustCreate(t, dev, 0, Params{Resource: "r0", NodeID: 1, Slots: 3, DataSize: 100 * 4096, BlockSize: 4096})
	ok := make([]uint64, st.BitmapWords()) // 100 bits: 2 words
	for _, slot := range []int{-1, 1, 3} {
		if _, err := st.ReadBitmap(slot); !errors.Is(err, ErrSlot) {
			t.Errorf("ReadBitmap(%d): %v, want ErrSlot", slot, err)
		}
		if err := st.WriteBitmap(slot, ok); !errors.Is(err, ErrSlot) {
			t.Errorf("WriteBitmap(%d): %v, want ErrSlot", slot, err)
		}
	}
	padded := make([]uint64, 2)
	padded[1] = 1 << 36 // bit 100
	for name, words := range map[string][]uint64{"short": ok[:1], "long": make([]uint64, 3), "padding": padded} {
		if err := st.WriteBitmap(0, words); !errors.Is(err, ErrBitmapShape) {
			t.Errorf("WriteBitmap %s: %v, want ErrBitmapShape", name, err)
		}
	}
	for _, page := range []int{-1, 1} {
		if err := st.WriteBitmapPages(0, ok, []int{0, page}); !errors.Is(err, ErrBitmapShape) {
			t.Errorf("WriteBitmapPages page %d: %v, want ErrBitmapShape", page, err)
		}
	}
	// A padding bit on disk is corruption.
	dev.data[st.lay.slotOffset(0)+8+4] |= 0x10 // word 1, bit 36
	if _, err := st.ReadBitmap(0); !errors.Is(err, ErrCorrupt) {
		t.Errorf("ReadBitmap with a padding bit set: %v, want ErrCorrupt", err)
	}
}

func TestWriteBitmapPages(t *testing.T) {
	dev := &memDevice{}
	st := mustCreate(t, dev, 0, bigParams())
	if got := st.lay.pagesPerSlot(); got != 3 {
		t.Fatalf("%d pages per slot, want 3", got)
	}
	rng := rand.New(rand.NewPCG(3, 4))
	old := randomBitmap(st, rng)
	if err := st.WriteBitmap(1, old); err != nil {
		t.Fatal(err)
	}
	next := randomBitmap(st, rng)

	tests := []struct {
		name   string
		pages  []int
		writes int
		fresh  []bool // which pages hold next afterwards
	}{
		{"none", nil, 0, []bool{false, false, false}},
		{"last-unsorted-dups", []int{2, 0, 2}, 2, []bool{true, false, true}},
		{"adjacent-coalesced", []int{1, 0}, 1, []bool{true, true, false}},
		{"all", []int{0, 1, 2}, 1, []bool{true, true, true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := st.WriteBitmap(1, old); err != nil {
				t.Fatal(err)
			}
			writes, syncs := dev.writes, dev.syncs
			if err := st.WriteBitmapPages(1, next, tt.pages); err != nil {
				t.Fatal(err)
			}
			if got := dev.writes - writes; got != tt.writes {
				t.Errorf("%d writes, want %d", got, tt.writes)
			}
			if wantSync := min(tt.writes, 1); dev.syncs-syncs != wantSync {
				t.Errorf("%d syncs, want %d", dev.syncs-syncs, wantSync)
			}
			got, err := st.ReadBitmap(1)
			if err != nil {
				t.Fatal(err)
			}
			for page, fresh := range tt.fresh {
				lo, hi := page*WordsPerPage, min((page+1)*WordsPerPage, len(got))
				want := old
				if fresh {
					want = next
				}
				if !reflect.DeepEqual(got[lo:hi], want[lo:hi]) {
					t.Errorf("page %d: fresh=%v not honoured", page, fresh)
				}
			}
		})
	}
}

func BenchmarkWriteBitmapPages(b *testing.B) {
	st, err := Create(&memDevice{}, 0, bigParams(), false)
	if err != nil {
		b.Fatal(err)
	}
	words := make([]uint64, st.BitmapWords())
	pages := []int{0, 2}
	b.ReportAllocs()
	for b.Loop() {
		if err := st.WriteBitmapPages(1, words, pages); err != nil {
			b.Fatal(err)
		}
	}
}
