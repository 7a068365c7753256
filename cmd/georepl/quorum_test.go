package main

import (
	"bytes"
	"context"
	"errors"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/georepl/georepl/cmd/georepl/internal/node"
	"github.com/georepl/georepl/kmod/nbd"
)

// withQuorum sets quorum = "majority" (2 of the demo's 3 nodes) and
// on_no_quorum.
func withQuorum(policy string) func(string) string {
	return func(src string) string {
		return strings.Replace(src, `protocol = "C"`, `protocol = "C"
  quorum       = "majority"
  on_no_quorum = "`+policy+`"`, 1)
	}
}

// isolate stops bravo and dr (SIGSTOP: their sockets stay open, as with a
// cut network) and waits until alpha has lost quorum; the returned
// function resumes them.
func (c *cluster) isolate() (resume func()) {
	c.t.Helper()
	stopped := []string{"bravo", "dr"}
	for _, n := range stopped {
		if err := c.procs[n].Process.Signal(syscall.SIGSTOP); err != nil {
			c.t.Fatal(err)
		}
	}
	resumed := false
	resume = func() {
		if resumed {
			return
		}
		resumed = true
		for _, n := range stopped {
			c.procs[n].Process.Signal(syscall.SIGCONT)
		}
	}
	c.t.Cleanup(resume)
	return resume
}

func (c *cluster) waitQuorum(n string, ok bool) *node.ResourceStatus {
	c.t.Helper()
	return c.waitFor(n, "quorum change", time.Minute, func(st *node.ResourceStatus) bool {
		return st.Quorum != nil && st.Quorum.OK == ok
	})
}

// TestClusterQuorumSuspend: with quorum = "majority" and on_no_quorum =
// "suspend-io", a Primary cut off from both other nodes holds a write
// (it neither completes nor fails) until one of them returns; then it
// completes. A node without quorum is refused promotion unless forced,
// and status shows the quorum.
func TestClusterQuorumSuspend(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 32<<20, shortTimeouts, withQuorum("suspend-io"))
	if out := c.cli("", "validate", "--config", c.conf); !strings.Contains(out, "resource r0: 3 nodes, quorum 2, on_no_quorum suspend-io") {
		t.Errorf("validate does not show the quorum:\n%s", out)
	}
	c.startInSync()
	if q := c.status("alpha").Quorum; q == nil || q.Have != 3 || q.Need != 2 || !q.OK {
		t.Fatalf("alpha's quorum with every node up: %+v", q)
	}
	if out := c.cli("alpha", "status", "r0"); !strings.Contains(out, "quorum:3/2 (yes)") {
		t.Errorf("status text lacks the quorum:\n%s", out)
	}

	resume := c.isolate()
	st := c.waitQuorum("alpha", false)
	if st.Quorum.Have != 1 {
		t.Fatalf("alpha's quorum while isolated: %+v", st.Quorum)
	}
	if out := c.cli("alpha", "status", "r0"); !strings.Contains(out, "quorum:1/2 (NO, suspend-io)") {
		t.Errorf("status text lacks the lost quorum:\n%s", out)
	}
	client, err := nbd.Dial(context.Background(), c.node("alpha").Export, "r0")
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	done := make(chan error, 1)
	go func() { done <- client.WriteAt(bytes.Repeat([]byte{'Q'}, 4096), 1<<20, false) }()
	// The write must be held: give it time to (wrongly) complete.
	select {
	case err := <-done:
		t.Fatalf("a write completed without quorum: %v", err)
	case <-time.After(3 * time.Second):
	}
	if st := c.status("alpha"); st.Pending != 1 {
		t.Errorf("alpha holds %d requests, want the one write", st.Pending)
	}
	resume()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("the held write failed after quorum returned: %v", err)
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("the held write did not complete after quorum returned")
	}
	c.waitQuorum("alpha", true)
	if !strings.Contains(c.log("alpha"), "what=quorum") {
		t.Errorf("alpha logged no quorum event")
	}
	client.Close()

	// A Secondary without quorum is not promoted, unless forced.
	c.cli("alpha", "secondary", "r0")
	c.isolate()
	c.waitQuorum("alpha", false)
	out, err := c.cliErr("alpha", "primary", "r0")
	if err == nil || !strings.Contains(out, "no quorum") || !strings.Contains(out, "--force") {
		t.Fatalf("primary without quorum: %v\n%s", err, out)
	}
	c.cli("alpha", "primary", "--force", "r0")
	if q := c.status("alpha").Quorum; !q.OK {
		t.Fatalf("a forced Primary without quorum: %+v", q)
	}
	c.writeThrough("alpha", 2<<20, 1, 'F')
}

