package node

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/georepl/georepl/core/meta"
)

// TestResizeInterruptedThenDone: a resize that fails at its commit (an
// I/O error on the new superblock, where a crash could also stop it) takes
// the resource down, and the next up finds the old metadata through the
// resize record: the old size, every byte written before. Resized again,
// the resource serves the new size, keeps the old data, and keeps both
// across a down and up.
func TestResizeInterruptedThenDone(t *testing.T) {
	trigger := filepath.Join(t.TempDir(), "faults")
	d, r := upNodeWith(t, "pass-on", "alpha", Options{}, func(r *resource) { r.d.InjectIOFaults(trigger) })
	if err := r.Primary(true); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	write := func(off uint64, fill byte, n int) {
		t.Helper()
		dev := device{r}
		buf := dev.WriteBuffer(n)
		for i := range buf {
			buf[i] = fill + byte(i>>12)
		}
		if err := dev.WriteAt(ctx, buf, off, false); err != nil {
			t.Fatalf("write at %d: %v", off, err)
		}
	}
	check := func(off uint64, fill byte, n int) {
		t.Helper()
		got := make([]byte, n)
		if err := (device{r}).ReadAt(ctx, got, off); err != nil {
			t.Fatalf("read at %d: %v", off, err)
		}
		for i := range got {
			if got[i] != fill+byte(i>>12) {
				t.Fatalf("byte %d of [%d, +%d) is %#x, want %#x", i, off, n, got[i], fill+byte(i>>12))
			}
		}
	}
	oldSize := r.st.size.Load()
	write(0, 'a', 1<<20)
	write(oldSize-64<<10, 'z', 64<<10)

	const grown = 48 << 20
	if err := os.Truncate(r.self.Disk, grown); err != nil {
		t.Fatal(err)
	}
	_, newMeta, _, err := meta.InternalLayout(grown, bitmapSlots(r.cfg), uint32(r.cfg.Disk.BlockSize))
	if err != nil {
		t.Fatal(err)
	}
	interrupt := func(off int64, what string) {
		t.Helper()
		if err := os.WriteFile(trigger, fmt.Appendf(nil, "%d %d", off, meta.PageSize), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := r.Resize(false); err == nil || !strings.Contains(err.Error(), what) {
			t.Fatalf("resize failing at %s: %v", what, err)
		}
		waitDown(t, d)
		if err := os.Remove(trigger); err != nil {
			t.Fatal(err)
		}
	}
	upOld := func() {
		t.Helper()
		if err := r.Up(); err != nil {
			t.Fatalf("up after the interrupted resize: %v", err)
		}
		if got := r.st.size.Load(); got != oldSize {
			t.Fatalf("up after the interrupted resize: %d bytes, want the old %d", got, oldSize)
		}
		if err := r.Primary(true); err != nil {
			t.Fatal(err)
		}
		check(0, 'a', 1<<20)
		check(oldSize-64<<10, 'z', 64<<10)
	}

	// Interrupted before the resize record: the state of a disk grown
	// and not resized. Up says where the metadata is; with the disk's
	// old size back it comes up as it was.
	interrupt(newMeta, "superblock slot 0 (zeroes)")
	if err := r.Up(); err == nil || !strings.Contains(err.Error(), "give the disk its old size back") {
		t.Fatalf("up on the grown disk without a resize record: %v", err)
	}
	if err := os.Truncate(r.self.Disk, 16<<20); err != nil {
		t.Fatal(err)
	}
	upOld()
	if r.st.Resized != nil {
		t.Fatalf("a resize record at the old size: %+v", r.st.Resized)
	}
	if err := os.Truncate(r.self.Disk, grown); err != nil {
		t.Fatal(err)
	}

	// Interrupted after the record (writing the activity log): up finds
	// the old metadata through it.
	interrupt(newMeta+2*meta.PageSize, "activity log")
	upOld()
	if rec := r.st.Resized; rec == nil || rec.OldDataSize != oldSize {
		t.Fatalf("up after the interrupted resize: record %+v", rec)
	}

	out, err := r.Resize(false)
	if err != nil {
		t.Fatalf("resize: %v", err)
	}
	newSize := r.st.size.Load()
	if newSize <= oldSize || !strings.Contains(out, fmt.Sprintf("grown from %d to %d bytes", oldSize, newSize)) {
		t.Fatalf("resize said %q, size now %d", out, newSize)
	}
	if _, err := r.Resize(false); err == nil || !strings.Contains(err.Error(), "no more data than now") {
		t.Fatalf("a second resize without growing: %v", err)
	}
	check(oldSize-64<<10, 'z', 64<<10)
	write(newSize-1<<20, 'n', 1<<20)
	write(oldSize-4<<10, 'x', 64<<10) // across the old end, over the old metadata
	if err := (device{r}).WriteAt(ctx, (device{r}).WriteBuffer(4096), newSize, false); err == nil {
		t.Fatal("a write beyond the new size succeeded")
	}

	if err := r.Secondary(); err != nil {
		t.Fatal(err)
	}
	if err := r.Down(); err != nil {
		t.Fatal(err)
	}
	if err := r.Up(); err != nil {
		t.Fatalf("up after the resize: %v", err)
	}
	if got := r.st.size.Load(); got != newSize || r.st.Resized != nil {
		t.Fatalf("up after the resize: %d bytes, want %d", got, newSize)
	}
	if err := r.Primary(false); err != nil {
		t.Fatal(err)
	}
	check(0, 'a', 1<<20)
	check(oldSize-4<<10, 'x', 64<<10)
	check(newSize-1<<20, 'n', 1<<20)
	check(oldSize-64<<10, 'z', 60<<10) // the old data below the overwrite
}

func waitDown(t *testing.T, d *Daemon) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, _ := d.Status("r0")
		if !st[0].Up {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the resource did not go down: %+v", st[0])
		}
		time.Sleep(10 * time.Millisecond)
	}
}
