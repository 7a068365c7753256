package main

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/georepl/georepl/kmod/nbd"
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
