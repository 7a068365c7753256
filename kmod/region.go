package kmod

import (
	"fmt"
	"sync/atomic"
)

// Store is what a Region is a view of: a Backing, or a stand-in with the
// same contract (a simulated disk in tests). Sync must make every write
// completed before the call durable; WriteZeroes leaves the range
// allocated, Punch may deallocate it; accesses beyond Size fail with an
// error wrapping ErrOutOfBounds; Path names the store in errors. The
// methods must be safe for concurrent use.
type Store interface {
	ReadAt(p []byte, off int64) (int, error)
	WriteAt(p []byte, off int64) (int, error)
	Sync() error
	Punch(off, length int64) error
	WriteZeroes(off, length int64) error
	Size() int64
	Path() string
}

var _ Store = (*Backing)(nil)

// Region is a bounded view of a Store: [Offset, Offset+Size) of the store,
// addressed from 0. Accesses that reach outside the region fail with an
// error wrapping ErrOutOfBounds that names the store and the region, before
// the store is touched. Sync, as on the store, covers the whole store.
//
// A Region is safe for concurrent use; it stays usable until its store is
// closed.
type Region struct {
	store Store
	off   int64
	size  atomic.Int64
	err   error // non-nil when the region does not fit its store
}

// NewRegion returns a view of [off, off+size) of s. A region that does not
// fit the store is returned anyway, with every operation failing with the
// error that Region.Err reports.
func NewRegion(s Store, off, size int64) *Region {
	r := &Region{store: s, off: off}
	if off < 0 || size < 0 || off > s.Size() || size > s.Size()-off {
		r.err = fmt.Errorf("kmod: region [%d, +%d) of %s does not fit in its %d bytes: %w",
			off, size, s.Path(), s.Size(), ErrOutOfBounds)
		size = 0
	}
	r.size.Store(size)
	return r
}

// Grow extends the region to size bytes, which must fit its store (after
// the store grew: Backing.Grow). Accesses in flight meanwhile are checked
// against the old size or the new one.
func (r *Region) Grow(size int64) error {
	if r.err != nil {
		return r.err
	}
	if old := r.size.Load(); size < old || size > r.store.Size()-r.off {
		return fmt.Errorf("kmod: region [%d, +%d) of %s cannot become %d bytes long: its store has %d: %w",
			r.off, old, r.store.Path(), size, r.store.Size(), ErrOutOfBounds)
	}
	r.size.Store(size)
	return nil
}

// Err reports why the region does not fit its store, or nil if it does.
// Every I/O method and Sync of an unfit region fail with this error.
func (r *Region) Err() error { return r.err }

// Offset returns where the region starts in its store.
func (r *Region) Offset() int64 { return r.off }

// Size returns the region's size in bytes (0 for an unfit region).
func (r *Region) Size() int64 { return r.size.Load() }

// ReadAt reads len(p) bytes at off within the region, as Store.ReadAt.
func (r *Region) ReadAt(p []byte, off int64) (int, error) {
	if err := r.check("read", off, int64(len(p))); err != nil {
		return 0, err
	}
	return r.store.ReadAt(p, r.off+off)
}

// WriteAt writes all of p at off within the region, as Store.WriteAt.
func (r *Region) WriteAt(p []byte, off int64) (int, error) {
	if err := r.check("write", off, int64(len(p))); err != nil {
		return 0, err
	}
	return r.store.WriteAt(p, r.off+off)
}

// FUAWriter is a Store that can write durably in one call
// (Backing.WriteAtFUA): a failure wraps ErrDurableWrite when the store may
// have flushed, and so may have taken a writeback error of the store.
type FUAWriter interface {
	WriteAtFUA(p []byte, off int64) (int, error)
}

// WriteAtFUA writes all of p at off within the region and makes it
// durable, as Backing.WriteAtFUA: with the store's WriteAtFUA if it has
// one, else WriteAt then Sync, whose failure wraps ErrDurableWrite.
func (r *Region) WriteAtFUA(p []byte, off int64) (int, error) {
	if err := r.check("write", off, int64(len(p))); err != nil {
		return 0, err
	}
	if w, ok := r.store.(FUAWriter); ok {
		return w.WriteAtFUA(p, r.off+off)
	}
	n, err := r.store.WriteAt(p, r.off+off)
	if err != nil {
		return n, err
	}
	if err := r.store.Sync(); err != nil {
		return n, fmt.Errorf("%w: %w", ErrDurableWrite, err)
	}
	return n, nil
}

// Sync makes every completed write to the store durable, as Store.Sync.
func (r *Region) Sync() error {
	if r.err != nil {
		return r.err
	}
	return r.store.Sync()
}

// Punch discards [off, off+length) within the region, as Store.Punch.
func (r *Region) Punch(off, length int64) error {
	if err := r.check("punch", off, length); err != nil {
		return err
	}
	return r.store.Punch(r.off+off, length)
}

// WriteZeroes zeroes [off, off+length) within the region, as
// Store.WriteZeroes.
func (r *Region) WriteZeroes(off, length int64) error {
	if err := r.check("write zeroes", off, length); err != nil {
		return err
	}
	return r.store.WriteZeroes(r.off+off, length)
}

func (r *Region) check(op string, off, length int64) error {
	if r.err != nil {
		return r.err
	}
	if size := r.size.Load(); off < 0 || length < 0 || off > size || length > size-off {
		return fmt.Errorf("kmod: %s at [%d, +%d) of region [%d, +%d) of %s: %w",
			op, off, length, r.off, size, r.store.Path(), ErrOutOfBounds)
	}
	return nil
}
