package node

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"sync/atomic"
	"testing"
	"time"

	"github.com/georepl/georepl/cmd/georepl/internal/storage"
	"github.com/georepl/georepl/cmd/georepl/internal/storage/storagetest"
	"github.com/georepl/georepl/core/meta"
	"github.com/georepl/georepl/kmod"
)

const alTestExtents = 16 // data area of the tests, in extents

type countingSyncer struct{ n atomic.Int64 }

func (c *countingSyncer) Sync() error { c.n.Add(1); return nil }

const xs = meta.ActivityLogExtentSize

// TestActivityLogActivation: an extent is in the log on disk when acquire
// or a write through the gated region returns; extents a request spans
// are all activated; a hot extent costs no transaction.
func TestActivityLogActivation(t *testing.T) {
	path, st := storagetest.NewMeta(t, alTestExtents)
	al := newActivityLog(st, storage.NewSyncGate(&countingSyncer{}), 8)
	defer al.close(true)

	release, err := al.acquire(context.Background(), 2*xs-4096, 8192) // spans extents 1 and 2
	if err != nil {
		t.Fatal(err)
	}
	if got := storagetest.ActivityLogOnDisk(t, path); !reflect.DeepEqual(got, []uint64{1, 2}) {
		t.Fatalf("log after acquire: %v, want [1 2]", got)
	}
	release()
	_, writes := al.stats()
	if release, err := al.acquire(context.Background(), xs, 4096); err != nil {
		t.Fatal(err)
	} else {
		release()
	}
	if _, w := al.stats(); w != writes {
		t.Errorf("a hot extent cost %d transactions", w-writes)
	}

	dataPath := filepath.Join(t.TempDir(), "data")
	if err := os.WriteFile(dataPath, make([]byte, alTestExtents*xs), 0o644); err != nil {
		t.Fatal(err)
	}
	b, err := kmod.OpenBacking(dataPath)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	region := &alRegion{GatedRegion: &storage.GatedRegion{Region: b.Region(0, alTestExtents*xs), Gate: al.sync}, al: al}
	if _, err := region.WriteAt([]byte("x"), 7*xs+5); err != nil {
		t.Fatal(err)
	}
	if err := region.WriteZeroes(9*xs, 4096); err != nil {
		t.Fatal(err)
	}
	if got := storagetest.ActivityLogOnDisk(t, path); !reflect.DeepEqual(got, []uint64{1, 2, 7, 9}) {
		t.Fatalf("log after gated writes: %v, want [1 2 7 9]", got)
	}
	if _, err := al.acquire(context.Background(), alTestExtents*xs, 4096); err == nil {
		t.Errorf("acquire beyond the data succeeded")
	}
}

