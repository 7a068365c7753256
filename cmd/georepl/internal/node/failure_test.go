package node

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/georepl/georepl/cmd/georepl/internal/checker"
	"github.com/georepl/georepl/configs"
	"github.com/georepl/georepl/core/meta"
	"github.com/georepl/georepl/kmod"
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

// TestMetadataWriteFailureTakesResourceDown: under on_io_error = "pass-on",
// when the engine's new durable state cannot be written, nothing of it is
// acted on: the command that caused it fails, the resource goes down by
// itself, and status says why.
func TestMetadataWriteFailureTakesResourceDown(t *testing.T) {
	d, r := upWithFailingMetadata(t, "pass-on")
	err := r.Primary(true)
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

// TestMetadataWriteFailureDetaches: under on_io_error = "detach" (the
// default) a failed metadata write detaches the disk instead: the resource
// stays up, Diskless.
func TestMetadataWriteFailureDetaches(t *testing.T) {
	d, r := upWithFailingMetadata(t, "detach")
	if err := r.Primary(true); err != nil {
		t.Fatalf("promotion with a failing metadata disk under detach: %v", err)
	}
	st, _ := d.Status("r0") // Primary published it
	if !st[0].Up || st[0].Disk != "Diskless" || st[0].Role != "Primary" {
		t.Fatalf("after a failed metadata write under detach: %+v; want up, Primary, Diskless", st[0])
	}
}

// TestReadPastTheEndDoesNotDetach: a read beyond the device fails, and is
// not taken for a failing disk.
func TestReadPastTheEndDoesNotDetach(t *testing.T) {
	d, r := upResource(t, "detach")
	if err := r.Primary(true); err != nil {
		t.Fatal(err)
	}
	if err := (device{r}).ReadAt(context.Background(), make([]byte, 4096), r.st.DataSize); err == nil {
		t.Fatal("a read past the end succeeded")
	}
	r.emu.Lock()
	r.publishStatus()
	r.emu.Unlock()
	if st, _ := d.Status("r0"); st[0].Disk != "UpToDate" {
		t.Fatalf("after a read past the end the disk is %s; want UpToDate", st[0].Disk)
	}
}

// TestDetachRefusedWithoutPeerInSync: detaching the disk of a Primary
// that has no peer in sync would fail every request: refused, and the
// disk stays attached.
func TestDetachRefusedWithoutPeerInSync(t *testing.T) {
	d, r := upResource(t, "detach")
	if err := r.Primary(true); err != nil {
		t.Fatal(err)
	}
	err := r.Detach()
	if err == nil || !strings.Contains(err.Error(), "no peer in sync") {
		t.Fatalf("detach of a Primary alone: %v, want a refusal naming the missing peer in sync", err)
	}
	if st, _ := d.Status("r0"); st[0].Disk != "UpToDate" {
		t.Fatalf("after a refused detach the disk is %s", st[0].Disk)
	}
}

// upWithFailingMetadata brings resource r0 up on node alpha of the demo
// configuration with on_io_error = policy, and arms its metadata to fail
// every write.
func upWithFailingMetadata(t *testing.T, policy string) (*Daemon, *resource) {
	t.Helper()
	d, r := upResource(t, policy)
	// Swap the metadata for a view of the same bytes that fails writes.
	_, metaOff, metaSize, err := meta.InternalLayout(r.st.Backing.Size(), bitmapSlots(r.cfg), uint32(r.cfg.Disk.BlockSize))
	if err != nil {
		t.Fatal(err)
	}
	fd := &failingDevice{Device: kmod.NewRegion(r.st.Backing, metaOff, metaSize)}
	store, err := meta.Open(fd, 0)
	if err != nil {
		t.Fatal(err)
	}
	r.emu.Lock()
	r.st.Store = store
	fd.armed = true
	r.emu.Unlock()
	return d, r
}

// upResource brings resource r0 up on node alpha of the demo
// configuration with on_io_error = policy.
func upResource(t *testing.T, policy string) (*Daemon, *resource) {
	t.Helper()
	return upNode(t, policy, "alpha")
}

// upNode brings resource r0 up on node name of the demo configuration
// with on_io_error = policy. Node dr, the highest id, dials no peer: it
// only accepts.
func upNode(t *testing.T, policy, name string) (*Daemon, *resource) {
	t.Helper()
	return upNodeWith(t, policy, name, Options{}, func(*resource) {})
}

// upNodeWith is upNode in the world of opts, with prepare called on the
// resource before it goes up.
func upNodeWith(t *testing.T, policy, name string, opts Options, prepare func(*resource)) (*Daemon, *resource) {
	t.Helper()
	builtin.Register()
	dir := t.TempDir()
	port, err := checker.FreePorts(3)
	if err != nil {
		t.Fatal(err)
	}
	src := configs.Demo(dir, port)
	src = []byte(strings.Replace(string(src), "  protocol = \"C\"\n", "  protocol = \"C\"\n  disk {\n    on_io_error = \""+policy+"\"\n  }\n", 1))
	cfg, err := configs.Parse(filepath.Join(dir, "r0.hcl"), src, configs.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rc, _ := cfg.Resource("r0")
	newDisk(t, rc, name, 16<<20)
	d, err := NewDaemon(cfg, name, slog.New(slog.NewTextHandler(io.Discard, nil)), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	r := d.resources["r0"]
	if r.cfg.Disk.OnIOError.String() != policy {
		t.Fatalf("on_io_error = %q, want %q", r.cfg.Disk.OnIOError, policy)
	}
	prepare(r)
	if err := r.Up(); err != nil {
		t.Fatal(err)
	}
	return d, r
}
