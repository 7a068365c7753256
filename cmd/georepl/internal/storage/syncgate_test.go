package storage

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/georepl/georepl/cmd/georepl/internal/storage/storagetest"
	"github.com/georepl/georepl/kmod"
)

// TestSyncGateFailureUntilHandled: a failed flush is reported once; every
// flush after it fails, naming it, until the engine handled it (the
// disk is not even asked: it would say yes, having told the error once).
func TestSyncGateFailureUntilHandled(t *testing.T) {
	dev := &storagetest.Syncer{}
	g := NewSyncGate(dev)
	var reports atomic.Int32
	g.SetReport(func() { reports.Add(1) })

	dev.FailNext(1)
	err := g.Sync()
	if !errors.Is(err, syscall.EIO) {
		t.Fatalf("the failed flush returned %v, want EIO", err)
	}
	if reports.Load() != 1 {
		t.Fatalf("%d reports after one failure, want 1", reports.Load())
	}
	calls := dev.Calls()
	for _, flush := range []func() error{g.Sync, g.SyncOp} {
		var doubt *FlushDoubtError
		if err := flush(); !errors.As(err, &doubt) || doubt.failure.n != 1 || doubt.while || !errors.Is(err, syscall.EIO) {
			t.Fatalf("a flush while the failure is not handled: %v, want a FlushDoubtError naming failure 1", err)
		}
	}
	if dev.Calls() != calls {
		t.Errorf("the disk was asked to flush while a failure was not handled")
	}
	if _, ok := g.Clean(); ok {
		t.Errorf("clean with a failure not handled")
	}
	if got := g.TakeUnreported(); len(got) != 1 || got[0].n != 1 {
		t.Fatalf("takeUnreported: %v, want failure 1", got)
	}
	if err := g.Sync(); err != nil {
		t.Fatalf("a flush after the failure was handled: %v", err)
	}
	if n, ok := g.Clean(); n != 1 || !ok {
		t.Errorf("clean() = %d, %v; want 1, true", n, ok)
	}
}

// TestSyncGateConcurrentFailure: of two flushes running together, one
// fails and takes the error; the other, which the disk lets succeed, may
// have been meant to cover the same writes: it fails too, naming the
// failure, even once the engine handled it.
func TestSyncGateConcurrentFailure(t *testing.T) {
	for _, handledFirst := range []bool{false, true} {
		t.Run(fmt.Sprintf("handled first %v", handledFirst), func(t *testing.T) {
			dev := &storagetest.Syncer{}
			g := NewSyncGate(dev)
			g.SetReport(func() {})
			release, began := dev.HoldNext()
			done := make(chan error, 1)
			go func() { done <- g.SyncOp() }()
			<-began
			dev.FailNext(1)
			if err := g.Sync(); !errors.Is(err, syscall.EIO) {
				t.Fatalf("the failing flush: %v", err)
			}
			if handledFirst {
				g.TakeUnreported()
			}
			close(release)
			err := <-done
			var doubt *FlushDoubtError
			if !errors.As(err, &doubt) || !doubt.while || doubt.failure.n != 1 {
				t.Fatalf("the flush that ran while another failed returned %v, want a FlushDoubtError naming failure 1", err)
			}
			if got := len(doubt.hides); got != map[bool]int{false: 1, true: 0}[handledFirst] {
				t.Errorf("it hides %d failures not handled", got)
			}
			// Reported through its LocalDone, the engine handled the
			// failure it hides.
			g.Delivered(err)
			if _, ok := g.Clean(); !ok {
				t.Errorf("a failure is left unhandled after the doubtful flush was delivered")
			}
		})
	}
}

