package sim

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/georepl/georepl/kmod"
)

// pageSize is the unit a simulated disk writes back atomically: after a
// power loss each page holds one of the versions it went through, never
// a mix of two.
const pageSize = 4096

// errFenced is what a disk handle of a node whose process is gone
// returns: the old incarnation's goroutines run down without touching
// the medium again.
var errFenced = errors.New("sim: the node's process is gone")

// disk is one simulated storage device of a node: its data disk or its
// external metadata file. It models a volatile write cache: a completed
// write is visible to reads at once but durable only once a flush issued
// after it completed; a power loss keeps, for each page, any one of the
// versions the cache held since the last durable one (the device writes
// the cache back in any order, a page at a time), and a process crash
// keeps everything (the operating system's cache survives a process).
//
// The data disk is gated: each read, write, zeroing, trim and flush waits
// until the scheduler completes it, so that the order in which local
// operations finish, and what a flush covers, are the scheduler's choice
// (a read sees what completed before the scheduler completes it). The
// metadata file's operations complete at once: the node performs them
// with locks held, and a lock waited on is not a state the scheduler can
// see (testing/synctest counts only channel and condition waits).
//
// All fields are guarded by world.mu.
type disk struct {
	w     *world
	node  string
	name  string
	size  int64
	gated bool
	// durable holds the pages on the medium, view what reads return
	// (medium plus cache); absent pages are zeroes.
	durable, view map[int64][]byte
	// cache lists completed writes not yet durable, oldest first.
	cache []cachedWrite
	// completed numbers completed writes: a flush covers those completed
	// before it was issued.
	completed uint64
	// gen is the incarnation whose handles work; handles of earlier ones
	// fail with errFenced.
	gen int
	// changed counts completed writes (for the checker's caches).
	changed uint64
	// ops counts the gated operations issued.
	ops uint64
	// cachedExt counts, per activity-log extent, the cached writes that
	// touch it (checkCached looks at extents first).
	cachedExt map[int64]int
}

type cachedWrite struct {
	n    uint64
	off  int64
	data []byte // nil: zeroes of length
	len  int64
	gen  int // the incarnation that wrote it
}

func newDisk(w *world, node, name string, size int64, gated bool) *disk {
	return &disk{w: w, node: node, name: name, size: size, gated: gated,
		durable: map[int64][]byte{}, view: map[int64][]byte{}, cachedExt: map[int64]int{}}
}

// apply writes c over the pages of m (copy on write: pages are shared
// between durable and view).
func apply(m map[int64][]byte, c cachedWrite) {
	for off := c.off; off < c.off+c.len; {
		page := off / pageSize
		in := off - page*pageSize
		n := min(pageSize-in, c.off+c.len-off)
		if in == 0 && n == pageSize {
			// A whole page: absent if zeroes, else the write's copy,
			// which nobody changes.
			if c.data == nil {
				delete(m, page)
			} else {
				m[page] = c.data[off-c.off : off-c.off+pageSize : off-c.off+pageSize]
			}
			off += n
			continue
		}
		p := make([]byte, pageSize)
		if old := m[page]; old != nil {
			copy(p, old)
		}
		if c.data != nil {
			copy(p[in:in+n], c.data[off-c.off:])
		} else {
			clear(p[in : in+n])
		}
		m[page] = p
		off += n
	}
}

// complete makes a write visible (in the cache). Called with world.mu held.
func (d *disk) complete(off int64, data []byte, length int64) {
	d.completed++
	d.changed++
	c := cachedWrite{n: d.completed, off: off, data: data, len: length, gen: d.gen}
	d.cache = append(d.cache, c)
	d.countExtents(c, 1)
	apply(d.view, c)
}

// countExtents adds delta to the count of cached writes of each extent c
// touches.
func (d *disk) countExtents(c cachedWrite, delta int) {
	if c.len == 0 {
		return
	}
	for x := c.off / extentSize; x <= (c.off+c.len-1)/extentSize; x++ {
		if d.cachedExt[x] += delta; d.cachedExt[x] == 0 {
			delete(d.cachedExt, x)
		}
	}
}

// flush makes durable every write completed up to mark. Called with
// world.mu held.
func (d *disk) flush(mark uint64) {
	keep := d.cache[:0]
	for _, c := range d.cache {
		if c.n <= mark {
			apply(d.durable, c)
			d.countExtents(c, -1)
		} else {
			keep = append(keep, c)
		}
	}
	clear(d.cache[len(keep):])
	d.cache = keep
}

// powerLoss drops the cache: each page keeps a version chosen by rng among
// the ones it had since it was last durable. It reports whether any
// completed write was lost. Called with world.mu held.
func (d *disk) powerLoss(rng *rand.Rand) (lost bool) {
	versions := map[int64][][]byte{}
	for _, c := range d.cache {
		one := map[int64][]byte{}
		for off := c.off; off < c.off+c.len; off = (off/pageSize + 1) * pageSize {
			page := off / pageSize
			cur := versions[page]
			if len(cur) == 0 {
				one[page] = d.durable[page]
			} else {
				one[page] = cur[len(cur)-1]
			}
		}
		apply(one, c)
		for page, p := range one {
			versions[page] = append(versions[page], p)
		}
	}
	pages := make([]int64, 0, len(versions))
	for page := range versions {
		pages = append(pages, page)
	}
	slices.Sort(pages)
	for _, page := range pages {
		vs := versions[page]
		k := rng.IntN(len(vs) + 1) // 0: none of the cached versions
		if k > 0 {
			d.durable[page] = vs[k-1]
		}
		if k < len(vs) {
			lost = true
		}
	}
	d.cache = nil
	clear(d.cachedExt)
	d.view = maps(d.durable)
	d.changed++
	return lost
}

