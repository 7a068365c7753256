package node

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/georepl/georepl/cmd/georepl/internal/storage/storagetest"
	"github.com/georepl/georepl/core"
	"github.com/georepl/georepl/core/meta"
	"github.com/georepl/georepl/kmod"
)

// TestFlushFailureElsewhereReachesTheApplication: the activity log's
// flush of the data disk fails (Linux reports the writeback error to it,
// once); the application's next flush must not succeed as if the writes
// before it were durable. Under pass-on the engine marks them for every
// peer and fails that flush; under detach the disk is detached.
func TestFlushFailureElsewhereReachesTheApplication(t *testing.T) {
	for _, policy := range []string{"pass-on", "detach"} {
		t.Run(policy, func(t *testing.T) {
			// An activity log of one extent: a write to another extent
			// needs its slot.
			d, r, disk := upWithSyncer(t, policy, 1)
			if err := r.Primary(true); err != nil {
				t.Fatal(err)
			}
			dev, ctx := device{r}, context.Background()
			if err := dev.WriteAt(ctx, make([]byte, 4096), 0, false); err != nil {
				t.Fatal(err)
			}
			events, cancel := d.Subscribe()
			defer cancel()
			calls := disk.Calls()
			disk.FailNext(1)
			// A write to another extent needs a slot: the activity log
			// flushes the data disk to retire extent 0, and that flush
			// fails.
			err := dev.WriteAt(ctx, make([]byte, 4096), 2*meta.ActivityLogExtentSize, false)
			if disk.Calls() == calls {
				t.Fatal("the activity log never flushed the data disk")
			}
			flushErr := dev.Flush(ctx)
			engineCall(t, r, r.publishStatus)
			st, _ := d.Status("r0")
			t.Logf("second write: %v; flush: %v; disk %s", err, flushErr, st[0].Disk)
			switch policy {
			case "pass-on":
				if err != nil {
					t.Fatalf("the write waiting for a slot failed: %v", err)
				}
				if flushErr == nil {
					t.Fatal("the application flush succeeded after a flush of the data disk failed: the write before it is acknowledged durable and may be lost")
				}
				if st[0].Disk != "UpToDate" {
					t.Fatalf("disk %s under pass-on", st[0].Disk)
				}
				if err := dev.Flush(ctx); err != nil {
					t.Fatalf("the flush after the one that reported the failure: %v", err)
				}
				if !sawEvent(events, "disk", "marked out of sync for every peer") {
					t.Error("no event says that the engine marked what the failure may have lost")
				}
			case "detach":
				if st[0].Disk != "Diskless" {
					t.Fatalf("the disk is %s after a failed flush under detach", st[0].Disk)
				}
				if flushErr == nil || !errors.Is(flushErr, core.ErrIO) {
					t.Fatalf("the flush of a detached Primary with no peer in sync: %v, want ErrIO", flushErr)
				}
			}
		})
	}
}

// TestFlushOverlappingAFailureFails: the application's flush runs while
// another flush of the data disk (the activity log's) fails; the disk
// lets the application's succeed, since the other took the error. The
// application flush fails, once.
func TestFlushOverlappingAFailureFails(t *testing.T) {
	_, r, disk := upWithSyncer(t, "pass-on", 0)
	if err := r.Primary(true); err != nil {
		t.Fatal(err)
	}
	dev, ctx := device{r}, context.Background()
	if err := dev.WriteAt(ctx, make([]byte, 4096), 0, false); err != nil {
		t.Fatal(err)
	}
	release, began := disk.HoldNext()
	flushed := make(chan error, 1)
	go func() { flushed <- dev.Flush(ctx) }()
	<-began
	disk.FailNext(1)
	if err := r.st.al.sync.Sync(); err == nil {
		t.Fatal("the injected failure did not fail")
	}
	close(release)
	if err := <-flushed; err == nil {
		t.Fatal("the application flush succeeded although a flush of the data disk failed while it ran")
	} else {
		t.Logf("flush: %v", err)
	}
	if err := dev.Flush(ctx); err != nil {
		t.Fatalf("the next flush: %v (the failure was reported to the flush that ran with it)", err)
	}
}

// sawEvent reports whether events holds, among those already published,
// one of kind what whose detail contains detail.
func sawEvent(events <-chan Event, what, detail string) bool {
	for {
		select {
		case ev := <-events:
			if ev.What == what && strings.Contains(ev.Detail, detail) {
				return true
			}
		default:
			return false
		}
	}
}

// upWithSyncer brings resource r0 up on node alpha like upResource, with
// a storagetest.Syncer between its backing disk and every flush of that disk (the
// data area's and the internal metadata's), and an activity log of
// alExtents extents (0: the configured capacity).
func upWithSyncer(t *testing.T, policy string, alExtents int) (*Daemon, *resource, *storagetest.Syncer) {
	t.Helper()
	s := &storagetest.Syncer{}
	opts := Options{OpenDevice: func(path string) (Device, error) {
		b, err := kmod.OpenBacking(path)
		if err != nil {
			return nil, err
		}
		s.Next = b
		return syncedDevice{Device: b, s: s}, nil
	}}
	d, r := upNodeWith(t, policy, "alpha", opts, func(r *resource) {
		if alExtents != 0 {
			r.cfg.Disk.ALExtents = alExtents
		}
	})
	return d, r, s
}

// syncedDevice is a disk whose flushes go through a storagetest.Syncer.
type syncedDevice struct {
	Device
	s *storagetest.Syncer
}

