package node

import (
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/georepl/georepl/configs"
	"github.com/georepl/georepl/core/meta"
	"github.com/georepl/georepl/transports/builtin"
)

// failingDevice is a metadata device whose writes fail once armed, as a
// dying disk's would.
type failingDevice struct {
	meta.Device
	armed bool
}

func (f *failingDevice) WriteAt(p []byte, off int64) (int, error) {
	if f.armed {
		return 0, &os.PathError{Op: "write", Path: "meta", Err: syscall.EIO}
	}
	return f.Device.WriteAt(p, off)
}

// TestMetadataWriteFailureTakesResourceDown: when the engine's new durable
// state cannot be written, nothing of it is acted on: the command that
// caused it fails, the resource goes down by itself, and status says why.
func TestMetadataWriteFailureTakesResourceDown(t *testing.T) {
	builtin.Register()
	dir := t.TempDir()
	src := configs.Demo(dir, 41000+int(time.Now().UnixNano()%5000))
	cfg, err := configs.Parse(filepath.Join(dir, "r0.hcl"), src, configs.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rc, _ := cfg.Resource("r0")
	self, _ := rc.Node("alpha")
	if err := os.WriteFile(self.Disk, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(self.Disk, 16<<20); err != nil {
		t.Fatal(err)
	}
	if _, err := CreateMetadata(rc, self, false); err != nil {
		t.Fatal(err)
	}
	d, err := NewDaemon(cfg, "alpha", slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	r := d.resources["r0"]
	if err := r.Up(); err != nil {
		t.Fatal(err)
	}
	// Swap the metadata for a view of the same bytes that fails writes.
	_, metaOff, metaSize, err := meta.InternalLayout(r.st.backing.Size(), bitmapSlots(rc), uint32(rc.Disk.BlockSize))
	if err != nil {
		t.Fatal(err)
	}
	fd := &failingDevice{Device: r.st.backing.Region(metaOff, metaSize)}
	store, err := meta.Open(fd, 0)
	if err != nil {
		t.Fatal(err)
	}
	r.emu.Lock()
	r.st.store = store
	fd.armed = true
	r.emu.Unlock()

	err = r.Primary(true)
	if err == nil || !errors.Is(err, syscall.EIO) {
		t.Fatalf("promotion with a failing metadata disk: %v", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, _ := d.Status("r0")
		if !st[0].Up {
			if !strings.Contains(st[0].Error, "metadata") {
				t.Fatalf("status does not say why the resource went down: %+v", st[0])
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the resource did not go down after the metadata write failed: %+v", st[0])
		}
		time.Sleep(10 * time.Millisecond)
	}
}
