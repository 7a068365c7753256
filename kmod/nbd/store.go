package nbd

import (
	"context"
	"fmt"
)

// Store is the local storage a StoreDevice exports: kmod.Backing and
// kmod.Region satisfy it. Its methods must be safe for concurrent use; Sync
// must make every completed write durable; WriteZeroes must leave the range
// allocated; Punch may deallocate.
type Store interface {
	ReadAt(p []byte, off int64) (int, error)
	WriteAt(p []byte, off int64) (int, error)
	Sync() error
	Punch(off, length int64) error
	WriteZeroes(off, length int64) error
	Size() int64
}

// StoreDevice serves a Store as a Device without replication: what the
// client writes goes to the Store, Flush is Store.Sync. Because every
// connection shares the one Store, flushes are global and the export
// allows multiple connections.
type StoreDevice struct {
	store    Store
	readOnly bool
}

var (
	_ Device         = (*StoreDevice)(nil)
	_ MultiConn      = (*StoreDevice)(nil)
	_ ReadOnlyDevice = (*StoreDevice)(nil)
)

// NewStoreDevice returns a Device serving store; readOnly exports it
// read-only.
func NewStoreDevice(store Store, readOnly bool) *StoreDevice {
	return &StoreDevice{store: store, readOnly: readOnly}
}

// Size returns the store's size.
func (d *StoreDevice) Size() uint64 { return uint64(d.store.Size()) }

// ReadOnly reports whether the device was created read-only.
func (d *StoreDevice) ReadOnly() bool { return d.readOnly }

// MultiConn returns true: a Sync covers writes from every connection.
func (d *StoreDevice) MultiConn() bool { return true }

// ReadAt reads len(p) bytes at off.
func (d *StoreDevice) ReadAt(_ context.Context, p []byte, off uint64) error {
	if err := d.check(off, uint64(len(p))); err != nil {
		return err
	}
	_, err := d.store.ReadAt(p, int64(off))
	return err
}

// WriteAt writes p at off, then syncs if fua is set. It does not keep p.
func (d *StoreDevice) WriteAt(_ context.Context, p []byte, off uint64, fua bool) error {
	if d.readOnly {
		return ErrReadOnly
	}
	if err := d.check(off, uint64(len(p))); err != nil {
		return err
	}
	if _, err := d.store.WriteAt(p, int64(off)); err != nil {
		return err
	}
	if fua {
		return d.store.Sync()
	}
	return nil
}

// Flush syncs the store.
func (d *StoreDevice) Flush(context.Context) error { return d.store.Sync() }

// Trim punches [off, off+length) out of the store.
func (d *StoreDevice) Trim(_ context.Context, off, length uint64) error {
	if d.readOnly {
		return ErrReadOnly
	}
	if err := d.check(off, length); err != nil {
		return err
	}
	return d.store.Punch(int64(off), int64(length))
}

// WriteZeroes zeroes [off, off+length), then syncs if fua is set.
func (d *StoreDevice) WriteZeroes(_ context.Context, off, length uint64, fua bool) error {
	if d.readOnly {
		return ErrReadOnly
	}
	if err := d.check(off, length); err != nil {
		return err
	}
	if err := d.store.WriteZeroes(int64(off), int64(length)); err != nil {
		return err
	}
	if fua {
		return d.store.Sync()
	}
	return nil
}

func (d *StoreDevice) check(off, length uint64) error {
	size := d.Size()
	if off > size || length > size-off {
		return fmt.Errorf("nbd: [%d, +%d) on a %d-byte store: %w", off, length, size, ErrOutOfRange)
	}
	return nil
}
