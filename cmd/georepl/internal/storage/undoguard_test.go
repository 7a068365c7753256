package storage

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/georepl/georepl/core"
	"github.com/georepl/georepl/core/meta"
	"github.com/georepl/georepl/kmod"
)

const (
	undoTestBlocks = 48
	undoTestBS     = 4096
	undoTestData   = undoTestBlocks * undoTestBS
	preCurrent     = 0xC1
)

var undoTestPeers = []core.NodeID{1, 2}

// undoRig is a sync target's files: data, external metadata (node 0 of
// three) and the undo log, in dir.
type undoRig struct {
	t   *testing.T
	dir string
	pre []byte // the data before the resync
}

func (rg *undoRig) path(name string) string { return filepath.Join(rg.dir, name) }

// newUndoRig writes a pre-resync image and Outdated metadata at
// generation preCurrent.
func newUndoRig(t *testing.T) *undoRig {
	t.Helper()
	rg := &undoRig{t: t, dir: t.TempDir(), pre: make([]byte, undoTestData)}
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range rg.pre {
		rg.pre[i] = byte(rng.Uint32())
	}
	if err := os.WriteFile(rg.path("data"), rg.pre, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(rg.path("meta"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, err := meta.Create(f, 0, meta.Params{Resource: "r0", NodeID: 0, Slots: 3, DataSize: undoTestData, BlockSize: undoTestBS}, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.UpdateSuperblock(func(sb *meta.Superblock) {
		sb.DiskState, sb.Current, sb.History = uint8(core.Outdated), preCurrent, [2]uint64{0xB1, 0}
	}); err != nil {
		t.Fatal(err)
	}
	return rg
}

// target is the rig opened like a running sync target: the store, the
// guarded data area, the guard.
type target struct {
	store *meta.Store
	data  *UndoRegion
	g     *UndoGuard
	close func()
}

func (rg *undoRig) open(capacity int64) *target {
	t := rg.t
	t.Helper()
	mf, err := os.OpenFile(rg.path("meta"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	store, err := meta.Open(mf, 0)
	if err != nil {
		t.Fatal(err)
	}
	b, err := kmod.OpenBacking(rg.path("data"))
	if err != nil {
		t.Fatal(err)
	}
	u, uf, err := openUndo(rg.path("undo"), capacity, "r0", 0, undoTestData, undoTestBS)
	if err != nil {
		t.Fatal(err)
	}
	region := &GatedRegion{Region: b.Region(0, undoTestData)}
	region.Gate = NewSyncGate(region.Region)
	g, err := newUndoGuard(u, uf, rg.path("undo"), region.Region, undoTestData, undoTestBS)
	if err != nil {
		t.Fatal(err)
	}
	g.SetWarn(func(string) {})
	return &target{store: store, data: NewUndoRegion(region, g), g: g, close: func() {
		g.Freeze()
		b.Close()
		uf.Close()
		mf.Close()
	}}
}

// startResync does what persistWithUndo does when the engine persists the
// disk Inconsistent.
func (tg *target) startResync(t *testing.T) {
	t.Helper()
	if _, err := tg.g.Begin(tg.store.Superblock()); err != nil {
		t.Fatal(err)
	}
	if err := tg.store.UpdateSuperblock(func(sb *meta.Superblock) { sb.DiskState = uint8(core.Inconsistent) }); err != nil {
		t.Fatal(err)
	}
}

// overwrite writes like a resync and replicated writes do: concurrent,
// not overlapping, some unaligned, some zeroes and trims. It returns the
// blocks it touched.
func (tg *target) overwrite(t *testing.T, seed uint64, n int) map[uint64]bool {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 3))
	touched := map[uint64]bool{}
	var wg sync.WaitGroup
	errs := make(chan error, n)
	// Disjoint ranges per round, so that concurrent writes never overlap
	// (the engine's promise).
	for round := 0; round < n; round += 4 {
		for j := range 4 {
			lo := uint64(j * undoTestData / 4)
			off := lo + rng.Uint64N(undoTestData/4-3*undoTestBS)
			length := 1 + rng.Uint64N(2*undoTestBS)
			for b := off / undoTestBS; b < (off+length+undoTestBS-1)/undoTestBS; b++ {
				touched[b] = true
			}
			kind := rng.IntN(6)
			wg.Add(1)
			go func() {
				defer wg.Done()
				var err error
				switch kind {
				case 0:
					err = tg.data.WriteZeroes(int64(off), int64(length))
				case 1:
					err = tg.data.Punch(int64(off), int64(length))
				default:
					p := bytes.Repeat([]byte{byte(kind)}, int(length))
					_, err = tg.data.WriteAt(p, int64(off))
				}
				if err != nil {
					errs <- err
				}
			}()
		}
		wg.Wait()
	}
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	return touched
}

// crashDev fails every write once its budget is spent, as if the process
// died there; reads and syncs still work.
type crashDev struct {
	f      *os.File
	budget *int
}

var errCrash = errors.New("crashed (simulated)")

func (d crashDev) ReadAt(p []byte, off int64) (int, error) { return d.f.ReadAt(p, off) }
func (d crashDev) Sync() error                             { return d.f.Sync() }
func (d crashDev) WriteAt(p []byte, off int64) (int, error) {
	if *d.budget == 0 {
		return 0, errCrash
	}
	*d.budget--
	return d.f.WriteAt(p, off)
}

// attach runs what openStorage does with the undo log (a requested
// rollback, then recoverUndo) on fresh handles, every write counted
// against budget (-1: unlimited).
func (rg *undoRig) attach(rollBack bool, budget int) (string, error) {
	t := rg.t
	t.Helper()
	var files []*os.File
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	dev := func(name string) crashDev {
		f, err := os.OpenFile(rg.path(name), os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
		return crashDev{f: f, budget: &budget}
	}
	md, dd, ud := dev("meta"), dev("data"), dev("undo")
	store, err := meta.Open(md, 0)
	if err != nil {
		t.Fatal(err)
	}
	u, err := meta.OpenUndo(ud)
	if err != nil {
		t.Fatal(err)
	}
	if rollBack {
		if err := requestRollback(store, u); err != nil {
			return "", err
		}
	}
	return recoverUndo(store, u, dd, undoTestPeers)
}

// checkRolledBack: the data is the pre-resync image, the metadata says
// Outdated at the pre-resync generation with every touched block marked
// for every peer, and the undo log is idle.
func (rg *undoRig) checkRolledBack(touched map[uint64]bool) {
	t := rg.t
	t.Helper()
	got, err := os.ReadFile(rg.path("data"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[:undoTestData], rg.pre) {
		for b := 0; b < undoTestBlocks; b++ {
			if !bytes.Equal(got[b*undoTestBS:(b+1)*undoTestBS], rg.pre[b*undoTestBS:(b+1)*undoTestBS]) {
				t.Fatalf("block %d differs from the pre-resync image after the rollback", b)
			}
		}
	}
	f, err := os.Open(rg.path("meta"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	store, err := meta.Open(f, 0)
	if err != nil {
		t.Fatal(err)
	}
	sb := store.Superblock()
	if core.DiskState(sb.DiskState) != core.Outdated || sb.Current != preCurrent || sb.History != [2]uint64{0xB1, 0} ||
		sb.BitmapUUID[1] != preCurrent || sb.BitmapUUID[2] != preCurrent {
		t.Fatalf("superblock after rollback: disk %v current %x history %x bitmap ids %x",
			core.DiskState(sb.DiskState), sb.Current, sb.History, sb.BitmapUUID)
	}
	for _, p := range undoTestPeers {
		words, err := store.ReadBitmap(int(p))
		if err != nil {
			t.Fatal(err)
		}
		for b := range touched {
			if words[b/64]&(1<<(b%64)) == 0 {
				t.Fatalf("block %d was rolled back but is not marked for peer %d", b, p)
			}
		}
	}
	uf, err := os.Open(rg.path("undo"))
	if err != nil {
		t.Fatal(err)
	}
	defer uf.Close()
	u, err := meta.OpenUndo(uf)
	if err != nil {
		t.Fatal(err)
	}
	if st := u.Header().State; st != meta.UndoIdle {
		t.Fatalf("undo log %s after the rollback", st)
	}
}

func (rg *undoRig) snapshot() map[string][]byte {
	out := map[string][]byte{}
	for _, n := range []string{"data", "meta", "undo"} {
		b, err := os.ReadFile(rg.path(n))
		if err != nil {
			rg.t.Fatal(err)
		}
		out[n] = b
	}
	return out
}

func (rg *undoRig) restore(s map[string][]byte) {
	for n, b := range s {
		if err := os.WriteFile(rg.path(n), b, 0o644); err != nil {
			rg.t.Fatal(err)
		}
	}
}

// TestUndoRollbackCrashEverywhere: a sync target overwrites blocks (data,
// zeroes, trims, unaligned, concurrent) and restarts in the middle of its
// resync (the session goes on, without saving a block twice); then the
// rollback is asked for and crashes at every one of its writes. The next
// attach always completes it: the data is exactly the pre-resync image,
// the metadata the pre-resync generation, Outdated, with the restored
// blocks marked for every peer.
func TestUndoRollbackCrashEverywhere(t *testing.T) {
	rg := newUndoRig(t)
	tg := rg.open(1 << 20)
	tg.startResync(t)
	touched := tg.overwrite(t, 1, 24)
	tg.close()

	// The target restarts: the session goes on.
	tg = rg.open(1 << 20)
	if st := tg.g.Status(); st.State != "active" || st.SavedBlocks != uint64(len(touched)) {
		t.Fatalf("after a restart: %+v, want active with %d blocks", st, len(touched))
	}
	used, _ := tg.g.log.Used()
	for b := range touched { // overwriting saved blocks saves nothing
		if _, err := tg.data.WriteAt(bytes.Repeat([]byte{9}, undoTestBS), int64(b*undoTestBS)); err != nil {
			t.Fatal(err)
		}
	}
	if again, _ := tg.g.log.Used(); again != used {
		t.Fatalf("overwriting saved blocks grew the log from %d to %d bytes", used, again)
	}
	for b := range tg.overwrite(t, 2, 8) {
		touched[b] = true
	}
	tg.close()

	before := rg.snapshot()
	if _, err := rg.attach(true, -1); err != nil {
		t.Fatal(err)
	}
	rg.checkRolledBack(touched)
	rg.restore(before)
	budget := 0
	for {
		rg.restore(before)
		msg, err := rg.attach(true, budget)
		if err == nil {
			if !strings.Contains(msg, "rolled back") {
				t.Fatalf("unlimited enough budget %d: %q", budget, msg)
			}
			rg.checkRolledBack(touched)
			break
		}
		if !errors.Is(err, errCrash) {
			t.Fatalf("budget %d: %v", budget, err)
		}
		// The next attach: the rollback is finished if it was asked for
		// durably; if not, the session goes on and the operator asks again.
		msg, err = rg.attach(false, -1)
		if err != nil {
			t.Fatalf("budget %d: attach after the crash: %v", budget, err)
		}
		if strings.Contains(msg, "goes on") {
			if budget != 0 {
				t.Fatalf("budget %d: the rollback request was not durable after its write", budget)
			}
			if _, err := rg.attach(true, -1); err != nil {
				t.Fatal(err)
			}
		}
		rg.checkRolledBack(touched)
		budget++
	}
	if budget < 5 {
		t.Fatalf("only %d crash points", budget)
	}
	t.Logf("%d blocks rolled back, crashed at each of %d writes", len(touched), budget)
}

// TestUndoExhausted: a log too small for the resync is marked exhausted,
// durably and with one warning, before the first overwrite it cannot
// save; writes go on; a rollback is refused, saying why; the session ends
// when the disk is UpToDate.
func TestUndoExhausted(t *testing.T) {
	rg := newUndoRig(t)
	capacity := int64(meta.UndoRecordsOffset + 3*(meta.UndoRecordHeader+undoTestBS))
	tg := rg.open(capacity)
	var warnings []string
	tg.g.SetWarn(func(msg string) { warnings = append(warnings, msg) })
	tg.startResync(t)
	for b := range 6 {
		if _, err := tg.data.WriteAt(bytes.Repeat([]byte{7}, undoTestBS), int64(b*2*undoTestBS)); err != nil {
			t.Fatal(err)
		}
	}
	if st := tg.g.Status(); st.State != "exhausted" || st.SavedBlocks != 3 {
		t.Fatalf("status %+v, want exhausted with 3 blocks", st)
	}
	if len(warnings) != 1 || !strings.Contains(warnings[0], "consistent resync space exhausted") ||
		!strings.Contains(warnings[0], "Inconsistent until the resync completes") {
		t.Fatalf("warnings %q", warnings)
	}
	got := make([]byte, undoTestBS)
	if _, err := tg.data.ReadAt(got, 10*undoTestBS); err != nil || got[0] != 7 {
		t.Fatalf("the write past the exhaustion did not land: %v", err)
	}
	tg.close()
	if _, err := rg.attach(true, -1); err == nil || !strings.Contains(err.Error(), "ran out of space") {
		t.Fatalf("rollback of an exhausted session: %v", err)
	}
	tg = rg.open(capacity)
	if st := tg.g.Status(); st.State != "exhausted" {
		t.Fatalf("after restart: %+v", st)
	}
	// The resync completes: the engine persists UpToDate, and the
	// session ends (persistWithUndo).
	if err := tg.store.UpdateSuperblock(func(sb *meta.Superblock) { sb.DiskState = uint8(core.UpToDate) }); err != nil {
		t.Fatal(err)
	}
	if ended, err := tg.g.End(); !ended || err != nil {
		t.Fatalf("end: %v, %v", ended, err)
	}
	tg.close()
	tg = rg.open(capacity)
	if st := tg.g.Status(); st.State != "idle" || st.SavedBlocks != 0 {
		t.Fatalf("after the resync: %+v", st)
	}
	// A resync of a disk that was not consistent has nothing to keep.
	if err := tg.store.UpdateSuperblock(func(sb *meta.Superblock) { sb.DiskState = uint8(core.Inconsistent) }); err != nil {
		t.Fatal(err)
	}
	if began, err := tg.g.Begin(tg.store.Superblock()); began || err != nil {
		t.Fatalf("begin on an Inconsistent disk: %v, %v", began, err)
	}
	tg.close()
}

// TestUndoAttachDiscardsFinished: a session whose disk is no longer
// Inconsistent (a crash between the superblock write and the session's
// end) is discarded at attach, never rolled back.
func TestUndoAttachDiscardsFinished(t *testing.T) {
	rg := newUndoRig(t)
	tg := rg.open(1 << 20)
	tg.startResync(t)
	tg.overwrite(t, 3, 8)
	if err := tg.store.UpdateSuperblock(func(sb *meta.Superblock) { sb.DiskState = uint8(core.UpToDate) }); err != nil {
		t.Fatal(err)
	}
	tg.close()
	after, err := os.ReadFile(rg.path("data"))
	if err != nil {
		t.Fatal(err)
	}
	msg, err := rg.attach(false, -1)
	if err != nil || !strings.Contains(msg, "discarded") {
		t.Fatalf("attach: %q, %v", msg, err)
	}
	now, _ := os.ReadFile(rg.path("data"))
	if !bytes.Equal(now, after) {
		t.Fatal("a finished resync was rolled back")
	}
	if _, err := rg.attach(true, -1); err == nil || !strings.Contains(err.Error(), "nothing to roll back") {
		t.Fatalf("rollback of an UpToDate disk: %v", err)
	}
}

// TestUndoBadFile: an undo log that is damaged, foreign or not one at all
// is refused naming the file and what is wrong, and left as it is.
func TestUndoBadFile(t *testing.T) {
	rg := newUndoRig(t)
	tg := rg.open(1 << 20)
	tg.startResync(t)
	tg.overwrite(t, 4, 4)
	tg.close()
	path := rg.path("undo")
	good, _ := os.ReadFile(path)

	bad := bytes.Clone(good)
	bad[100] ^= 1
	bad[meta.PageSize+100] ^= 1
	os.WriteFile(path, bad, 0o644)
	_, _, err := openUndo(path, 1<<20, "r0", 0, undoTestData, undoTestBS)
	if !errors.Is(err, meta.ErrCorrupt) || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "slot 0") {
		t.Fatalf("damaged headers: %v", err)
	}
	if now, _ := os.ReadFile(path); !bytes.Equal(now, bad) {
		t.Fatal("the damaged log was changed")
	}

	os.WriteFile(path, good, 0o644)
	if _, _, err := openUndo(path, 1<<20, "r1", 0, undoTestData, undoTestBS); !errors.Is(err, meta.ErrForeign) || !strings.Contains(err.Error(), path) {
		t.Fatalf("another resource's log: %v", err)
	}

	// Truncated: records may be gone, so no rollback from it.
	os.WriteFile(path, good[:meta.UndoRecordsOffset+1000], 0o644)
	if _, _, err := openUndo(path, 1<<20, "r0", 0, undoTestData, undoTestBS); !errors.Is(err, meta.ErrTruncated) || !strings.Contains(err.Error(), path) {
		t.Fatalf("a truncated log: %v", err)
	}
	if now, _ := os.ReadFile(path); len(now) != meta.UndoRecordsOffset+1000 {
		t.Fatal("the truncated log was changed")
	}

	// Idle, it follows a new capacity.
	os.WriteFile(path, good, 0o644)
	u, f, err := openUndo(path, 1<<20, "r0", 0, undoTestData, undoTestBS)
	if err != nil {
		t.Fatal(err)
	}
	if err := u.End(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	u, f, err = openUndo(path, 2<<20, "r0", 0, undoTestData, undoTestBS)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if fi, _ := os.Stat(path); u.Header().Capacity != 2<<20 || fi.Size() != 2<<20 {
		t.Fatalf("resized idle log: capacity %d, file %d bytes", u.Header().Capacity, fi.Size())
	}

	os.WriteFile(path, bytes.Repeat([]byte("not a log"), 2000), 0o644)
	if _, _, err := openUndo(path, 1<<20, "r0", 0, undoTestData, undoTestBS); !errors.Is(err, meta.ErrNoMetadata) || !strings.Contains(err.Error(), "holds something else") {
		t.Fatalf("a foreign file: %v", err)
	}
}

// BenchmarkUndoFirstWrite is the cost the undo log adds to a sync
// target's write of a 4 KiB block not yet saved in the session (read,
// record, sync), against the same write outside a session; writes of
// saved blocks cost what plain writes do.
func BenchmarkUndoFirstWrite(b *testing.B) {
	for _, session := range []bool{false, true} {
		b.Run(map[bool]string{false: "plain", true: "first-overwrite"}[session], func(b *testing.B) {
			t := &testing.T{}
			rg := &undoRig{t: t, dir: b.TempDir(), pre: make([]byte, undoTestData)}
			if err := os.WriteFile(rg.path("data"), rg.pre, 0o644); err != nil {
				b.Fatal(err)
			}
			f, err := os.Create(rg.path("meta"))
			if err != nil {
				b.Fatal(err)
			}
			defer f.Close()
			st, err := meta.Create(f, 0, meta.Params{Resource: "r0", NodeID: 0, Slots: 3, DataSize: undoTestData, BlockSize: undoTestBS}, false)
			if err != nil {
				b.Fatal(err)
			}
			if err := st.UpdateSuperblock(func(sb *meta.Superblock) { sb.DiskState = uint8(core.Outdated) }); err != nil {
				b.Fatal(err)
			}
			tg := rg.open(1 << 30)
			defer tg.close()
			if session {
				tg.startResync(t)
			}
			buf := make([]byte, undoTestBS)
			b.SetBytes(undoTestBS)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				blk := i % undoTestBlocks
				if i > 0 && blk == 0 && session {
					b.StopTimer()
					tg.g.saved.ClearRange(0, tg.g.saved.Len()) // every write is a first overwrite
					b.StartTimer()
				}
				if _, err := tg.data.WriteAt(buf, int64(blk*undoTestBS)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestUndoSavesEachUnsavedRunOnce: a save records, as one record each, the
// runs of blocks not saved yet in the session, with their old content,
// and skips the blocks saved before; the last block of the data may be
// saved, nothing beyond it.
func TestUndoSavesEachUnsavedRunOnce(t *testing.T) {
	rg := newUndoRig(t)
	tg := rg.open(1 << 20)
	defer tg.close()
	tg.startResync(t)
	for _, r := range [][2]uint64{{3, 2}, {7, 1}, {0, 9}, {undoTestBlocks - 2, 5}} {
		if err := tg.g.save(r[0]*undoTestBS, r[1]*undoTestBS); err != nil {
			t.Fatal(err)
		}
	}
	type record struct{ first, blocks uint64 }
	var got []record
	if err := tg.g.log.Records(func(first uint64, d []byte) error {
		got = append(got, record{first, uint64(len(d)) / undoTestBS})
		if !bytes.Equal(d, rg.pre[first*undoTestBS:first*undoTestBS+uint64(len(d))]) {
			t.Errorf("record at block %d does not hold the old content", first)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	want := []record{{3, 2}, {7, 1}, {0, 3}, {5, 2}, {8, 1}, {undoTestBlocks - 2, 2}}
	if !slices.Equal(got, want) {
		t.Fatalf("records %v, want %v", got, want)
	}
	if st := tg.g.Status(); st.SavedBlocks != 11 {
		t.Fatalf("%d blocks saved, want 11", st.SavedBlocks)
	}
}
