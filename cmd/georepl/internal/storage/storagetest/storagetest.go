// Package storagetest holds the fakes and fixtures that the storage
// package's tests and the node's tests of its runtime parts (the activity
// log writer, flush reporting) share: a data disk whose flushes fail or
// wait on the test's word, and metadata in a temporary file.
package storagetest

import (
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"

	"github.com/georepl/georepl/core/meta"
)

// ErrEIO is the error a Syncer's failing flush returns.
var ErrEIO = &os.PathError{Op: "fdatasync", Path: "data", Err: syscall.EIO}

// Syncer is a data disk whose flushes fail or wait when the test says so,
// and otherwise flush Next (nil: succeed).
type Syncer struct {
	Next interface{ Sync() error }

	mu    sync.Mutex
	calls int
	fails int // the next fails flushes fail with ErrEIO
	// hold, if not nil, makes the next flush report on began and wait
	// until hold is closed before it flushes.
	hold  chan struct{}
	began chan struct{}
}

func (s *Syncer) Sync() error {
	s.mu.Lock()
	s.calls++
	hold, began := s.hold, s.began
	s.hold = nil
	fail := hold == nil && s.fails > 0
	if fail {
		s.fails--
	}
	s.mu.Unlock()
	if hold != nil {
		began <- struct{}{}
		<-hold
	}
	if fail {
		return ErrEIO
	}
	if s.Next == nil {
		return nil
	}
	return s.Next.Sync()
}

// FailNext makes the next n flushes fail with ErrEIO.
func (s *Syncer) FailNext(n int) {
	s.mu.Lock()
	s.fails = n
	s.mu.Unlock()
}

// HoldNext makes the next flush wait: it receives on began once the flush
// has started and waits until release is closed.
func (s *Syncer) HoldNext() (release chan struct{}, began <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hold, s.began = make(chan struct{}), make(chan struct{})
	return s.hold, s.began
}

// Calls returns how many flushes were asked for.
func (s *Syncer) Calls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls
}

// NewMeta creates metadata for node 0 of three nodes, with a data area of
// extents activity-log extents and 4 KiB blocks, in an external file; it
// returns the file's path and the store.
func NewMeta(t *testing.T, extents uint64) (string, *meta.Store) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "meta")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	st, err := meta.Create(f, 0, meta.Params{Resource: "r0", NodeID: 0, Slots: 3,
		DataSize: extents * meta.ActivityLogExtentSize, BlockSize: 4096}, false)
	if err != nil {
		t.Fatal(err)
	}
	return path, st
}

// ActivityLogOnDisk reads the activity log of the metadata file at path
// as a restart would.
func ActivityLogOnDisk(t *testing.T, path string) []uint64 {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, err := meta.Open(f, 0)
	if err != nil {
		t.Fatal(err)
	}
	x, err := st.ReadActivityLog()
	if err != nil {
		t.Fatal(err)
	}
	return x
}
