package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/georepl/georepl/cmd/georepl/internal/node"
	"github.com/georepl/georepl/kmod/nbd"
)

// withSplitBrain configures after_split_brain and a split_brain handler
// that appends its GEOREPL_ environment to handler-NODE.env in dir.
func withSplitBrain(dir, policy string) func(string) string {
	return func(src string) string {
		script := filepath.Join(dir, "handler.sh")
		body := "#!/bin/sh\nenv | grep '^GEOREPL_' | sort >> \"" + dir + "/handler-$GEOREPL_NODE.env\"\necho handled\n"
		if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
			panic(err)
		}
		src = strings.Replace(src, `shared_secret = "demo-secret"`,
			`shared_secret = "demo-secret"
    after_split_brain = "`+policy+`"`, 1)
		return strings.Replace(src, `protocol = "C"`, `protocol = "C"

  handlers {
    split_brain = "`+script+` --from-test"
  }`, 1)
	}
}

// writeThrough writes n blocks of 4 KiB filled with b at off through node
// n's export.
func (c *cluster) writeThrough(n string, off int64, blocks int, b byte) {
	c.t.Helper()
	client, err := nbd.Dial(context.Background(), c.node(n).Export, "r0")
	if err != nil {
		c.t.Fatal(err)
	}
	defer client.Close()
	if err := client.WriteAt(bytes.Repeat([]byte{b}, blocks*4096), off, false); err != nil {
		c.t.Fatal(err)
	}
	if err := client.Flush(); err != nil {
		c.t.Fatal(err)
	}
}

// splitBrain makes alpha and bravo diverge: alpha Primary and in sync with
// bravo, the link cut, alpha writes alphaBlocks blocks ("A") at 1 MiB,
// bravo is promoted and writes bravoBlocks blocks ("B") at 2 MiB, then
// node demote is demoted. dr stays out of it (disconnected, never started).
func (c *cluster) splitBrain(alphaBlocks, bravoBlocks int, demote string) {
	c.t.Helper()
	c.start("alpha")
	c.start("bravo")
	for _, n := range []string{"alpha", "bravo"} {
		c.cli(n, "disconnect", "r0", "dr")
	}
	c.cli("alpha", "primary", "--force", "r0")
	c.cli("alpha", "wait-sync", "--timeout", "2m", "r0")
	c.cli("alpha", "disconnect", "r0", "bravo")
	c.waitFor("bravo", "alpha gone", 30*time.Second, func(st *node.ResourceStatus) bool {
		return c.peer(st, "alpha").Conn != "Connected"
	})
	c.writeThrough("alpha", 1<<20, alphaBlocks, 'A')
	c.cli("bravo", "primary", "r0")
	c.writeThrough("bravo", 2<<20, bravoBlocks, 'B')
	c.cli(demote, "secondary", "r0")
}

