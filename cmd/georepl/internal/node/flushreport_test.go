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
			d, r, disk, dev := primaryWithSyncer(t, policy, 1)
			ctx := context.Background()
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

// primaryWithSyncer is upWithSyncer's resource made Primary, with one
// block written, and the device the application writes through.
func primaryWithSyncer(t *testing.T, policy string, alExtents int) (*Daemon, *resource, *storagetest.Syncer, device) {
	t.Helper()
	d, r, disk := upWithSyncer(t, policy, alExtents)
	if err := r.Primary(true); err != nil {
		t.Fatal(err)
	}
	dev := device{r}
	if err := dev.WriteAt(context.Background(), make([]byte, 4096), 0, false); err != nil {
		t.Fatal(err)
	}
	return d, r, disk, dev
}

// syncedDevice is a disk whose flushes go through a storagetest.Syncer.
type syncedDevice struct {
	Device
	s *storagetest.Syncer
}

func (d syncedDevice) Sync() error { return d.s.Sync() }

// TestOverlappingAFailureFails: an application flush, or a FUA write,
// runs its own flush of the data disk while another flush of that disk
// (the activity log's) fails. Linux reports a writeback error of the file
// once, to whichever flush comes first (a FUA write is a durable write,
// RWF_DSYNC, which Linux treats as an fdatasync of the range), so the
// disk lets the application's succeed: it must fail all the same, once,
// or writes whose data may be lost are acknowledged as durable.
func TestOverlappingAFailureFails(t *testing.T) {
	for _, op := range []struct {
		name string
		do   func(dev device, ctx context.Context) error
	}{
		{"flush", func(dev device, ctx context.Context) error { return dev.Flush(ctx) }},
		{"FUA write", func(dev device, ctx context.Context) error {
			return dev.WriteAt(ctx, make([]byte, 4096), 8192, true)
		}},
	} {
		t.Run(op.name, func(t *testing.T) {
			_, r, disk, dev := primaryWithSyncer(t, "pass-on", 0)
			ctx := context.Background()
			release, began := disk.HoldNext()
			done := make(chan error, 1)
			go func() { done <- op.do(dev, ctx) }()
			<-began
			disk.FailNext(1)
			if err := r.st.al.sync.Sync(); err == nil {
				t.Fatal("the injected failure did not fail")
			}
			close(release)
			if err := <-done; err == nil {
				t.Fatalf("the %s succeeded although a flush of the data disk failed while its own flush ran", op.name)
			} else {
				t.Logf("%s: %v", op.name, err)
			}
			if err := op.do(dev, ctx); err != nil {
				t.Fatalf("the next %s: %v (the failure was reported to the one that ran with it)", op.name, err)
			}
		})
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
	d, r, disk, dev := primaryWithSyncer(t, "pass-on", 0)
	ctx := context.Background()
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
	_, _, disk, dev := primaryWithSyncer(t, "pass-on", 0)
	ctx := context.Background()
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

// TestFlushAfterFUAWritesOnly: an application flush after nothing but FUA
// writes has nothing to make durable and does not flush the disk (the
// flush Linux sends after an O_DSYNC write, which follows a FUA write);
// one after a plain write does.
func TestFlushAfterFUAWritesOnly(t *testing.T) {
	_, _, disk, dev := primaryWithSyncer(t, "pass-on", 0)
	ctx := context.Background()
	flushes := func(what string, op func() error) int {
		t.Helper()
		before := disk.Calls()
		if err := op(); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		return disk.Calls() - before
	}
	// primaryWithSyncer wrote without FUA: the first flush flushes.
	if n := flushes("the first flush", func() error { return dev.Flush(ctx) }); n == 0 {
		t.Error("the first flush after a plain write did not flush the disk")
	}
	for i := range 3 {
		flushes("a FUA write", func() error { return dev.WriteAt(ctx, make([]byte, 4096), 8192, true) })
		if n := flushes("the flush after it", func() error { return dev.Flush(ctx) }); n != 0 {
			t.Errorf("round %d: the flush after a FUA write flushed the disk %d times; nothing needed it", i, n)
		}
	}
	flushes("a plain write", func() error { return dev.WriteAt(ctx, make([]byte, 4096), 8192, false) })
	if n := flushes("the flush after it", func() error { return dev.Flush(ctx) }); n == 0 {
		t.Error("the flush after a plain write did not flush the disk")
	}
}
