package main

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/georepl/georepl/kmod/nbd"

	"github.com/georepl/georepl/kmod/nbd/nbdtest"
)

// TestClusterLargeWrites: the export advertises a 32 MiB maximum block
// size, so writes up to that size, with FUA or without, succeed through
// real clients (qemu-io sends each of its writes as one request, nbdcopy
// its 16 MiB requests), read back, and reach every replica whole.
func TestClusterLargeWrites(t *testing.T) {
	t.Parallel()
	requireTool(t, "qemu-io", "qemu-utils")
	requireTool(t, "nbdcopy", "libnbd-bin")
	c := newCluster(t, 112<<20)
	c.startInSync()

	out, err := exec.Command("qemu-io", "-f", "raw",
		"-c", "write -P 0xa5 0 16M",
		"-c", "write -f -P 0x5a 16M 32M",
		"-c", "read -P 0xa5 0 16M",
		"-c", "read -P 0x5a 16M 32M",
		c.exportURI()).CombinedOutput()
	if err != nil || strings.Contains(string(out), "failed") || strings.Contains(string(out), "mismatch") {
		t.Fatalf("qemu-io with 16 and 32 MiB writes: %v\n%s", err, out)
	}

	src := filepath.Join(c.dir, "src.raw")
	payload := make([]byte, 48<<20)
	for i := 0; i < len(payload); i += 8 {
		binary.LittleEndian.PutUint64(payload[i:], uint64(i)*0x9e3779b97f4a7c15)
	}
	if err := os.WriteFile(src, payload, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("nbdcopy", "--request-size=16777216", src, c.exportURI()).CombinedOutput(); err != nil {
		t.Fatalf("nbdcopy --request-size=16777216: %v\n%s", err, out)
	}
	client, err := nbd.Dial(context.Background(), c.node("alpha").Export, "r0")
	if err != nil {
		t.Fatal(err)
	}
	back := make([]byte, len(payload))
	if _, err := client.ReadAt(back, 0); err != nil {
		t.Fatal(err)
	}
	client.Close()
	if sha256.Sum256(back) != sha256.Sum256(payload) {
		t.Fatal("the data read back differs from what nbdcopy wrote in 16 MiB requests")
	}
	c.settleAndCompare()
}

// TestClusterExportMemoryBound: a local client pipelines 600 READs of 4
// MiB and never reads a reply. The daemon stops reading its requests once
// the connection's queued bytes reach their bound, so its memory stays
// far below the 2.4 GiB those replies would take, while a second client
// of the same export is served as usual.
func TestClusterExportMemoryBound(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 64<<20)
	c.startInSync()
	pid := c.procs["alpha"].Process.Pid
	before := procStatusKiB(t, pid, "VmRSS")

	greedy := rawExport(t, c.node("alpha").Export)
	defer greedy.Close()
	const reads, readSize = 600, 4 << 20
	sent := make(chan error, 1)
	go func() {
		var req [28]byte
		for i := range reads {
			binary.BigEndian.PutUint32(req[0:], 0x25609513) // request magic
			binary.BigEndian.PutUint16(req[6:], 0)          // NBD_CMD_READ
			binary.BigEndian.PutUint64(req[8:], uint64(i))
			binary.BigEndian.PutUint64(req[16:], uint64(i%8)*readSize)
			binary.BigEndian.PutUint32(req[24:], readSize)
			if _, err := greedy.Write(req[:]); err != nil {
				sent <- err
				return
			}
		}
		sent <- nil
	}()

	// The other client is served while the greedy one stalls.
	polite, err := nbd.Dial(context.Background(), c.node("alpha").Export, "r0")
	if err != nil {
		t.Fatal(err)
	}
	defer polite.Close()
	nbdtest.Served(t, polite, readSize)
	// Give the daemon time to take in whatever it is going to.
	time.Sleep(3 * time.Second)
	select {
	case err := <-sent:
		t.Logf("the greedy client sent all its requests (%v)", err)
	default:
		t.Logf("the greedy client is stalled: the daemon stopped reading its requests")
	}
	peak := procStatusKiB(t, pid, "VmHWM")
	now := procStatusKiB(t, pid, "VmRSS")
	t.Logf("alpha's RSS: %d MiB before, %d MiB now, peak %d MiB", before>>10, now>>10, peak>>10)
	// The connection's bound is 64 MiB; the rest of the margin is the
	// garbage collector's, and under -race the detector's shadow memory.
	margin := int64(384 << 10)
	if raceEnabled {
		margin = 1 << 20
	}
	if peak > before+margin {
		t.Fatalf("alpha's peak RSS grew from %d MiB to %d MiB for one client's unread replies", before>>10, peak>>10)
	}
}

// rawExport connects to an export and negotiates it, leaving the
// connection at the start of the transmission phase for requests written
// by hand.
func rawExport(t *testing.T, spec string) net.Conn {
	t.Helper()
	nc, err := net.Dial("unix", strings.TrimPrefix(spec, "unix:"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := nbd.Negotiate(ctx, nc, "r0"); err != nil {
		nc.Close()
		t.Fatal(err)
	}
	return nc
}

// procStatusKiB reads a field of /proc/PID/status given in kB.
func procStatusKiB(t *testing.T, pid int, field string) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(b)) {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				t.Fatalf("%s in /proc/%d/status: %v", field, pid, err)
			}
			return n
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}