func (d syncedDevice) Sync() error { return d.s.Sync() }

// TestFUAWriteOverlappingAFailureFails: a FUA write makes its data
// durable with a flush of its own (a durable write, RWF_DSYNC, which
// Linux treats as an fdatasync of the range: it reports a writeback error
// of the file once, to whichever flush comes first). Another flush of the
// data disk (the activity log's) fails while the FUA write's flush runs
// and takes the error; the disk lets the FUA write's succeed. The FUA
// write must fail, or a write whose data may be lost is acknowledged as
// durable.
func TestFUAWriteOverlappingAFailureFails(t *testing.T) {
	_, r, disk := upWithSyncer(t, "pass-on", 0)
	if err := r.Primary(true); err != nil {
		t.Fatal(err)
	}
	dev, ctx := device{r}, context.Background()
	if err := dev.WriteAt(ctx, make([]byte, 4096), 0, false); err != nil {
		t.Fatal(err)
	}
	release, began := disk.HoldNext()
	written := make(chan error, 1)
	go func() { written <- dev.WriteAt(ctx, make([]byte, 4096), 8192, true) }()
	<-began
	disk.FailNext(1)
	if err := r.st.al.sync.Sync(); err == nil {
		t.Fatal("the injected failure did not fail")
	}
	close(release)
	if err := <-written; err == nil {
		t.Fatal("the FUA write succeeded although a flush of the data disk failed while its own flush ran")
	} else {
		t.Logf("FUA write: %v", err)
	}
	if err := dev.WriteAt(ctx, make([]byte, 4096), 8192, true); err != nil {
		t.Fatalf("the next FUA write: %v (the failure was reported with the FUA write that ran with it)", err)
	}
}

// TestFUAWriteTakesAWritebackFailure: a plain write's writeback fails,
// and the next FUA write's durable write is the first flush of the disk
// to be told (Linux tells one). That failure concerns the plain write,
// acknowledged before: it must reach the engine as a failed flush (under
// pass-on, what was written since the last good flush is marked for
// every peer), and the next flush must not be taken for proof that the
// plain write is durable.
func TestFUAWriteTakesAWritebackFailure(t *testing.T) {
	d, r, disk := upWithSyncer(t, "pass-on", 0)
	if err := r.Primary(true); err != nil {
		t.Fatal(err)
	}
	dev, ctx := device{r}, context.Background()
	if err := dev.WriteAt(ctx, make([]byte, 4096), 0, false); err != nil {
		t.Fatal(err)
	}
	events, cancel := d.Subscribe()
	defer cancel()
	calls := disk.Calls()
	disk.FailNext(1)
	fuaErr := dev.WriteAt(ctx, make([]byte, 4096), 8192, true)
	if disk.Calls() == calls {
		t.Fatal("the FUA write never flushed the data disk")
	}
	flushErr := dev.Flush(ctx)
	engineCall(t, r, r.publishStatus)
	t.Logf("FUA write: %v; flush: %v", fuaErr, flushErr)
	if fuaErr == nil && flushErr == nil {
		t.Fatal("neither the FUA write nor the flush after it failed: the writeback failure was swallowed")
	}
	if !sawEvent(events, "disk", "marked out of sync for every peer") {
		t.Error("no event says that the engine marked what the failure may have lost")
	}
}

// WriteAtFUA writes like Linux's RWF_DSYNC: the write, then a flush that
// reports the file's writeback error, once, whichever flush asks first.
func (d syncedDevice) WriteAtFUA(p []byte, off int64) (int, error) {
	n, err := d.Device.WriteAt(p, off)
	if err != nil {
		return n, err
	}
	if err := d.s.Sync(); err != nil {
		return 0, fmt.Errorf("%w: %w", kmod.ErrDurableWrite, err)
	}
	return n, nil
}

// TestFlushAsyncWaitsForTheDiskFlush: an NBD flush that runs on the
// export's reader (FlushAsync) completes as Flush does: only once a flush
// of the disk that began after the writes completed before it returned,
// with that flush's failure.
func TestFlushAsyncWaitsForTheDiskFlush(t *testing.T) {
	_, r, disk := upWithSyncer(t, "pass-on", 0)
	if err := r.Primary(true); err != nil {
		t.Fatal(err)
	}
	dev, ctx := device{r}, context.Background()
	if err := dev.WriteAt(ctx, make([]byte, 4096), 0, false); err != nil {
		t.Fatal(err)
	}
	release, began := disk.HoldNext()
	flushed := make(chan error, 1)
	// The caller carries out the local flush itself: on a goroutine of
	// its own, as the export's reader is.
	go dev.FlushAsync(ctx, func(err error) { flushed <- err })
	select {
	case <-began:
	case err := <-flushed:
		t.Fatalf("the flush completed (%v) without flushing the disk", err)
	}
	select {
	case err := <-flushed:
		t.Fatalf("the flush completed (%v) while the disk's flush ran", err)
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	if err := <-flushed; err != nil {
		t.Fatal(err)
	}

	if err := dev.WriteAt(ctx, make([]byte, 4096), 4096, false); err != nil {
		t.Fatal(err)
	}
	disk.FailNext(1)
	go dev.FlushAsync(ctx, func(err error) { flushed <- err })
	if err := <-flushed; err == nil {
		t.Fatal("the flush succeeded although the disk's flush failed")
	}
}
