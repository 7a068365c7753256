package storage

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/georepl/georepl/kmod"
)

// TestPlanGrowRefusals: a resize is refused, with the reason and before
// anything changes, for a disk that did not grow, one that grew less than
// the new metadata area (it would overlap the current one), one that
// shrank, and external metadata.
func TestPlanGrowRefusals(t *testing.T) {
	const size = 16 << 20
	c := newInternalDisk(t, size)
	disk := c.Disk
	d, err := Open(c, false)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	refused := func(what, want string) {
		t.Helper()
		if _, err := d.PlanGrow(c); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want a refusal saying %q", what, err, want)
		}
	}
	refused("a disk that did not grow", "grow the backing disk first")
	if err := os.Truncate(disk, size+64<<10); err != nil {
		t.Fatal(err)
	}
	refused("a disk grown by 64 KiB", "grow it by at least")
	if err := os.Truncate(disk, size); err != nil {
		t.Fatal(err)
	}
	refused("a disk that shrank back", "shrank")
	if err := os.Truncate(disk, size+64<<20); err != nil {
		t.Fatal(err)
	}
	p, err := d.PlanGrow(c)
	if err != nil || p.DataSize <= p.OldDataSize || p.OldMetaEnd != size {
		t.Fatalf("a disk grown by 64 MiB: %+v, %v", p, err)
	}
	ext := *c
	ext.MetaDisk = filepath.Join(filepath.Dir(disk), "meta")
	if _, err := d.PlanGrow(&ext); err == nil || !strings.Contains(err.Error(), "external metadata") {
		t.Errorf("external metadata: %v", err)
	}
}

// TestOpenGrownButNotResized: a node whose backing disk was grown while
// the resource was down (so no resize moved its internal metadata) is
// refused at Open, with an error naming the disk and what to do, and
// nothing of the disk is written: given its old size back, it opens with
// its metadata and data as they were.
func TestOpenGrownButNotResized(t *testing.T) {
	const size = 16 << 20
	c := newInternalDisk(t, size)
	disk := c.Disk
	f, err := os.OpenFile(disk, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("data written before the disk grew"), 8192); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	before, err := os.ReadFile(disk)
	if err != nil {
		t.Fatal(err)
	}

	if err := os.Truncate(disk, size+64<<20); err != nil {
		t.Fatal(err)
	}
	if d, err := Open(c, false); err == nil {
		d.Close()
		t.Fatal("a disk grown without a resize opened")
	} else {
		for _, want := range []string{disk, "metadata is still at its old end", "run georepl resize"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("the refusal %q does not say %q", err, want)
			}
		}
		t.Logf("refused: %v", err)
	}
	after, err := os.ReadFile(disk)
	if err != nil {
		t.Fatal(err)
	}
	if len(after) != size+64<<20 || string(after[:size]) != string(before) {
		t.Fatal("the refused Open changed the disk's old extent")
	}
	for i, b := range after[size:] {
		if b != 0 {
			t.Fatalf("the refused Open wrote into the grown space at %d", size+i)
		}
	}

	if err := os.Truncate(disk, size); err != nil {
		t.Fatal(err)
	}
	d, err := Open(c, false)
	if err != nil {
		t.Fatalf("given its old size back: %v", err)
	}
	defer d.Close()
	got := make([]byte, len("data written before the disk grew"))
	if _, err := d.Region.ReadAt(got, 8192); err != nil || string(got) != "data written before the disk grew" {
		t.Fatalf("data after reopening: %q, %v", got, err)
	}
}

// newInternalDisk is a disk file of size bytes in a test directory, with
// internal metadata created for resource r0 on node alpha.
func newInternalDisk(t *testing.T, size int64) *Config {
	t.Helper()
	disk := filepath.Join(t.TempDir(), "disk")
	if err := os.WriteFile(disk, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(disk, size); err != nil {
		t.Fatal(err)
	}
	c := &Config{Resource: "r0", Node: "alpha", NodeID: 0, Slots: 3, BlockSize: 4096, Disk: disk,
		OpenDevice: func(path string) (Device, error) { return kmod.OpenBacking(path) }}
	if _, err := CreateMetadata(c, false); err != nil {
		t.Fatal(err)
	}
	return c
}
