package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/georepl/georepl/cmd/georepl/internal/node"
)

// TestClusterResize grows the three disks of a running cluster while fio
// writes with crc32c verification through the Primary's export: resize
// on the Primary first (refused before its disk grew), its peers are
// refused at the handshake with the reason until they resized too, then
// the new space is resynchronised; fio verifies its writes across the
// resize and a second fio writes and verifies the new space; the three
// disks end identical at the new size.
func TestClusterResize(t *testing.T) {
	t.Parallel()
	requireTool(t, "fio", "fio")
	const size, grown = 16 << 20, 40 << 20
	c := newCluster(t, size)
	c.startInSync()
	oldSize := c.status("alpha").Size

	if out, err := c.cliErr("alpha", "resize", "r0"); err == nil || !strings.Contains(out, "grow the backing disk first") {
		t.Fatalf("resize before the disk grew: %v\n%s", err, out)
	}

	fio := func(name string, off, length uint64, extra ...string) *exec.Cmd {
		args := append([]string{"--name=" + name, "--ioengine=nbd", "--uri=" + c.exportURI(),
			"--bs=4k", fmt.Sprintf("--offset=%d", off), fmt.Sprintf("--size=%d", length), "--iodepth=8",
			"--verify=crc32c", "--do_verify=1", "--randrepeat=0", "--output-format=terse", "--verify_state_save=0"}, extra...)
		cmd := exec.Command("fio", args...)
		cmd.Dir = c.dir
		return cmd
	}
	// At 2 MB/s its 48 MiB take 24 s, which the resize must fall within:
	// unbounded, fio finished before it on a loaded machine.
	across := fio("across", 0, 8<<20, "--rw=randwrite", "--io_size=48M", "--rate=2m")
	var acrossOut bytes.Buffer
	across.Stdout, across.Stderr = &acrossOut, &acrossOut
	if err := across.Start(); err != nil {
		t.Fatal(err)
	}
	acrossDone := make(chan error, 1)
	go func() { acrossDone <- across.Wait() }()
	deadline := time.Now().Add(30 * time.Second)
	for c.status("alpha").DiskWritten < 4<<20 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}

	for _, n := range demoNodes {
		if err := os.Truncate(c.node(n).Disk, grown); err != nil {
			t.Fatal(err)
		}
	}
	out := c.cli("alpha", "resize", "r0")
	t.Logf("resize on alpha: %s", out)
	select {
	case err := <-acrossDone:
		t.Fatalf("fio ended (%v) before the resize: nothing was written across it; give it more to write\n%s", err, acrossOut.String())
	default:
	}
	st := c.status("alpha")
	newSize := st.Size
	if newSize <= oldSize || !strings.Contains(out, fmt.Sprintf("grown from %d to %d bytes", oldSize, newSize)) {
		t.Fatalf("alpha's size after resize: %d (was %d); the command said %q", newSize, oldSize, out)
	}
	// bravo runs at the old size: refused at the handshake, with the
	// reason, and not StandAlone.
	c.waitFor("alpha", "bravo refused for its size", 20*time.Second, func(st *node.ResourceStatus) bool {
		return strings.Contains(c.peer(st, "bravo").LastError, "run georepl resize there")
	})
	c.cli("bravo", "resize", "r0")
	c.cli("dr", "resize", "r0")
	if err := <-acrossDone; err != nil {
		t.Fatalf("fio writing across the resize failed: %v\n%s", err, acrossOut.String())
	}
	c.cli("alpha", "wait-sync", "--timeout", "2m", "r0")
	for _, n := range demoNodes {
		if got := c.status(n).Size; got != newSize {
			t.Errorf("%s runs at %d bytes, alpha at %d", n, got, newSize)
		}
	}

	// The new space, through a new connection that learns the new size.
	fresh := fio("fresh", oldSize, newSize-oldSize, "--rw=write")
	if out, err := fresh.CombinedOutput(); err != nil {
		t.Fatalf("fio in the new space failed: %v\n%s", err, out)
	}
	c.settleAndCompare()
}
