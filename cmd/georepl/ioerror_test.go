package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/georepl/georepl/cmd/georepl/internal/node"
)

// ioErrorCluster starts the demo's three daemons with alpha's backing disk
// armed to fail (--test-io-faults), makes alpha Primary and waits for the
// initial sync. It returns the cluster and alpha's trigger file.
func ioErrorCluster(t *testing.T, size int64, edits ...func(string) string) (*cluster, string) {
	t.Helper()
	c := newCluster(t, size, edits...)
	trigger := filepath.Join(c.dir, "alpha.fail")
	c.args["alpha"] = []string{"--test-io-faults", trigger}
	c.startInSync()
	return c, trigger
}

// fioVerify starts fio writing 4 KiB blocks with crc32c verification
// through alpha's export.
func (c *cluster) fioVerify(size string) (*exec.Cmd, *bytes.Buffer) {
	c.t.Helper()
	fio := exec.Command("fio", "--name=ioerror", "--ioengine=nbd", "--uri="+c.exportURI(),
		"--rw=randwrite", "--bs=4k", "--size="+size, "--offset=0", "--iodepth=8",
		// Paced, so that the fault comes in the middle of the writes
		// however fast the machine.
		"--rate=8m",
		"--verify=crc32c", "--do_verify=1", "--randrepeat=0", "--output-format=terse", "--verify_state_save=0")
	fio.Dir = c.dir
	var out bytes.Buffer
	fio.Stdout, fio.Stderr = &out, &out
	if err := fio.Start(); err != nil {
		c.t.Fatal(err)
	}
	return fio, &out
}

// failDiskWhileWriting arms alpha's faults once fio's writes are flowing:
// spec is the trigger's content (kmod.Faults), "" for every I/O of the
// backing disk, data and metadata.
func (c *cluster) failDiskWhileWriting(trigger, spec string) {
	c.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for c.status("alpha").DiskWritten < 2<<20 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	// Atomically: a daemon reading a half-written trigger would fail
	// everything.
	if err := os.WriteFile(trigger+".tmp", []byte(spec), 0o644); err != nil {
		c.t.Fatal(err)
	}
	if err := os.Rename(trigger+".tmp", trigger); err != nil {
		c.t.Fatal(err)
	}
}

// TestClusterIOErrorDetach: alpha's disk fails in the middle of fio's
// writes (on_io_error = "detach", the default). fio sees no error and
// every block it wrote verifies, read back through alpha from its peers;
// alpha is Diskless. Then the operator's way back: bravo takes over, alpha
// comes up again on its "repaired" disk and is resynchronised fully, and
// the three disks end identical.
func TestClusterIOErrorDetach(t *testing.T) {
	t.Parallel()
	requireTool(t, "fio", "fio")
	c, trigger := ioErrorCluster(t, 64<<20)
	fio, out := c.fioVerify("24M")
	c.failDiskWhileWriting(trigger, "")
	if err := fio.Wait(); err != nil {
		t.Fatalf("fio failed although alpha's disk was detached and bravo is in sync: %v\n%s", err, out)
	}
	st := c.waitFor("alpha", "Primary, Diskless", 30*time.Second, func(st *node.ResourceStatus) bool {
		return st.Up && st.Role == "Primary" && st.Disk == "Diskless"
	})
	if !strings.Contains(c.log("alpha"), "local disk detached") {
		t.Errorf("alpha's log does not say that its disk was detached:\n%s", c.log("alpha"))
	}
	if !strings.Contains(st.DiskError, "injected fault") {
		t.Errorf("status does not say why alpha's disk was detached: disk_error %q", st.DiskError)
	}
	if out := c.cli("alpha", "status", "r0"); !strings.Contains(out, "disk detached: ") {
		t.Errorf("status text does not say that the disk was detached:\n%s", out)
	}
	// Another write and read now, so that both surely ran detached.
	fio2, out2 := c.fioVerify("4M")
	if err := fio2.Wait(); err != nil {
		t.Fatalf("fio on the detached primary: %v\n%s", err, out2)
	}

	// The operator replaces alpha's disk (here: disarms the faults) and
	// moves the service to bravo.
	c.cli("alpha", "secondary", "r0")
	c.cli("alpha", "down", "r0")
	if err := os.Remove(trigger); err != nil {
		t.Fatal(err)
	}
	// bravo may still be handling alpha's connection (as Primary): wait.
	c.waitFor("bravo", "alpha gone", time.Minute, func(st *node.ResourceStatus) bool {
		return c.peer(st, "alpha").Role != "Primary"
	})
	c.cli("bravo", "primary", "r0")
	c.cli("alpha", "up", "r0")
	c.waitFor("bravo", "alpha resynchronised", 2*time.Minute, func(st *node.ResourceStatus) bool {
		p := c.peer(st, "alpha")
		return p.Conn == "Connected" && p.Repl == "Established" && p.Disk == "UpToDate" && p.OutOfSync == 0
	})
	c.cli("bravo", "wait-sync", "--timeout", "2m", "r0")
	size := c.status("bravo").Size
	// Every block marked, every block sent. Some may be sent twice:
	// alpha's own marks (data channel) can reach bravo after bravo's
	// resync already had those blocks acknowledged (control channel),
	// and marked again they go again.
	if p := c.peer(c.status("bravo"), "alpha"); p.LastResync == nil || !p.LastResync.Cause.Detached ||
		p.LastResync.Cause.MarkedHere != size || p.LastResync.Bytes < size {
		t.Errorf("bravo's last resync of alpha was not the full one of a detached disk (%d bytes): %+v", size, p.LastResync)
	}
	c.cli("bravo", "secondary", "r0")
	for _, n := range demoNodes {
		c.cli(n, "down", "r0")
	}
	sums := c.dataHashes(size)
	if a, b, d := sums["alpha"], sums["bravo"], sums["dr"]; a != b || a != d {
		t.Fatalf("disks differ after alpha's return: alpha %x bravo %x dr %x", a[:8], b[:8], d[:8])
	}
}

