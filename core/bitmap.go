package core

import "math/bits"

// BitmapPageBytes is the unit of dirty tracking: the driver writes a
// bitmap back to metadata in pages of this many bytes (512 words).
const BitmapPageBytes = 4096

const wordsPerPage = BitmapPageBytes / 8

// Bitmap records, for one peer, which blocks of the device may differ on
// that peer: bit i covers bytes [i*BlockSize, (i+1)*BlockSize). A set bit
// means "send this block at the next resync".
//
// Bit i lives in word i/64 at bit position i%64 (least significant first),
// which is also the layout Words exposes for writing to metadata. Every
// mutation records which 4 KiB pages of words changed, so that the driver
// rewrites only those (DirtyPages, ClearDirty).
//
// A Bitmap is not safe for concurrent use. The engine owns the bitmaps it
// was configured with; the driver may read them (Words, DirtyPages) and
// call ClearDirty between two engine calls, in the engine's goroutine.
type Bitmap struct {
	bits  uint64
	words []uint64
	count uint64
	dirty []uint64 // one bit per page of words
}

// NewBitmap returns a bitmap of n bits, all clear and none dirty.
func NewBitmap(n uint64) *Bitmap {
	nw := (n + 63) / 64
	return &Bitmap{
		bits:  n,
		words: make([]uint64, nw),
		dirty: make([]uint64, (pagesFor(nw)+63)/64),
	}
}

// BitmapFromWords returns a bitmap of n bits backed by words, as read from
// metadata; the bitmap takes ownership of words. It needs at least
// (n+63)/64 words: fewer, or bits set beyond n, return ok false (the
// metadata is corrupt). Nothing is dirty.
func BitmapFromWords(n uint64, words []uint64) (b *Bitmap, ok bool) {
	nw := (n + 63) / 64
	if uint64(len(words)) < nw {
		return nil, false
	}
	words = words[:nw]
	if tail := n % 64; tail != 0 && words[nw-1]>>tail != 0 {
		return nil, false
	}
	b = &Bitmap{bits: n, words: words, dirty: make([]uint64, (pagesFor(nw)+63)/64)}
	for _, w := range words {
		b.count += uint64(bits.OnesCount64(w))
	}
	return b, true
}

func pagesFor(words uint64) uint64 { return (words + wordsPerPage - 1) / wordsPerPage }

// Len is the number of bits.
func (b *Bitmap) Len() uint64 { return b.bits }

// Count is the number of set bits. It is maintained on every change, so it
// costs nothing.
func (b *Bitmap) Count() uint64 { return b.count }

// Test reports whether bit i is set. i must be < Len.
func (b *Bitmap) Test(i uint64) bool { return b.words[i/64]&(1<<(i%64)) != 0 }

// SetRange sets the n bits starting at bit first, clipped to Len.
func (b *Bitmap) SetRange(first, n uint64) { b.update(first, n, true) }

// ClearRange clears the n bits starting at bit first, clipped to Len.
func (b *Bitmap) ClearRange(first, n uint64) { b.update(first, n, false) }

// SetBytes sets every bit of a block that [offset, offset+length) touches,
// for blocks of blockSize bytes. Partial blocks count as out of sync.
func (b *Bitmap) SetBytes(offset, length uint64, blockSize uint32) {
	if length == 0 {
		return
	}
	bs := uint64(blockSize)
	first := offset / bs
	b.SetRange(first, (offset+length+bs-1)/bs-first)
}

func (b *Bitmap) update(first, n uint64, set bool) {
	if first >= b.bits || n == 0 {
		return
	}
	end := first + n
	if end > b.bits || end < first {
		end = b.bits
	}
	for w := first / 64; w <= (end-1)/64; w++ {
		lo, hi := w*64, w*64+64
		mask := ^uint64(0)
		if first > lo {
			mask &^= (1 << (first - lo)) - 1
		}
		if end < hi {
			mask &= (1 << (end - lo)) - 1
		}
		old := b.words[w]
		nw := old &^ mask
		if set {
			nw = old | mask
		}
		if nw == old {
			continue
		}
		b.words[w] = nw
		b.count = b.count - uint64(bits.OnesCount64(old)) + uint64(bits.OnesCount64(nw))
		p := w / wordsPerPage
		b.dirty[p/64] |= 1 << (p % 64)
	}
}

// NextSet returns the first set bit at or after from; ok is false if there
// is none.
func (b *Bitmap) NextSet(from uint64) (i uint64, ok bool) {
	if from >= b.bits {
		return 0, false
	}
	w := from / 64
	word := b.words[w] &^ ((1 << (from % 64)) - 1)
	for {
		if word != 0 {
			i = w*64 + uint64(bits.TrailingZeros64(word))
			return i, i < b.bits
		}
		w++
		if w >= uint64(len(b.words)) {
			return 0, false
		}
		word = b.words[w]
	}
}

// NextClear returns the first clear bit at or after from, or Len if every
// bit from there on is set.
func (b *Bitmap) NextClear(from uint64) uint64 {
	if from >= b.bits {
		return b.bits
	}
	w := from / 64
	word := ^b.words[w] &^ ((1 << (from % 64)) - 1)
	for {
		if word != 0 {
			return min(w*64+uint64(bits.TrailingZeros64(word)), b.bits)
		}
		w++
		if w >= uint64(len(b.words)) {
			return b.bits
		}
		word = ^b.words[w]
	}
}

// Words is the live backing array, (Len+63)/64 words, bit i in word i/64 at
// position i%64. The driver copies pages out of it to persist them; it must
// not modify it.
func (b *Bitmap) Words() []uint64 { return b.words }

// DirtyPages lists, in increasing order, the pages (of BitmapPageBytes
// bytes, i.e. words [p*512, p*512+512)) changed since the last ClearDirty.
func (b *Bitmap) DirtyPages() []int {
	var pages []int
	for i, w := range b.dirty {
		for w != 0 {
			t := bits.TrailingZeros64(w)
			pages = append(pages, i*64+t)
			w &^= 1 << t
		}
	}
	return pages
}

// ClearDirty forgets the dirty pages, after the driver wrote them.
func (b *Bitmap) ClearDirty() { clear(b.dirty) }

// Grow extends the bitmap to n bits (n >= Len); the new bits are clear.
// The words that change (the last word's padding, new words) are dirty, so
// the driver writes the whole grown tail of the bitmap back.
func (b *Bitmap) Grow(n uint64) {
	if n <= b.bits {
		return
	}
	old := b.bits
	nw := (n + 63) / 64
	if extra := nw - uint64(len(b.words)); extra > 0 {
		b.words = append(b.words, make([]uint64, extra)...)
	}
	np := pagesFor(nw)
	if need := (np + 63) / 64; need > uint64(len(b.dirty)) {
		b.dirty = append(b.dirty, make([]uint64, need-uint64(len(b.dirty)))...)
	}
	b.bits = n
	for p := (old / 64) / wordsPerPage; p < np; p++ {
		b.dirty[p/64] |= 1 << (p % 64)
	}
}