func maps(m map[int64][]byte) map[int64][]byte {
	out := make(map[int64][]byte, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// read copies what reads return at off into p. Called with world.mu held.
func (d *disk) read(p []byte, off int64) {
	for done := 0; done < len(p); {
		at := off + int64(done)
		page := at / pageSize
		in := at - page*pageSize
		var n int
		if pg := d.view[page]; pg != nil {
			n = copy(p[done:], pg[in:])
		} else {
			n = len(clear2(p[done:min(len(p), done+int(pageSize-in))]))
		}
		done += n
	}
}

var zeroPage [pageSize]byte

// clear2 zeroes p and returns it.
func clear2(p []byte) []byte {
	clear(p)
	return p
}

func pageOrZero(p []byte) []byte {
	if p == nil {
		return zeroPage[:]
	}
	return p
}

// diskHandle is one incarnation's open disk: what node.Options.OpenDevice
// returns.
type diskHandle struct {
	d   *disk
	gen int
}

func (h *diskHandle) check(op string, off, length int64) error {
	if h.gen != h.d.gen {
		return fmt.Errorf("sim: %s %s: %w", op, h.d.name, errFenced)
	}
	if off < 0 || length < 0 || off > h.d.size || length > h.d.size-off {
		return fmt.Errorf("sim: %s %s at [%d, +%d): size is %d: %w", op, h.d.name, off, length, h.d.size, kmod.ErrOutOfBounds)
	}
	return nil
}

func (h *diskHandle) Path() string { return h.d.name }
func (h *diskHandle) Size() int64  { return h.d.size }
func (h *diskHandle) Close() error { return nil }

func (h *diskHandle) ReadAt(p []byte, off int64) (int, error) {
	w := h.d.w
	w.mu.Lock()
	if err := h.check("read", off, int64(len(p))); err != nil {
		w.mu.Unlock()
		return 0, err
	}
	if !h.d.gated {
		h.d.read(p, off)
		w.mu.Unlock()
		return len(p), nil
	}
	o := w.addDiskOp(&diskOp{disk: h.d, gen: h.gen, kind: opRead, off: off, buf: p, len: int64(len(p)), what: "read"})
	w.mu.Unlock()
	if err := <-o.done; err != nil {
		return 0, err
	}
	return len(p), nil
}

func (h *diskHandle) WriteAt(p []byte, off int64) (int, error) {
	if err := h.write("write", off, p, int64(len(p))); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (h *diskHandle) WriteZeroes(off, length int64) error {
	return h.write("write zeroes", off, nil, length)
}

func (h *diskHandle) Punch(off, length int64) error {
	return h.write("punch", off, nil, length)
}

func (h *diskHandle) write(op string, off int64, p []byte, length int64) error {
	w := h.d.w
	w.mu.Lock()
	if err := h.check(op, off, length); err != nil {
		w.mu.Unlock()
		return err
	}
	var data []byte
	if p != nil && !allZero(p) {
		data = slices.Clone(p)
	}
	if !h.d.gated {
		h.d.complete(off, data, length)
		w.mu.Unlock()
		return nil
	}
	o := w.addDiskOp(&diskOp{disk: h.d, gen: h.gen, kind: opWrite, off: off, data: data, len: length, what: op})
	w.mu.Unlock()
	return <-o.done
}

func (h *diskHandle) Sync() error {
	w := h.d.w
	w.mu.Lock()
	if err := h.check("flush", 0, 0); err != nil {
		w.mu.Unlock()
		return err
	}
	if !h.d.gated {
		h.d.flush(h.d.completed)
		w.mu.Unlock()
		return nil
	}
	o := w.addDiskOp(&diskOp{disk: h.d, gen: h.gen, kind: opFlush, mark: h.d.completed, what: "flush"})
	w.mu.Unlock()
	return <-o.done
}

type diskOpKind int

const (
	opRead diskOpKind = iota
	opWrite
	opFlush
)

// diskOp is a gated disk operation waiting for the scheduler.
type diskOp struct {
	disk *disk
	gen  int
	kind diskOpKind
	off  int64
	data []byte
	buf  []byte // a read: where to
	len  int64
	mark uint64 // a flush: the writes it covers
	what string
	// issued numbers the op among the disk's (tie-break for the order
	// the scheduler lists them in).
	issued uint64
	// ready is when the operation may complete, at the earliest.
	ready time.Time
	done  chan error
}

func (o *diskOp) String() string {
	if o.kind == opFlush {
		return fmt.Sprintf("%s flush", o.disk.name)
	}
	return fmt.Sprintf("%s %s [%d, +%d)", o.disk.name, o.what, o.off, o.len)
}

// finish performs o on the medium and wakes its caller. Called with
// world.mu held.
func (o *diskOp) finish() {
	switch o.kind {
	case opRead:
		o.disk.read(o.buf, o.off)
	case opWrite:
		o.disk.complete(o.off, o.data, o.len)
	case opFlush:
		o.disk.flush(o.mark)
	}
	o.done <- nil
}

// reader reads the disk's view; its caller holds world.mu.
func (d *disk) reader() viewReader { return viewReader{d} }

type viewReader struct{ d *disk }

func (r viewReader) ReadAt(p []byte, off int64) (int, error) {
	r.d.read(p, off)
	return len(p), nil
}

// allZero reports whether p holds only zeroes (a resync of an unwritten
// area mostly): such a write is kept as zeroes, without a copy.
func allZero(p []byte) bool {
	for len(p) > 0 {
		n := min(len(p), pageSize)
		if !bytes.Equal(p[:n], zeroPage[:n]) {
			return false
		}
		p = p[n:]
	}
	return true
}