// TestActivityLogEviction: with the log full, a write to a new extent
// waits until an unpinned extent was observed settled and the data disk
// flushed after that; the least recently used such extent leaves.
func TestActivityLogEviction(t *testing.T) {
	path, st := storagetest.NewMeta(t, alTestExtents)
	data := &countingSyncer{}
	al := newActivityLog(st, storage.NewSyncGate(data), 3)
	defer al.close(true)
	var reclaims atomic.Int64
	al.setReclaim(func() { reclaims.Add(1) })
	ctx := context.Background()
	for _, x := range []uint64{0, 1, 2} {
		release, err := al.acquire(ctx, x*xs, 4096)
		if err != nil {
			t.Fatal(err)
		}
		release()
	}
	pinned, err := al.acquire(ctx, 0, 4096) // extent 0: most recent use, and pinned
	if err != nil {
		t.Fatal(err)
	}

	done := make(chan error, 1)
	go func() {
		release, err := al.acquire(ctx, 5*xs, 4096)
		if err == nil {
			release()
		}
		done <- err
	}()
	waitFor(t, "the acquire to ask for reclaim", func() bool { return reclaims.Load() > 0 })
	al.observe(func(off, length uint64) bool { return false })
	select {
	case err := <-done:
		t.Fatalf("acquire returned (%v) with nothing settled", err)
	case <-time.After(100 * time.Millisecond):
	}

	// Everything settled: extent 0 is pinned, so not a candidate; 1 is
	// the least recently used of the others.
	syncs := data.n.Load()
	var asked []uint64
	al.observe(func(off, length uint64) bool {
		if length != xs {
			t.Errorf("Settled asked for %d bytes", length)
		}
		asked = append(asked, off/xs)
		return true
	})
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	for _, x := range asked {
		if x == 0 {
			t.Errorf("a pinned extent was checked for settling")
		}
	}
	if data.n.Load() == syncs {
		t.Errorf("extents retired without a flush of the data disk after they settled")
	}
	if got := storagetest.ActivityLogOnDisk(t, path); !reflect.DeepEqual(got, []uint64{0, 2, 5}) {
		t.Fatalf("log: %v, want [0 2 5] (extent 1 least recently used)", got)
	}

	// A write on an observed extent makes it busy again: extent 2 was
	// observed settled, is written again, and must not be evicted.
	pinned()
	al.observe(func(off, length uint64) bool { return true }) // 0, 2, 5 observed
	if err := al.gate(2*xs, 4096); err != nil {
		t.Fatal(err)
	}
	release, err := al.acquire(ctx, 6*xs, 4096)
	if err != nil {
		t.Fatal(err)
	}
	release()
	if got := storagetest.ActivityLogOnDisk(t, path); !reflect.DeepEqual(got, []uint64{2, 5, 6}) {
		t.Fatalf("log: %v, want [2 5 6]", got)
	}
}

// TestActivityLogGateExceedsCapacity: a local write never waits for a slot
// (the writes holding the slots may settle only after it).
func TestActivityLogGateExceedsCapacity(t *testing.T) {
	path, st := storagetest.NewMeta(t, alTestExtents)
	al := newActivityLog(st, storage.NewSyncGate(&countingSyncer{}), 2)
	defer al.close(true)
	for x := range uint64(4) {
		if err := al.gate(x*xs, 4096); err != nil {
			t.Fatal(err)
		}
	}
	if got := storagetest.ActivityLogOnDisk(t, path); len(got) != 4 {
		t.Fatalf("log: %v, want 4 extents", got)
	}
}

