package main

import (
	"bytes"
	"context"
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
