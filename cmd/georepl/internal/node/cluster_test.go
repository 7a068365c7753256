package node

import (
	"io"
	"log/slog"
	"os"
	"testing"

	"github.com/georepl/georepl/configs"
)

// newDisk creates node name's disk of resource rc, size bytes of zeroes,
// with fresh metadata.
func newDisk(t *testing.T, rc *configs.Resource, name string, size int64) {
	t.Helper()
	self, err := rc.Node(name)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(self.Disk, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(self.Disk, size); err != nil {
		t.Fatal(err)
	}
	if _, err := CreateMetadata(rc, self, false); err != nil {
		t.Fatal(err)
	}
}

// startNode creates node name's disk of resource r0 in cfg (size bytes)
// and runs its daemon, logging to logs, in the world of opts, until the
// test ends; adjust, if not nil, changes the daemon before its resources
// go up.
func startNode(t *testing.T, cfg *configs.Config, name string, size int64, logs io.Writer, opts Options, adjust func(*Daemon)) *Daemon {
	t.Helper()
	rc, err := cfg.Resource("r0")
	if err != nil {
		t.Fatal(err)
	}
	newDisk(t, rc, name, size)
	d, err := NewDaemon(cfg, name, slog.New(slog.NewTextHandler(logs, nil)), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	if adjust != nil {
		adjust(d)
	}
	if err := d.UpAll(); err != nil {
		t.Fatal(err)
	}
	return d
}