// TestActivityLogCleanClose: closing retires what was observed settled
// (the caller flushed after the observation) and keeps the rest.
func TestActivityLogCleanClose(t *testing.T) {
	path, st := storagetest.NewMeta(t, alTestExtents)
	al := newActivityLog(st, storage.NewSyncGate(&countingSyncer{}), 8)
	for _, x := range []uint64{3, 4} {
		if err := al.gate(x*xs, 4096); err != nil {
			t.Fatal(err)
		}
	}
	al.observe(func(off, length uint64) bool { return off/xs == 3 })
	if left, err := al.close(true); err != nil || left != 1 {
		t.Fatalf("close: %d left, %v; want 1", left, err)
	}
	if got := storagetest.ActivityLogOnDisk(t, path); !reflect.DeepEqual(got, []uint64{4}) {
		t.Fatalf("log after close: %v, want [4]", got)
	}
	if err := al.gate(5*xs, 1); err != errALClosed {
		t.Errorf("gate after close: %v, want errALClosed", err)
	}

	// Not flushed: nothing observed is retired.
	path, st = storagetest.NewMeta(t, alTestExtents)
	al = newActivityLog(st, storage.NewSyncGate(&countingSyncer{}), 8)
	if err := al.gate(3*xs, 4096); err != nil {
		t.Fatal(err)
	}
	al.observe(func(off, length uint64) bool { return true })
	if left, _ := al.close(false); left != 1 || !reflect.DeepEqual(storagetest.ActivityLogOnDisk(t, path), []uint64{3}) {
		t.Fatalf("close without flush retired extents")
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestActivityLogAcquireCanceled: a request waiting for a slot gives up
// when its context ends, and holds nothing.
func TestActivityLogAcquireCanceled(t *testing.T) {
	_, st := storagetest.NewMeta(t, alTestExtents)
	al := newActivityLog(st, storage.NewSyncGate(&countingSyncer{}), 2)
	defer al.close(true)
	for _, x := range []uint64{0, 1} {
		if _, err := al.acquire(context.Background(), x*xs, 4096); err != nil { // pinned for good
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := al.acquire(ctx, 3*xs, 4096); err != context.DeadlineExceeded {
		t.Fatalf("acquire with the log full of pinned extents: %v, want DeadlineExceeded", err)
	}
	if n, _ := al.stats(); n != 2 {
		t.Errorf("%d extents active, want 2", n)
	}
}

// TestActivityLogRequestLargerThanLog: a request spanning more extents
// than the log holds (mkfs's discard of the whole device) goes in once
// nothing outside its range is active, even when extents inside it are
// (found by the VM rig: mkfs.ext4 hung on a 256 MiB device with
// al_extents = 8).
func TestActivityLogRequestLargerThanLog(t *testing.T) {
	_, st := storagetest.NewMeta(t, alTestExtents)
	al := newActivityLog(st, storage.NewSyncGate(&countingSyncer{}), 3)
	defer al.close(true)
	for _, x := range []uint64{0, 1, 9} {
		release, err := al.acquire(context.Background(), x*xs, 4096)
		if err != nil {
			t.Fatal(err)
		}
		release()
	}
	al.observe(func(off, length uint64) bool { return true })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	release, err := al.acquire(ctx, 0, 6*xs) // extents 0 to 5; 0 and 1 active
	if err != nil {
		t.Fatalf("acquire of 6 extents with a log of 3: %v", err)
	}
	release()
	if active, _ := al.stats(); active != 6 {
		t.Errorf("%d extents active; want the request's 6 (extent 9 evicted)", active)
	}
}

// gatedSyncer is a data disk whose every Sync reports that it began
// (began) and then waits for the test to let it finish (a send on
// finish); once finish is closed, syncs return at once.
type gatedSyncer struct {
	began  chan struct{}
	finish chan struct{}
}

func newGatedSyncer() *gatedSyncer {
	return &gatedSyncer{began: make(chan struct{}), finish: make(chan struct{})}
}

func (g *gatedSyncer) Sync() error {
	select {
	case g.began <- struct{}{}:
	case <-g.finish:
		return nil
	}
	<-g.finish
	return nil
}

// TestActivityLogObservedDuringFlush: an extent observed settled while
// the writer's flush of the data disk is already running is not retired
// by that flush (its writes may have reached the disk's cache after the
// flush began), only by the next one.
func TestActivityLogObservedDuringFlush(t *testing.T) {
	path, st := storagetest.NewMeta(t, alTestExtents)
	data := newGatedSyncer()
	al := newActivityLog(st, storage.NewSyncGate(data), 3)
	defer func() {
		close(data.finish)
		al.close(true)
	}()
	ctx := context.Background()
	for _, x := range []uint64{0, 1, 2} {
		release, err := al.acquire(ctx, x*xs, 4096)
		if err != nil {
			t.Fatal(err)
		}
		release()
	}
	al.observe(func(off, length uint64) bool { return off/xs == 0 })

	// Two new extents: the log must give up two of its three.
	done := make(chan error, 1)
	go func() {
		release, err := al.acquire(ctx, 5*xs, 2*xs)
		if err == nil {
			release()
		}
		done <- err
	}()
	select {
	case <-data.began: // the flush for extent 0
	case <-time.After(5 * time.Second):
		t.Fatal("no flush of the data disk while an acquire waits for a slot")
	}
	// Extent 1 settles now, while that flush runs.
	al.observe(func(off, length uint64) bool { return off/xs == 1 })
	data.finish <- struct{}{}

	select {
	case err := <-done:
		t.Fatalf("the acquire returned (%v) after one flush: extent 1 was retired by a flush that began before it was observed settled; log %v", err, storagetest.ActivityLogOnDisk(t, path))
	case <-data.began: // the flush for extent 1
	case <-time.After(5 * time.Second):
		t.Fatal("no second flush while extent 1 waits to be retired")
	}
	al.mu.Lock()
	state, active := al.t.State(1)
	al.mu.Unlock()
	if !active || state == storage.ALEvictable {
		t.Fatalf("extent 1 retired before a flush that began after its observation ended (active %v, state %v)", active, state)
	}
	data.finish <- struct{}{}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got := storagetest.ActivityLogOnDisk(t, path); !reflect.DeepEqual(got, []uint64{2, 5, 6}) {
		t.Fatalf("log: %v, want [2 5 6]", got)
	}
}

// TestActivityLogFailedFlushRetiresNothing: when a flush of the data disk
// fails, the writes of the extents the log was to retire may be lost.
// Retrying until a flush succeeds would retire them all the same (the
// next flush succeeds: Linux reports the error once). The extents stay
// until the engine handled the failure (marked what it may have lost,
// which persistBitmaps writes) and they were observed settled again after
// that, whether the writer's own flush failed or another one.
func TestActivityLogFailedFlushRetiresNothing(t *testing.T) {
	for _, tt := range []struct {
		name string
		own  bool // the writer's own flush fails (else another one)
		// handledFirst: the engine handled the other flush's failure
		// before the writer flushes (which then succeeds).
		handledFirst bool
	}{
		{name: "its own flush", own: true},
		{name: "another flush"},
		{name: "another flush, handled before the writer's", handledFirst: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, st := storagetest.NewMeta(t, alTestExtents)
			data := &storagetest.Syncer{}
			gate := storage.NewSyncGate(data)
			var reports atomic.Int32
			gate.SetReport(func() { reports.Add(1) })
			al := newActivityLog(st, gate, 3)
			defer al.close(false)
			ctx := context.Background()
			for _, x := range []uint64{0, 1, 2} {
				release, err := al.acquire(ctx, x*xs, 4096)
				if err != nil {
					t.Fatal(err)
				}
				release()
			}
			al.observe(func(off, length uint64) bool { return true })
			data.FailNext(1)
			if !tt.own {
				// Say, the engine's flush, before the writer's.
				if err := gate.Sync(); err == nil {
					t.Fatal("the injected failure did not fail")
				}
			}
			if tt.handledFirst {
				gate.TakeUnreported()
			}

			done := make(chan error, 1)
			go func() {
				release, err := al.acquire(ctx, 5*xs, 4096)
				if err == nil {
					release()
				}
				done <- err
			}()
			if !tt.handledFirst {
				waitFor(t, "the failure", func() bool { return reports.Load() > 0 })
				// The writer retries meanwhile (every 100 ms); the disk
				// would let every flush succeed now.
				select {
				case err := <-done:
					t.Fatalf("the acquire returned (%v) while the failed flush was not handled: extents retired whose writes it may have lost", err)
				case <-time.After(300 * time.Millisecond):
				}
				al.observe(func(off, length uint64) bool { return true }) // not handled: observes nothing
				// The engine handles the failure.
				gate.TakeUnreported()
			} else {
				waitFor(t, "the writer's flush", func() bool { return data.Calls() > 1 })
			}
			// The observations from before the failure no longer count.
			select {
			case err := <-done:
				t.Fatalf("the acquire returned (%v) on an observation made before the failure was handled", err)
			case <-time.After(300 * time.Millisecond):
			}
			al.observe(func(off, length uint64) bool { return true })
			if err := <-done; err != nil {
				t.Fatal(err)
			}
		})
	}
}