// TestSyncGateClaimedFailures: an engine operation's failure goes to the
// engine through LocalDone (delivered), not through the reporter. An
// operation's error that only wraps another flush's failure (a write
// whose activity-log transaction failed) handles nothing: the reporter
// does.
func TestSyncGateClaimedFailures(t *testing.T) {
	dev := &storagetest.Syncer{}
	g := NewSyncGate(dev)
	var reports atomic.Int32
	g.SetReport(func() { reports.Add(1) })

	dev.FailNext(1)
	opErr := g.SyncOp()
	if !errors.Is(opErr, syscall.EIO) || reports.Load() != 0 {
		t.Fatalf("a failed syncOp: %v, %d reports; want EIO and none", opErr, reports.Load())
	}
	if got := g.TakeUnreported(); len(got) != 0 {
		t.Fatalf("the reporter took a failure an operation claimed: %v", got)
	}
	if err := g.Sync(); err == nil {
		t.Fatal("a flush succeeded while an operation's failure was not delivered")
	}
	g.Delivered(opErr)
	if err := g.Sync(); err != nil {
		t.Fatalf("a flush after the operation's failure was delivered: %v", err)
	}

	dev.FailNext(1)
	metaErr := g.Sync() // say, the activity log's transaction
	g.Delivered(fmt.Errorf("activity log write failed: %w", metaErr))
	if got := g.TakeUnreported(); len(got) != 1 {
		t.Fatalf("after a write's error wrapping another flush's failure was delivered, the reporter has %d failures, want 1", len(got))
	}
}