// TestClusterQuorumIOError: with on_no_quorum = "io-error" a Primary cut
// off from both other nodes fails writes with EIO at once, and writes
// again once a node returns.
func TestClusterQuorumIOError(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 32<<20, shortTimeouts, withQuorum("io-error"))
	c.startInSync()
	resume := c.isolate()
	c.waitQuorum("alpha", false)
	client, err := nbd.Dial(context.Background(), c.node("alpha").Export, "r0")
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	if err := client.WriteAt(bytes.Repeat([]byte{'E'}, 4096), 1<<20, false); err == nil {
		t.Fatal("a write succeeded without quorum under io-error")
	}
	resume()
	c.waitQuorum("alpha", true)
	if err := client.WriteAt(bytes.Repeat([]byte{'E'}, 4096), 1<<20, false); err != nil {
		t.Fatalf("a write failed after quorum returned: %v", err)
	}
	client.Close()
	c.settleAndCompare()
}

// TestClusterQuorumDemoteFailsHeld: a Primary without quorum holds a write
// (suspend-io) that quorum may never release (the majority may have
// promoted another node). `georepl secondary` then returns promptly, the
// held write fails with EIO, and the node is Secondary.
func TestClusterQuorumDemoteFailsHeld(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 32<<20, shortTimeouts, withQuorum("suspend-io"))
	c.startInSync()
	c.isolate()
	c.waitQuorum("alpha", false)
	done := c.heldWrite(1 << 20)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	out, err := exec.CommandContext(ctx, georeplBin, "--admin", c.adminSock("alpha"), "secondary", "r0").CombinedOutput()
	if err != nil {
		t.Fatalf("georepl secondary with a write held for quorum: %v after %v\n%s", err, time.Since(start).Round(time.Millisecond), out)
	}
	// Waiting for quorum would wait for ever: the context's 30 s tell it
	// from a slow machine.
	t.Logf("georepl secondary took %v", time.Since(start).Round(time.Millisecond))
	select {
	case err := <-done:
		if !errors.Is(err, syscall.EIO) {
			t.Fatalf("the held write ended with %v after the demotion, want EIO", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the held write did not end after the demotion")
	}
	if st := c.status("alpha"); st.Role != "Secondary" || st.Pending != 0 {
		t.Fatalf("after the demotion alpha is %s with %d requests pending", st.Role, st.Pending)
	}
}

// TestClusterQuorumStopWithHeldWrite: stopping the daemon (SIGTERM) while
// its Primary holds a write for quorum does not wait for quorum: the
// daemon exits promptly and the write fails.
func TestClusterQuorumStopWithHeldWrite(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 32<<20, shortTimeouts, withQuorum("suspend-io"))
	c.startInSync()
	c.isolate()
	c.waitQuorum("alpha", false)
	done := c.heldWrite(2 << 20)
	cmd, exited := c.procs["alpha"], c.exited["alpha"]
	start := time.Now()
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
		t.Logf("the daemon stopped %v after SIGTERM", time.Since(start).Round(time.Millisecond))
	case <-time.After(20 * time.Second):
		cmd.Process.Kill()
		<-exited
		t.Fatalf("the daemon did not stop within 20s of SIGTERM with a write held for quorum\n%s", c.log("alpha"))
	}
	if err := <-done; err == nil {
		t.Fatal("the held write succeeded although the daemon stopped without quorum")
	}
}

// heldWrite starts a 4 KiB write at off through alpha's export, checks
// that it is held (neither completes nor fails for a while), and returns
// its result's channel; the client is closed at the end of the test.
func (c *cluster) heldWrite(off int64) <-chan error {
	c.t.Helper()
	client, err := nbd.Dial(context.Background(), c.node("alpha").Export, "r0")
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { client.Close() })
	done := make(chan error, 1)
	go func() { done <- client.WriteAt(bytes.Repeat([]byte{'H'}, 4096), off, false) }()
	select {
	case err := <-done:
		c.t.Fatalf("a write ended without quorum: %v", err)
	case <-time.After(2 * time.Second):
	}
	if st := c.status("alpha"); st.Pending != 1 {
		c.t.Fatalf("alpha holds %d requests, want the one write", st.Pending)
	}
	return done
}