// handlerEnv waits for node n's split-brain handler to have run and
// returns the environment it saw.
func (c *cluster) handlerEnv(dir, n string) string {
	c.t.Helper()
	path := filepath.Join(dir, "handler-"+n+".env")
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, err := os.ReadFile(path)
		if err == nil && strings.Contains(string(b), "GEOREPL_REASON=") {
			return string(b)
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("the split-brain handler did not run on %s (%v)\n%s", n, err, c.log(n))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// compareSurvivor takes alpha and bravo down and checks that their data
// areas are byte-identical and hold the survivor's writes only.
func (c *cluster) compareSurvivor(survivor string) {
	c.t.Helper()
	size := c.status(survivor).Size
	c.cli(survivor, "secondary", "r0")
	for _, n := range []string{"alpha", "bravo"} {
		c.cli(n, "down", "r0")
	}
	sums := c.dataHashes(size)
	if sums["alpha"] != sums["bravo"] {
		c.t.Fatalf("alpha and bravo differ after the split-brain resync")
	}
	img, err := os.ReadFile(c.node("alpha").Disk)
	if err != nil {
		c.t.Fatal(err)
	}
	want := [2]byte{0, 'B'}
	if survivor == "alpha" {
		want = [2]byte{'A', 0}
	}
	if got := [2]byte{img[1<<20], img[2<<20]}; got != want {
		c.t.Fatalf("alpha holds %q at 1 MiB and 2 MiB; want %s's %q", got, survivor, want)
	}
}

// TestClusterSplitBrainDiscardMyData: with the default policy a split
// brain leaves both nodes StandAlone and runs the handler on both; the
// operator's `connect --discard-my-data` on the victim resyncs only the
// blocks either node changed, and the victim ends with the survivor's data.
func TestClusterSplitBrainDiscardMyData(t *testing.T) {
	t.Parallel()
	const size = 64 << 20
	dir := t.TempDir()
	c := newCluster(t, size, shortTimeouts, withSplitBrain(dir, "disconnect"))
	c.splitBrain(3, 5, "alpha")

	c.cli("alpha", "connect", "r0", "bravo")
	st := c.waitFor("alpha", "split brain refused", 30*time.Second, func(st *node.ResourceStatus) bool {
		return strings.Contains(c.peer(st, "bravo").LastError, "split brain")
	})
	if p := c.peer(st, "bravo"); p.Conn != "StandAlone" {
		t.Fatalf("alpha's connection to bravo after the split brain: %+v", p)
	}
	for n, peer := range map[string]string{"alpha": "bravo", "bravo": "alpha"} {
		env := c.handlerEnv(dir, n)
		for _, want := range []string{"GEOREPL_RESOURCE=r0", "GEOREPL_NODE=" + n, "GEOREPL_PEER=" + peer,
			"GEOREPL_OUTCOME=standalone", "GEOREPL_REASON=split brain: both nodes changed the data"} {
			if !strings.Contains(env, want) {
				t.Errorf("handler on %s lacks %s:\n%s", n, want, env)
			}
		}
		if !strings.Contains(c.log(n), "handled") {
			t.Errorf("%s did not log the handler's output", n)
		}
	}

	if out, err := c.cliErr("bravo", "connect", "--discard-my-data", "r0", "alpha"); err == nil || !strings.Contains(out, "Primary") {
		t.Fatalf("the Primary accepted --discard-my-data: %v\n%s", err, out)
	}
	written := c.status("alpha").DiskWritten
	c.cli("alpha", "connect", "--discard-my-data", "r0", "bravo")
	c.cli("bravo", "connect", "r0", "alpha")
	c.cli("bravo", "wait-sync", "--timeout", "2m", "r0")
	resynced := c.status("alpha").DiskWritten - written
	// alpha's 3 blocks and bravo's 5; far from the 64 MiB a full sync moves.
	if resynced < 8*4096 || resynced > 1<<20 {
		t.Fatalf("the victim wrote %d bytes in the resync; want the 32 KiB both nodes changed", resynced)
	}
	t.Logf("split-brain resync: %d bytes written on the victim (device %d bytes)", resynced, size)
	c.compareSurvivor("bravo")
}

// TestClusterSplitBrainPolicy: discard-least-changes resolves the split
// brain by itself: alpha changed fewer blocks, discards them and resyncs
// from bravo; the handler reports the resolution.
func TestClusterSplitBrainPolicy(t *testing.T) {
	t.Parallel()
	const size = 64 << 20
	dir := t.TempDir()
	c := newCluster(t, size, shortTimeouts, withSplitBrain(dir, "discard-least-changes"))
	if out := c.cli("", "validate", "--config", c.conf); !strings.Contains(out, "after_split_brain discard-least-changes") ||
		!strings.Contains(out, "split_brain handler "+filepath.Join(dir, "handler.sh")) {
		t.Errorf("validate does not show the split-brain settings:\n%s", out)
	}
	c.splitBrain(2, 6, "alpha")
	c.cli("alpha", "connect", "r0", "bravo")
	c.cli("bravo", "wait-sync", "--timeout", "2m", "r0")
	c.waitFor("alpha", "alpha UpToDate", 30*time.Second, func(st *node.ResourceStatus) bool {
		return st.Disk == "UpToDate" && c.peer(st, "bravo").Repl == "Established"
	})
	env := c.handlerEnv(dir, "alpha")
	for _, want := range []string{"GEOREPL_OUTCOME=resolved", "resolved by discard-least-changes: node 0 discards its changes"} {
		if !strings.Contains(env, want) {
			t.Errorf("handler on alpha lacks %q:\n%s", want, env)
		}
	}
	// A later reconnect is no split brain.
	c.cli("alpha", "disconnect", "r0", "bravo")
	c.cli("alpha", "connect", "r0", "bravo")
	// The status alpha publishes at connect shows bravo Connecting: wait
	// for the connection rather than read the status once.
	st := c.waitFor("alpha", "bravo reconnected", 30*time.Second, func(st *node.ResourceStatus) bool {
		p := c.peer(st, "bravo")
		return p.Conn == "Connected" || p.LastError != ""
	})
	if p := c.peer(st, "bravo"); p.LastError != "" {
		t.Fatalf("reconnect after the resolution: %+v", p)
	}
	if out, err := c.cliErr("alpha", "connect", "--discard-my-data", "r0", "bravo"); err == nil || !strings.Contains(out, "no split brain to resolve") {
		t.Fatalf("--discard-my-data towards a connected peer: %v\n%s", err, out)
	}
	c.cli("bravo", "wait-sync", "--timeout", "2m", "r0")
	c.compareSurvivor("bravo")
}

// TestClusterSplitBrainYoungerPrimary: discard-younger-primary keeps the
// data of alpha, promoted before the split and Primary throughout, and
// discards bravo's, promoted during it (the promotion times come from the
// daemons' clocks and live in the metadata).
func TestClusterSplitBrainYoungerPrimary(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	c := newCluster(t, 64<<20, shortTimeouts, withSplitBrain(dir, "discard-younger-primary"))
	c.splitBrain(4, 1, "bravo")
	c.cli("alpha", "connect", "r0", "bravo")
	c.cli("alpha", "wait-sync", "--timeout", "2m", "r0")
	c.waitFor("bravo", "bravo UpToDate", 30*time.Second, func(st *node.ResourceStatus) bool {
		return st.Disk == "UpToDate" && c.peer(st, "alpha").Repl == "Established"
	})
	if env := c.handlerEnv(dir, "bravo"); !strings.Contains(env, "resolved by discard-younger-primary: node 1 discards its changes") {
		t.Errorf("handler on bravo:\n%s", env)
	}
	c.compareSurvivor("alpha")
}
