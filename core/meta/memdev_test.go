package meta

import (
	"errors"
	"io"
	"sync"
)

// memDevice is an in-memory Device that grows on write, counts syncs and
// can tear writes to simulate a crash in the middle of one.
type memDevice struct {
	mu     sync.Mutex
	data   []byte
	syncs  int
	writes int
	// tear, when set, is asked before each write how many of its bytes
	// reach the device; fewer than all fails the write with errTorn.
	tear func(off int64, n int) int
}

var errTorn = errors.New("torn write (simulated crash)")

func (d *memDevice) ReadAt(p []byte, off int64) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if off >= int64(len(d.data)) {
		return 0, io.EOF
	}
	n := copy(p, d.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (d *memDevice) WriteAt(p []byte, off int64) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.writes++
	n := len(p)
	if d.tear != nil {
		n = d.tear(off, len(p))
	}
	if end := off + int64(n); end > int64(len(d.data)) {
		d.data = append(d.data, make([]byte, end-int64(len(d.data)))...)
	}
	copy(d.data[off:], p[:n])
	if n < len(p) {
		return n, errTorn
	}
	return n, nil
}

func (d *memDevice) Sync() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.syncs++
	return nil
}

// snapshot returns a new device holding a copy of d's bytes.
func (d *memDevice) snapshot() *memDevice {
	d.mu.Lock()
	defer d.mu.Unlock()
	return &memDevice{data: append([]byte(nil), d.data...)}
}
