package storage

import (
	"errors"
	"testing"

	"github.com/georepl/georepl/cmd/georepl/internal/storage/storagetest"
	"github.com/georepl/georepl/core"
	"github.com/georepl/georepl/core/meta"
)

const alTestExtents = 16 // data area of the tests, in extents

const xs = meta.ActivityLogExtentSize

// TestRecoverActivityLog: the log of an unclean shutdown is marked in
// every peer's bitmap, bitmap ids without marks take the current
// generation, and the log is emptied.
func TestRecoverActivityLog(t *testing.T) {
	path, st := storagetest.NewMeta(t, alTestExtents)
	if err := st.UpdateSuperblock(func(sb *meta.Superblock) {
		sb.Current = 0xc0ffee
		sb.BitmapUUID[2] = 0xb17
	}); err != nil {
		t.Fatal(err)
	}
	syncs := 0
	syncData := func() error {
		// The log still names the extents when the data is flushed.
		if ext, err := st.ReadActivityLog(); err != nil || len(ext) == 0 {
			t.Errorf("the data disk was flushed after the log was emptied (%v, %v)", ext, err)
		}
		syncs++
		return nil
	}
	if n, err := recoverActivityLog(st, []core.NodeID{1, 2}, func() error { return nil }); err != nil || n != 0 {
		t.Fatalf("clean log: %d, %v", n, err)
	}
	if err := st.WriteActivityLog([]uint64{1, 15}); err != nil {
		t.Fatal(err)
	}
	failed := errors.New("injected flush failure")
	if _, err := recoverActivityLog(st, []core.NodeID{1, 2}, func() error { return failed }); !errors.Is(err, failed) {
		t.Fatalf("recover with a failing flush: %v, want the flush's error", err)
	}
	if ext, err := st.ReadActivityLog(); err != nil || len(ext) != 2 {
		t.Fatalf("after a failed flush the log holds %v (%v), want both extents kept", ext, err)
	}
	n, err := recoverActivityLog(st, []core.NodeID{1, 2}, syncData)
	if err != nil || n != 2 {
		t.Fatalf("recover: %d, %v; want 2", n, err)
	}
	if syncs != 1 {
		t.Errorf("the data disk was flushed %d times, want once (before marking)", syncs)
	}
	const blocksPerExtent = xs / 4096
	for _, p := range []int{1, 2} {
		words, err := st.ReadBitmap(p)
		if err != nil {
			t.Fatal(err)
		}
		bm, _ := core.BitmapFromWords(st.BitmapBits(), words)
		if got, want := bm.Count(), uint64(2*blocksPerExtent); got != want {
			t.Errorf("peer %d: %d blocks marked, want %d", p, got, want)
		}
		for _, b := range []uint64{blocksPerExtent, 2*blocksPerExtent - 1, 15 * blocksPerExtent, 16*blocksPerExtent - 1} {
			if !bm.Test(b) {
				t.Errorf("peer %d: block %d not marked", p, b)
			}
		}
	}
	sb := st.Superblock()
	if sb.BitmapUUID[1] != 0xc0ffee || sb.BitmapUUID[2] != 0xb17 || sb.BitmapUUID[0] != 0 {
		t.Errorf("bitmap ids %x, want [0 c0ffee b17]", sb.BitmapUUID)
	}
	if got := storagetest.ActivityLogOnDisk(t, path); len(got) != 0 {
		t.Errorf("log after recovery: %v, want empty", got)
	}
}

// TestRecoverActivityLogFlushesCleanLog: an empty log does not mean the
// data disk holds nothing volatile. A process that crashed may have left
// writes in the page cache that only its log named, and create-md (the
// operator discarding the node's metadata) then empties that log: unless
// attach flushes the data disk, a later generation (a forced promotion)
// takes those writes into its data with nothing recording them, and a
// power loss drops them on this node alone.
func TestRecoverActivityLogFlushesCleanLog(t *testing.T) {
	_, st := storagetest.NewMeta(t, alTestExtents)
	syncs := 0
	if n, err := recoverActivityLog(st, []core.NodeID{1, 2}, func() error { syncs++; return nil }); err != nil || n != 0 {
		t.Fatalf("clean log: %d, %v", n, err)
	}
	if syncs != 1 {
		t.Errorf("attach with a clean log flushed the data disk %d times, want once", syncs)
	}
	failed := errors.New("injected flush failure")
	if _, err := recoverActivityLog(st, []core.NodeID{1, 2}, func() error { return failed }); !errors.Is(err, failed) {
		t.Errorf("clean log with a failing flush: %v, want the flush's error", err)
	}
}
