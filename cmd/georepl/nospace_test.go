package main

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/georepl/georepl/cmd/georepl/internal/node"
)

// smallFilesystem mounts a tmpfs of size bytes for the test's lifetime and
// returns its directory. It fails, never skips, when it cannot: the tests
// need a store that really fills up (run them as root, or with
// CAP_SYS_ADMIN).
func smallFilesystem(t *testing.T, size int64) string {
	t.Helper()
	dir := t.TempDir()
	if err := syscall.Mount("georepl-test", dir, "tmpfs", 0, fmt.Sprintf("size=%d,mode=0755", size)); err != nil {
		t.Fatalf("mounting a tmpfs of %d bytes at %s for a backing store that fills up (needs root or CAP_SYS_ADMIN): %v", size, dir, err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, 0); err != nil {
			t.Errorf("unmounting the test's tmpfs at %s: %v", dir, err)
		}
	})
	return dir
}

// growFilesystem makes the tmpfs at dir size bytes large, as an operator
// grows a full file system.
func growFilesystem(t *testing.T, dir string, size int64) {
	t.Helper()
	if err := syscall.Mount("georepl-test", dir, "tmpfs", syscall.MS_REMOUNT, fmt.Sprintf("size=%d", size)); err != nil {
		t.Fatalf("growing the tmpfs at %s to %d bytes: %v", dir, size, err)
	}
}

// diskOn moves node n's backing file into dir (a configuration edit).
func diskOn(n, dir string) func(string) string {
	re := regexp.MustCompile(`disk      = "[^"]*/` + regexp.QuoteMeta(n) + `\.img"`)
	return func(src string) string {
		out := re.ReplaceAllString(src, `disk      = "`+filepath.Join(dir, n+".img")+`"`)
		if out == src {
			panic("no disk line for node " + n + " in the demo configuration")
		}
		return out
	}
}

// qemuIO runs qemu-io commands against alpha's export, each a separate
// request, and returns their output and error.
func (c *cluster) qemuIO(cmds ...string) (string, error) {
	args := []string{"-f", "raw"}
	for _, cmd := range cmds {
		args = append(args, "-c", cmd)
	}
	out, err := exec.Command("qemu-io", append(args, c.exportURI())...).CombinedOutput()
	if err == nil && strings.Contains(string(out), "failed") {
		err = fmt.Errorf("a command failed")
	}
	return string(out), err
}

// compareRunning hashes the data areas of the three disks while the
// daemons run and fails if they differ. Call it only once nothing is in
// flight (after wait-sync, no client): what a daemon wrote is in its
// file, whether or not flushed.
func (c *cluster) compareRunning(what string) {
	c.t.Helper()
	sums := c.dataHashes(c.status("alpha").Size)
	if a, b, d := sums["alpha"], sums["bravo"], sums["dr"]; a != b || a != d {
		c.t.Fatalf("%s: the disks differ although every node reports UpToDate and in sync: alpha %x bravo %x dr %x", what, a[:8], b[:8], d[:8])
	}
}

