package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/georepl/georepl/cmd/georepl/internal/node"
	"github.com/georepl/georepl/kmod/nbd"
)

// TestClusterAdjust runs `georepl adjust` against real daemons while the
// Primary writes: --dry-run changes nothing, adjust applies a changed
// max_buffer and rpo_warning live (an event each, the connections stay
// up), a changed block size is refused naming the field and its file:line
// with a non-zero exit, SIGHUP applies the files as `adjust all` does,
// and the three disks end identical.
func TestClusterAdjust(t *testing.T) {
	c := newCluster(t, 16<<20)
	c.startInSync()
	dr := func(st *node.ResourceStatus) node.PeerStatus { return c.peer(st, "dr") }
	before := dr(c.status("alpha"))

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	events, evOut := c.events(ctx, "alpha")

	// Writes go on through every adjust below.
	client, err := nbd.Dial(context.Background(), c.node("alpha").Export, "r0")
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	var wg sync.WaitGroup
	stop := make(chan struct{})
	var writeErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if err := client.WriteAt(bytes.Repeat([]byte{byte(i)}, 64<<10), int64(i%200)*(64<<10), false); err != nil {
				writeErr = err
				return
			}
		}
	}()

	edit := func(src string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(c.conf, "r0.hcl"), []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	withDRNet := func(lines string) string {
		return strings.Replace(string(c.src), "compression = \"lz4\"\n", "compression = \"lz4\"\n"+lines+"\n", 1)
	}
	edit(withDRNet(`      max_buffer = "8MiB"
      rpo_warning = "30s"`))

	plan := c.cli("alpha", "adjust", "--dry-run", "r0")
	if !strings.Contains(plan, "peer dr: net.max_buffer") || !strings.Contains(plan, "peer dr: net.rpo_warning") || !strings.Contains(plan, "dry run, not applied") {
		t.Errorf("adjust --dry-run printed:\n%s", plan)
	}
	if got := dr(c.status("alpha")).MaxBuffer; got != before.MaxBuffer {
		t.Fatalf("--dry-run changed max_buffer to %d", got)
	}

	out := c.cli("alpha", "adjust", "r0")
	t.Logf("georepl adjust r0:\n%s", out)
	for _, want := range []string{"peer dr: net.max_buffer: 64MiB -> 8MiB", "peer dr: net.rpo_warning: 0s -> 30s"} {
		if l := lineWith(out, want); !strings.HasSuffix(l, ": applied") {
			t.Errorf("no line %q ending applied in:\n%s", want, out)
		}
	}
	st := dr(c.status("alpha"))
	if st.MaxBuffer != 8<<20 || st.RPO == nil || st.RPO.WarningSeconds != 30 {
		t.Errorf("dr after adjust: max_buffer %d, rpo %+v", st.MaxBuffer, st.RPO)
	}

	// Refused: the block size of a running resource.
	edit(strings.Replace(withDRNet(`      max_buffer = "16MiB"`), "  net {\n", "  disk {\n    block_size = \"8KiB\"\n  }\n\n  net {\n", 1))
	refusal, err := c.cliErr("alpha", "adjust", "r0")
	if err == nil {
		t.Fatalf("adjust applied a block size change:\n%s", refusal)
	}
	for _, want := range []string{"disk.block_size", "r0.hcl:", "georepl down r0", "nothing applied"} {
		if !strings.Contains(refusal, want) {
			t.Errorf("the refusal does not say %q:\n%s", want, refusal)
		}
	}
	if got := dr(c.status("alpha")).MaxBuffer; got != 8<<20 {
		t.Errorf("a refused adjust changed max_buffer to %d", got)
	}

	// SIGHUP: adjust all, logged.
	edit(withDRNet(`      max_buffer = "16MiB"`))
	if err := c.procs["alpha"].Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	c.waitFor("alpha", "max_buffer 16 MiB after SIGHUP", 10*time.Second, func(st *node.ResourceStatus) bool {
		return c.peer(st, "dr").MaxBuffer == 16<<20
	})
	if log := c.log("alpha"); !strings.Contains(log, "msg=adjusted") || !strings.Contains(log, "net.max_buffer: 8MiB -> 16MiB") {
		t.Errorf("the daemon's log does not show the SIGHUP's change")
	}

	// Two adjusted events from the command, two from SIGHUP (max_buffer
	// again, rpo_warning back to none); the stream is read once its
	// process ended.
	time.Sleep(500 * time.Millisecond)
	cancel()
	events.Wait()
	if n := strings.Count(evOut.String(), `"adjusted"`); n != 4 {
		t.Errorf("%d adjusted events, want 4:\n%s", n, evOut.String())
	}

	close(stop)
	wg.Wait()
	if writeErr != nil {
		t.Fatalf("a write failed during the adjusts: %v", writeErr)
	}
	for _, peer := range []string{"bravo", "dr"} {
		if p := c.peer(c.status("alpha"), peer); p.Conn != "Connected" {
			t.Errorf("alpha and %s: %s after the adjusts", peer, p.Conn)
		}
	}
	if n := strings.Count(c.log("alpha"), "msg=connected"); n != 2 {
		t.Errorf("alpha connected %d times: an adjust dropped a connection", n)
	}
	client.Close()
	c.settleAndCompare()
}

func lineWith(out, s string) string {
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, s) {
			return l
		}
	}
	return ""
}
