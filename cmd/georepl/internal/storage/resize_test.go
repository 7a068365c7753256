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
	dir := t.TempDir()
	disk := filepath.Join(dir, "disk")
	const size = 16 << 20
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
	ext.MetaDisk = filepath.Join(dir, "meta")
	if _, err := d.PlanGrow(&ext); err == nil || !strings.Contains(err.Error(), "external metadata") {
		t.Errorf("external metadata: %v", err)
	}
}
