package core

import (
	"slices"
	"testing"

	"pgregory.net/rapid"
)

// TestBitmapMatchesNaive applies random operations to a Bitmap and to a
// []bool and compares every query, plus the dirty page bookkeeping.
func TestBitmapMatchesNaive(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		n := rapid.Uint64Range(1, 3*64*wordsPerPage).Draw(t, "bits")
		b := NewBitmap(n)
		naive := make([]bool, n)
		dirty := map[int]bool{}
		for range rapid.IntRange(1, 40).Draw(t, "ops") {
			first := rapid.Uint64Range(0, n+10).Draw(t, "first")
			cnt := rapid.Uint64Range(0, n).Draw(t, "n")
			set := rapid.Bool().Draw(t, "set")
			if set {
				b.SetRange(first, cnt)
			} else {
				b.ClearRange(first, cnt)
			}
			for i := first; i < first+cnt && i < n; i++ {
				if naive[i] != set {
					dirty[int(i/64/wordsPerPage)] = true
				}
				naive[i] = set
			}
			if rapid.Bool().Draw(t, "clear dirty") {
				if got, want := b.DirtyPages(), sortedKeys(dirty); !slices.Equal(got, want) {
					t.Fatalf("dirty pages %v, want %v", got, want)
				}
				b.ClearDirty()
				clear(dirty)
			}
		}
		var count uint64
		for i, v := range naive {
			if v {
				count++
			}
			if b.Test(uint64(i)) != v {
				t.Fatalf("bit %d = %v, want %v", i, !v, v)
			}
		}
		if b.Count() != count {
			t.Fatalf("Count %d, want %d", b.Count(), count)
		}
		from := rapid.Uint64Range(0, n+1).Draw(t, "from")
		wantSet, wantOK, wantClear := uint64(0), false, n
		for i := from; i < n; i++ {
			if naive[i] && !wantOK {
				wantSet, wantOK = i, true
			}
			if !naive[i] && wantClear == n {
				wantClear = i
			}
		}
		if got, ok := b.NextSet(from); ok != wantOK || got != wantSet {
			t.Fatalf("NextSet(%d) = %d, %v; want %d, %v", from, got, ok, wantSet, wantOK)
		}
		if got := b.NextClear(from); got != wantClear {
			t.Fatalf("NextClear(%d) = %d, want %d", from, got, wantClear)
		}
		c, ok := BitmapFromWords(n, slices.Clone(b.Words()))
		if !ok || c.Count() != count || len(c.DirtyPages()) != 0 {
			t.Fatalf("BitmapFromWords round trip: ok %v count %d dirty %v", ok, c.Count(), c.DirtyPages())
		}
	})
}

func sortedKeys(m map[int]bool) []int {
	var keys []int
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func TestBitmapFromWordsRejectsCorruptInput(t *testing.T) {
	if _, ok := BitmapFromWords(130, make([]uint64, 2)); ok {
		t.Error("2 words accepted for 130 bits")
	}
	if _, ok := BitmapFromWords(70, []uint64{0, 1 << 6}); ok {
		t.Error("bit 70 accepted in a bitmap of 70 bits")
	}
	if b, ok := BitmapFromWords(70, []uint64{3, 1 << 5}); !ok || b.Count() != 3 {
		t.Errorf("valid words: ok %v", ok)
	}
}

func TestBitmapSetBytesCoversPartialBlocks(t *testing.T) {
	b := NewBitmap(16)
	b.SetBytes(4095, 2, 4096) // touches blocks 0 and 1
	b.SetBytes(3*4096, 4096, 4096)
	b.SetBytes(5*4096, 0, 4096)
	var got []uint64
	for i, ok := b.NextSet(0); ok; i, ok = b.NextSet(i + 1) {
		got = append(got, i)
	}
	if !slices.Equal(got, []uint64{0, 1, 3}) {
		t.Errorf("set blocks %v, want [0 1 3]", got)
	}
}

func BenchmarkBitmapSetRange(b *testing.B) {
	bm := NewBitmap(1 << 20)
	for i := 0; b.Loop(); i++ {
		first := uint64(i*7919) % (1 << 20)
		bm.SetRange(first, 64)
		bm.ClearRange(first, 64)
	}
}

// TestBitmapGrow: a grown bitmap keeps its bits, its new bits are clear and
// settable, and every page from the old last word on is dirty, so that the
// driver writes the grown tail to the metadata.
func TestBitmapGrow(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		n := rapid.Uint64Range(1, 2*64*wordsPerPage).Draw(t, "bits")
		m := rapid.Uint64Range(n, 4*64*wordsPerPage).Draw(t, "grown")
		b := NewBitmap(n)
		first := rapid.Uint64Range(0, n-1).Draw(t, "first")
		b.SetRange(first, n)
		b.ClearDirty()
		b.Grow(m)
		if b.Len() != m || b.Count() != n-first {
			t.Fatalf("grown to %d bits with %d set, want %d and %d", b.Len(), b.Count(), m, n-first)
		}
		if i := b.NextClear(first); i != n && !(i == m && n == m) {
			t.Fatalf("first clear bit after the old ones is %d, want %d", i, n)
		}
		var want []int
		if m > n {
			for p := int(n / 64 / wordsPerPage); p < int(pagesFor((m+63)/64)); p++ {
				want = append(want, p)
			}
		}
		if got := b.DirtyPages(); !slices.Equal(got, want) {
			t.Fatalf("dirty pages %v, want %v", got, want)
		}
		b.SetRange(m-1, 1)
		if !b.Test(m - 1) {
			t.Fatalf("last bit of the grown bitmap does not set")
		}
		if _, ok := BitmapFromWords(m, slices.Clone(b.Words())); !ok {
			t.Fatalf("grown words do not read back as a bitmap of %d bits", m)
		}
	})
}