// TestClusterPrimaryOutOfSpace: alpha's backing file is sparse, on a file
// system smaller than the device (on_io_error = "detach", the default).
// A real NBD client writes until the file system is full: it gets ENOSPC,
// not EIO, and alpha keeps its disk (Primary, UpToDate). The peers wrote
// the failed write (it is mirrored in parallel): marked for them, it is
// resynchronised from alpha, so that all three disks are equal while
// every node says UpToDate. Overwrites of allocated blocks go on
// succeeding; once the file system is grown, the writes that failed
// succeed, and the disks end identical.
func TestClusterPrimaryOutOfSpace(t *testing.T) {
	t.Parallel()
	requireTool(t, "qemu-io", "qemu-utils")
	const size, fsSize = 64 << 20, 16 << 20
	mnt := smallFilesystem(t, fsSize)
	c := newCluster(t, size, diskOn("alpha", mnt))
	c.startInSync()

	const chunk = 1 << 20
	data := int64(c.status("alpha").Size) // the device: the disk less its metadata
	full := int64(-1)
	var out string
	for off := int64(0); off < data; off += chunk {
		var err error
		out, err = c.qemuIO(fmt.Sprintf("write -P 0xab %d %d", off, min(chunk, data-off)))
		if err != nil {
			full = off
			break
		}
	}
	if full < 0 || full > fsSize {
		st := c.status("alpha")
		t.Fatalf("the client wrote %d bytes without an error on a file system of %d: alpha is %s (disk_error %q)", max(full, data), fsSize, st.Disk, st.DiskError)
	}
	if !strings.Contains(out, "No space left on device") {
		t.Fatalf("the write at %d failed, but not with ENOSPC:\n%s", full, out)
	}
	st := c.status("alpha")
	if !st.Up || st.Role != "Primary" || st.Disk != "UpToDate" {
		t.Fatalf("after ENOSPC alpha is %s %s (up %v, disk_error %q); want Primary with its disk attached (UpToDate)", st.Role, st.Disk, st.Up, st.DiskError)
	}
	if log := c.log("alpha"); strings.Contains(log, "local disk detached") || !strings.Contains(log, "no space left on the backing store") {
		t.Errorf("alpha's log does not say that a write found no space, or says that its disk was detached:\n%s", log)
	}

	// Overwrites of allocated blocks need no space.
	if out, err := c.qemuIO("write -P 0xcd 0 1M", "read -P 0xcd 0 1M"); err != nil {
		t.Fatalf("overwriting an allocated block after ENOSPC: %v\n%s", err, out)
	}
	// The failed write reached the peers; the resync of its marks makes
	// them equal to alpha again.
	c.cli("alpha", "wait-sync", "--timeout", "2m", "r0")
	st = c.status("alpha")
	for _, p := range []string{"bravo", "dr"} {
		if ps := c.peer(st, p); ps.Disk != "UpToDate" || ps.Repl != "Established" || ps.OutOfSync != 0 {
			t.Fatalf("after wait-sync alpha sees %s %s %s, %d bytes out of sync", p, ps.Repl, ps.Disk, ps.OutOfSync)
		}
	}
	c.compareRunning("after ENOSPC on alpha")

	// The file system grows: the writes that failed succeed now.
	growFilesystem(t, mnt, 2*size)
	if out, err := c.qemuIO(fmt.Sprintf("write -P 0xef %d %d", full, data-full), fmt.Sprintf("read -P 0xef %d %d", full, data-full)); err != nil {
		t.Fatalf("writing after the file system grew: %v\n%s", err, out)
	}
	if st := c.status("alpha"); st.Disk != "UpToDate" {
		t.Fatalf("alpha is %s after the file system grew", st.Disk)
	}
	c.settleAndCompare()
}

// TestClusterSecondaryOutOfSpace: dr's backing file is on a file system
// smaller than the device; alpha and bravo have space. With csums on the
// alpha–dr connection the initial sync leaves dr's file sparse. Writes
// that dr cannot store succeed for the client (alpha and bravo have
// them); dr acknowledges none of them as written, keeps its disk
// attached but becomes Inconsistent, and alpha marks the blocks for it.
// Its resync fails while the file system is full and is retried; once
// the file system is grown, dr is resynchronised, UpToDate, and the disks
// end identical.
func TestClusterSecondaryOutOfSpace(t *testing.T) {
	t.Parallel()
	requireTool(t, "qemu-io", "qemu-utils")
	const size, fsSize = 64 << 20, 16 << 20
	mnt := smallFilesystem(t, fsSize)
	c := newCluster(t, size, diskOn("dr", mnt), withCsums)
	c.startInSync()

	if out, err := c.qemuIO("write -P 0xab 0 32M"); err != nil {
		t.Fatalf("writing 32 MiB through alpha, which has space: %v\n%s", err, out)
	}
	st := c.waitFor("dr", "Inconsistent for lack of space", time.Minute, func(st *node.ResourceStatus) bool {
		return st.Disk == "Inconsistent"
	})
	if !st.Up || st.Disk == "Diskless" {
		t.Fatalf("dr is %s (up %v) after running out of space; want its disk attached", st.Disk, st.Up)
	}
	if out, err := c.cliErr("dr", "primary", "r0"); err == nil {
		t.Fatalf("dr, lacking writes for want of space, was promoted:\n%s", out)
	}
	if !strings.Contains(c.log("dr"), "no space left") {
		t.Errorf("dr's log does not say it ran out of space:\n%s", c.log("dr"))
	}
	if !strings.Contains(c.log("alpha"), "failed on the peer: marked out of sync") {
		t.Errorf("alpha's log does not say that dr failed writes and that it marked them:\n%s", c.log("alpha"))
	}
	c.waitFor("alpha", "dr marked out of sync", 30*time.Second, func(st *node.ResourceStatus) bool {
		ps := c.peer(st, "dr")
		return ps.OutOfSync > 0 && ps.Disk != "UpToDate"
	})

	growFilesystem(t, mnt, 2*size)
	c.waitFor("alpha", "dr resynchronised", 3*time.Minute, func(st *node.ResourceStatus) bool {
		p := c.peer(st, "dr")
		return p.Conn == "Connected" && p.Repl == "Established" && p.Disk == "UpToDate" && p.OutOfSync == 0
	})
	if st := c.status("dr"); st.Disk != "UpToDate" {
		t.Fatalf("dr is %s after its resync", st.Disk)
	}
	c.settleAndCompare()
}