// TestClusterIOErrorPassOn: with on_io_error = "pass-on" the failing disk
// stays attached and fio gets the I/O error. Only the data area fails: a
// failed metadata write takes the resource down under either policy
// while the disk is attached (the engine's state must be durable).
func TestClusterIOErrorPassOn(t *testing.T) {
	t.Parallel()
	requireTool(t, "fio", "fio")
	c, trigger := ioErrorCluster(t, 64<<20, func(src string) string {
		return strings.Replace(src, "  protocol = \"C\"\n", "  protocol = \"C\"\n\n  disk {\n    on_io_error = \"pass-on\"\n  }\n", 1)
	})
	fio, out := c.fioVerify("24M")
	c.failDiskWhileWriting(trigger, fmt.Sprintf("0 %d", c.status("alpha").Size))
	err := fio.Wait()
	if err == nil {
		t.Fatalf("fio succeeded although alpha's disk fails and on_io_error is pass-on:\n%s", out)
	}
	if !strings.Contains(out.String(), "Input/output error") {
		t.Errorf("fio failed, but not with EIO: %v\n%s", err, out)
	}
	if st := c.status("alpha"); !st.Up || st.Disk != "UpToDate" || st.Role != "Primary" {
		t.Errorf("alpha is %s %s (up: %v) under pass-on; want it Primary with its disk still attached (UpToDate)", st.Role, st.Disk, st.Up)
	}
}

// TestClusterIOErrorDetachMetadata: only alpha's metadata area fails (the
// data area works). The first failed metadata write (activity log,
// superblock or bitmap) detaches the disk like a failed data write, and
// fio sees no error. fio may finish without needing a metadata write (its
// extents already active); disconnecting dr then writes the superblock.
func TestClusterIOErrorDetachMetadata(t *testing.T) {
	t.Parallel()
	requireTool(t, "fio", "fio")
	const size = 64 << 20
	c, trigger := ioErrorCluster(t, size)
	fio, out := c.fioVerify("24M")
	data := c.status("alpha").Size
	c.failDiskWhileWriting(trigger, fmt.Sprintf("%d %d", data, size-int64(data)))
	if err := fio.Wait(); err != nil {
		t.Fatalf("fio failed although alpha's disk was detached and bravo is in sync: %v\n%s", err, out)
	}
	c.cli("alpha", "disconnect", "r0", "dr")
	c.waitFor("alpha", "Primary, Diskless", 30*time.Second, func(st *node.ResourceStatus) bool {
		return st.Up && st.Role == "Primary" && st.Disk == "Diskless"
	})
}

// TestClusterDetachVerb: `georepl detach` on the Primary while fio writes
// and verifies: fio sees nothing, the Primary is Diskless and says why.
// Detached on the secondary dr too, dr has every block marked by its
// Primary; with bravo disconnected as well, no peer in sync is left and
// the client gets I/O errors.
func TestClusterDetachVerb(t *testing.T) {
	t.Parallel()
	requireTool(t, "fio", "fio")
	c, _ := ioErrorCluster(t, 64<<20)
	fio, out := c.fioVerify("24M")
	deadline := time.Now().Add(30 * time.Second)
	for c.status("alpha").DiskWritten < 2<<20 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	c.cli("alpha", "detach", "r0")
	if err := fio.Wait(); err != nil {
		t.Fatalf("fio failed across georepl detach: %v\n%s", err, out)
	}
	st := c.status("alpha")
	if st.Disk != "Diskless" || !strings.Contains(st.DiskError, "georepl detach") {
		t.Fatalf("after georepl detach alpha is %s, disk_error %q", st.Disk, st.DiskError)
	}
	if out, err := c.cliErr("alpha", "detach", "r0"); err == nil || !strings.Contains(out, "already detached") {
		t.Errorf("a second detach: %v: %s", err, out)
	}

	c.cli("dr", "detach", "r0")
	c.waitFor("alpha", "dr Diskless, every block marked", time.Minute, func(st *node.ResourceStatus) bool {
		p := c.peer(st, "dr")
		return p.Conn == "Connected" && p.Disk == "Diskless" && p.OutOfSync == st.Size
	})
	c.cli("alpha", "disconnect", "r0", "bravo")
	fio2, out2 := c.fioVerify("1M")
	if err := fio2.Wait(); err == nil || !strings.Contains(out2.String(), "Input/output error") {
		t.Errorf("fio on a Diskless Primary with no peer in sync: %v, want EIO:\n%s", err, out2)
	}
}
