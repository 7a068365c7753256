package kmod

import "fmt"

// Region is a bounded view of a Backing: [Offset, Offset+Size) of the store,
// addressed from 0. Accesses that reach outside the region fail with an
// error wrapping ErrOutOfBounds that names the store and the region, before
// the store is touched. Sync, as on the Backing, covers the whole store.
//
// A Region is safe for concurrent use; it stays usable until its Backing is
// closed.
type Region struct {
	backing *Backing
	off     int64
	size    int64
	err     error // non-nil when the region does not fit its store
}

// Err reports why the region does not fit its store, or nil if it does.
// Every I/O method and Sync of an unfit region fail with this error.
func (r *Region) Err() error { return r.err }

// Offset returns where the region starts in its store.
func (r *Region) Offset() int64 { return r.off }

// Size returns the region's size in bytes (0 for an unfit region).
func (r *Region) Size() int64 { return r.size }

// ReadAt reads len(p) bytes at off within the region, as Backing.ReadAt.
func (r *Region) ReadAt(p []byte, off int64) (int, error) {
	if err := r.check("read", off, int64(len(p))); err != nil {
		return 0, err
	}
	return r.backing.ReadAt(p, r.off+off)
}

// WriteAt writes all of p at off within the region, as Backing.WriteAt.
func (r *Region) WriteAt(p []byte, off int64) (int, error) {
	if err := r.check("write", off, int64(len(p))); err != nil {
		return 0, err
	}
	return r.backing.WriteAt(p, r.off+off)
}

// Sync makes every completed write to the store durable, as Backing.Sync.
func (r *Region) Sync() error {
	if r.err != nil {
		return r.err
	}
	return r.backing.Sync()
}

// Punch discards [off, off+length) within the region, as Backing.Punch.
func (r *Region) Punch(off, length int64) error {
	if err := r.check("punch", off, length); err != nil {
		return err
	}
	return r.backing.Punch(r.off+off, length)
}

// WriteZeroes zeroes [off, off+length) within the region, as
// Backing.WriteZeroes.
func (r *Region) WriteZeroes(off, length int64) error {
	if err := r.check("write zeroes", off, length); err != nil {
		return err
	}
	return r.backing.WriteZeroes(r.off+off, length)
}

func (r *Region) check(op string, off, length int64) error {
	if r.err != nil {
		return r.err
	}
	if off < 0 || length < 0 || off > r.size || length > r.size-off {
		return fmt.Errorf("kmod: %s at [%d, +%d) of region [%d, +%d) of %s: %w",
			op, off, length, r.off, r.size, r.backing.path, ErrOutOfBounds)
	}
	return nil
}