// TestSyncGateMetadata: a metadata write's flush concerns what it wrote:
// a failure before its first write does not fail it, even unhandled; one
// after does, even handled.
func TestSyncGateMetadata(t *testing.T) {
	path := filepath.Join(t.TempDir(), "disk")
	if err := os.WriteFile(path, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	b, err := kmod.OpenBacking(path)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	dev := &storagetest.Syncer{Next: b}
	g := NewSyncGate(dev)
	g.SetReport(func() {})
	m := &GatedMeta{Region: b.Region(0, 1<<20), Gate: g}

	dev.FailNext(1)
	if err := g.Sync(); err == nil {
		t.Fatal("the injected failure did not fail")
	}
	if _, err := m.WriteAt([]byte("superblock"), 0); err != nil {
		t.Fatal(err)
	}
	if err := m.Sync(); err != nil {
		t.Fatalf("a metadata write begun after an unhandled failure: %v", err)
	}
	g.TakeUnreported()

	if _, err := m.WriteAt([]byte("bitmap"), 4096); err != nil {
		t.Fatal(err)
	}
	dev.FailNext(1)
	if err := g.Sync(); err == nil {
		t.Fatal("the injected failure did not fail")
	}
	g.TakeUnreported()
	var doubt *FlushDoubtError
	if err := m.Sync(); !errors.As(err, &doubt) || doubt.failure.n != 2 {
		t.Fatalf("a metadata write whose pages another flush may have failed to write: %v, want a FlushDoubtError naming failure 2", err)
	}
}

// fuaDisk is a backing disk whose flushes, its own and those of its
// durable writes (WriteAtFUA, which Linux's RWF_DSYNC makes an fdatasync
// of the range: it reports a writeback error of the file once, to
// whichever flush asks first), go through a storagetest.Syncer.
type fuaDisk struct {
	*kmod.Backing
	s *storagetest.Syncer
}

func (d fuaDisk) Sync() error { return d.s.Sync() }

func (d fuaDisk) WriteAtFUA(p []byte, off int64) (int, error) {
	n, err := d.Backing.WriteAt(p, off)
	if err != nil {
		return n, err
	}
	if err := d.s.Sync(); err != nil {
		return 0, fmt.Errorf("%w: %w", kmod.ErrDurableWrite, err)
	}
	return n, nil
}

// newFUARegion returns a data area of 1 MiB on a fuaDisk, behind its gate.
func newFUARegion(t *testing.T) (*GatedRegion, *storagetest.Syncer) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "disk")
	if err := os.WriteFile(path, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	b, err := kmod.OpenBacking(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	dev := &storagetest.Syncer{}
	region := &GatedRegion{Region: kmod.NewRegion(fuaDisk{Backing: b, s: dev}, 0, 1<<20)}
	region.Gate = NewSyncGate(region.Region)
	region.Gate.SetReport(func() {})
	return region, dev
}

// TestSyncGateFUAWriteTakesAFailure: a FUA write is the first flush of
// the disk told of a writeback failure (of any write before it). Its
// failure is a failed flush of the disk, claimed by the FUA write's
// operation: every flush after it fails until the engine got it.
func TestSyncGateFUAWriteTakesAFailure(t *testing.T) {
	region, dev := newFUARegion(t)
	g := region.Gate
	dev.FailNext(1)
	_, opErr := region.WriteAtFUA([]byte("commit"), 4096)
	var f *SyncFailure
	if !errors.As(opErr, &f) || !f.claimed || !errors.Is(opErr, syscall.EIO) {
		t.Fatalf("the FUA write that took the writeback error: %v, want an operation's failed flush (SyncFailure) wrapping EIO", opErr)
	}
	if err := g.Sync(); err == nil {
		t.Fatal("a flush after the FUA write's failure succeeded before the engine got it: the writeback error is swallowed")
	}
	if _, err := region.WriteAtFUA([]byte("commit"), 8192); err == nil {
		t.Fatal("a FUA write after another's failure succeeded before the engine got it")
	}
	g.Delivered(opErr)
	if err := g.Sync(); err != nil {
		t.Fatalf("a flush after the FUA write's failure was delivered: %v", err)
	}
	if _, err := region.WriteAtFUA([]byte("commit"), 4096); err != nil {
		t.Fatalf("a FUA write after the failure was delivered: %v", err)
	}
}

// TestSyncGateFUAWriteDoubted: a FUA write that the disk lets succeed
// fails if another flush failed while it ran (that one may have taken
// the error of the FUA write's own pages), or failed before and is not
// handled yet.
func TestSyncGateFUAWriteDoubted(t *testing.T) {
	t.Run("while", func(t *testing.T) {
		region, dev := newFUARegion(t)
		release, began := dev.HoldNext()
		done := make(chan error, 1)
		go func() {
			_, err := region.WriteAtFUA([]byte("commit"), 4096)
			done <- err
		}()
		<-began
		dev.FailNext(1)
		if err := region.Gate.Sync(); err == nil {
			t.Fatal("the injected failure did not fail")
		}
		close(release)
		var doubt *FlushDoubtError
		if err := <-done; !errors.As(err, &doubt) || !doubt.while || !doubt.claimed {
			t.Fatalf("a FUA write while another flush failed: %v, want a FlushDoubtError of an operation", err)
		}
	})
	t.Run("before", func(t *testing.T) {
		region, dev := newFUARegion(t)
		dev.FailNext(1)
		if err := region.Gate.Sync(); err == nil {
			t.Fatal("the injected failure did not fail")
		}
		_, err := region.WriteAtFUA([]byte("commit"), 4096)
		var doubt *FlushDoubtError
		if !errors.As(err, &doubt) || doubt.while || len(doubt.hides) != 1 {
			t.Fatalf("a FUA write after an unhandled failure: %v, want a FlushDoubtError naming it", err)
		}
		got := make([]byte, 6)
		if _, err := region.ReadAt(got, 4096); err != nil || string(got) != "commit" {
			t.Fatalf("the doubted FUA write did not write: %q, %v", got, err)
		}
		region.Gate.Delivered(err)
		if err := region.Gate.Sync(); err != nil {
			t.Fatalf("a flush after the doubt was delivered: %v", err)
		}
	})
	t.Run("refused", func(t *testing.T) {
		region, _ := newFUARegion(t)
		_, err := region.WriteAtFUA([]byte("commit"), 1<<20)
		if !errors.Is(err, kmod.ErrOutOfBounds) || errors.Is(err, kmod.ErrDurableWrite) {
			t.Fatalf("a FUA write out of bounds: %v, want ErrOutOfBounds", err)
		}
		if _, ok := region.Gate.Clean(); !ok {
			t.Fatal("a write refused before it reached the disk counts as a failed flush")
		}
	})
}
