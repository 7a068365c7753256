package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/georepl/georepl/cmd/georepl/internal/checker"
	"github.com/georepl/georepl/cmd/georepl/internal/node"
	"github.com/georepl/georepl/kmod/nbd"
)

// undoCluster is the demo cluster with a resync undo log of capacity size
// on dr, whose connection to alpha runs protocol proto; bravo stays down
// (alpha keeps it disconnected).
func undoCluster(t *testing.T, diskSize int64, undoSize, proto string, diskExtra string, edits ...func(string) string) *cluster {
	t.Helper()
	var undoPath string
	c := newCluster(t, diskSize, append([]func(string) string{func(src string) string {
		dir := filepath.Dir(strings.SplitN(strings.SplitN(src, `disk      = "`, 2)[1], `"`, 2)[0])
		undoPath = filepath.Join(dir, "dr.undo")
		drDisk := filepath.Join(dir, "dr.img")
		src = strings.Replace(src, fmt.Sprintf("disk      = %q\n", drDisk),
			fmt.Sprintf("disk      = %q\n    resync_undo = %q\n", drDisk, undoPath), 1)
		src = strings.Replace(src, "connection \"alpha\" \"dr\" {\n    protocol = \"A\"", "connection \"alpha\" \"dr\" {\n    protocol = \""+proto+"\"", 1)
		// A killed peer is noticed by the timeout over QUIC: keep it short.
		src = strings.Replace(src, `shared_secret = "demo-secret"`, `shared_secret = "demo-secret"
    ping_interval = "500ms"
    timeout       = "2s"
    connect_retry = "200ms"`, 1)
		return strings.Replace(src, "  net {\n    transport     = \"tcp\"", "  disk {\n    resync_undo_size = \""+undoSize+"\"\n"+diskExtra+"  }\n\n  net {\n    transport     = \"tcp\"", 1)
	}}, edits...)...)
	if !strings.Contains(string(c.src), "resync_undo =") || !strings.Contains(string(c.src), "resync_undo_size") {
		t.Fatalf("configuration edit failed:\n%s", c.src)
	}
	c.start("alpha")
	c.start("dr")
	c.cli("alpha", "disconnect", "r0", "bravo")
	c.cli("dr", "disconnect", "r0", "bravo")
	c.cli("alpha", "primary", "--force", "r0")
	c.cli("alpha", "wait-sync", "--timeout", "2m", "r0")
	return c
}

// workload runs the checker's workload on alpha's export until alpha dies
// (or stop is called); wait returns the history.
type workload struct {
	stop func()
	done chan struct{}
	log  string
	n    int
}

func startWorkload(t *testing.T, c *cluster, seed uint64, size uint64) *workload {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 5))
	w := checker.Workload{Run: seed<<8 | 1, Blocks: min(size, 8<<20) / checker.BlockSize, Depth: 1 + rng.IntN(8), FlushEvery: rng.IntN(32)}
	logPath := filepath.Join(c.dir, "check.log")
	log, err := checker.CreateLog(logPath, w.Run, w.FirstBlock, w.Blocks)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	client, err := nbd.Dial(ctx, c.node("alpha").Export, "r0")
	if err != nil {
		t.Fatal(err)
	}
	wl := &workload{stop: cancel, done: make(chan struct{}), log: logPath}
	go func() {
		defer close(wl.done)
		wl.n, _ = checker.RunWorkload(ctx, client, log, w)
		client.Close()
		log.Close()
	}()
	t.Cleanup(func() { cancel(); <-wl.done })
	return wl
}

func (wl *workload) wait(t *testing.T) *checker.History {
	t.Helper()
	select {
	case <-wl.done:
	case <-time.After(time.Minute):
		wl.stop()
		<-wl.done
	}
	f, err := os.Open(wl.log)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h, err := checker.ReadLog(f)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// killAndVerify kills alpha (SIGKILL) with the workload running, promotes
// dr (rolling it back if it was in the middle of a resync; restart: dr is
// killed and restarted first) and checks dr's image with the checker's
// write-order verification. It reports whether dr was mid-resync.
func killAndVerify(t *testing.T, c *cluster, wl *workload, restart bool) (mid bool) {
	t.Helper()
	lost := strings.Count(c.log("dr"), lostLine)
	c.kill("alpha")
	h := wl.wait(t)
	waitLog(t, c, "dr", lostLine, lost+1)
	if restart {
		// dr crashes too and comes back without its source: the undo
		// session survives the restart.
		c.kill("dr")
		c.start("dr")
	}
	out, err := c.cliErr("dr", "primary", "r0")
	switch {
	case err == nil:
		t.Logf("the resync finished before the kill: dr was UpToDate, no rollback needed")
	case strings.Contains(out, "disk is Outdated"):
		// Behind (pull-ahead) at the kill: an older consistent image.
		t.Logf("dr was Outdated (Behind) at the kill: promoted with --force, no rollback")
		c.cli("dr", "primary", "--force", "r0")
	default:
		mid = true
		if !strings.Contains(out, "primary --force r0") || !strings.Contains(out, "rolls back") {
			t.Fatalf("primary without --force on the interrupted sync target: %v\n%s", err, out)
		}
		st := c.waitFor("dr", "the undo log in the status", time.Minute, func(st *node.ResourceStatus) bool {
			return st.Disk == "Inconsistent" && c.peer(st, "alpha").Conn != "Connected"
		})
		if u := st.ConsistentResync; u == nil || u.State != "active" || u.SavedBlocks == 0 {
			t.Fatalf("dr mid-resync without an active undo log: %+v", u)
		}
		c.cli("dr", "primary", "--force", "r0")
		waitLog(t, c, "dr", "rolled back", 1)
	}
	st := c.waitFor("dr", "the promotion in the status", time.Minute, func(st *node.ResourceStatus) bool {
		return st.Role == "Primary"
	})
	if st.Disk != "UpToDate" || (st.ConsistentResync != nil && st.ConsistentResync.State != "idle") {
		t.Fatalf("dr after promotion: %s %s %+v", st.Role, st.Disk, st.ConsistentResync)
	}
	img, err := os.Open(c.node("dr").Disk)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	res, err := checker.Verify(h, img, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d writes completed; dr: %s", wl.n, res)
	if !res.OK() {
		t.Fatalf("dr's image after promotion is not write-order consistent: %s", res)
	}
	return mid
}

// lagBehind disconnects dr while the workload runs and reconnects it once
// alpha marked at least want bytes for it: a bitmap resync starts, with
// the workload's writes going on.
func lagBehind(t *testing.T, c *cluster, want uint64) {
	t.Helper()
	connected := strings.Count(c.log("dr"), connectedLine)
	c.cli("alpha", "disconnect", "r0", "dr")
	c.waitFor("alpha", "dr to fall behind", time.Minute, func(st *node.ResourceStatus) bool {
		return c.peer(st, "dr").OutOfSync >= want
	})
	c.cli("alpha", "connect", "r0", "dr")
	waitLog(t, c, "dr", connectedLine, connected+1)
}

// The lines dr logs when its connection to alpha comes up and goes away:
// unlike the status, which is published periodically, the log is written
// as it happens.
const (
	connectedLine = `msg=connected node=dr resource=r0 peer=alpha`
	lostLine      = `msg="connection lost" node=dr resource=r0 peer=alpha`
)

// TestConsistentResyncKillPrimary is issue #3's consistent resync checked
// with real daemons: alpha (primary) takes the checker's workload; dr
// (protocol A or B, with a resync undo log) is disconnected, falls behind,
// reconnects, and alpha is killed (SIGKILL) in the middle of the bitmap
// resync while the workload goes on. dr is then promoted: plain `primary`
// is refused with the way out, `primary --force` rolls dr back to its
// image from before the resync, and that image passes the checker's
// write-order check.
func TestConsistentResyncKillPrimary(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("kill points with real daemons")
	}
	const size = 8 << 20
	points := 10
	if raceEnabled {
		points = 4
	}
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	midResync := 0
	for i := range points {
		proto := []string{"A", "B"}[i%2]
		t.Run(fmt.Sprintf("point%d-%s", i, proto), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, uint64(i)))
			// resync_rate: the resync lasts long enough to be killed in,
			// however fast the machine.
			c := undoCluster(t, size, "64MiB", proto, "", func(src string) string {
				return strings.Replace(src, `compression = "lz4"`, `compression = "lz4"
      resync_rate = "1MiB"`, 1)
			})
			dataSize := c.status("alpha").Size
			wl := startWorkload(t, c, seed+uint64(i), dataSize)
			time.Sleep(time.Duration(50+rng.IntN(200)) * time.Millisecond)
			lagBehind(t, c, uint64(1+rng.IntN(8))<<17)
			// Kill alpha once dr saved some blocks (it is some way into
			// the resync), or when the resync is over.
			saved := uint64(1 + rng.IntN(300))
			c.waitFor("dr", "resync progress", time.Minute, func(st *node.ResourceStatus) bool {
				u := st.ConsistentResync
				return c.peer(st, "alpha").Repl != "SyncTarget" || (u != nil && u.SavedBlocks >= saved)
			})
			if killAndVerify(t, c, wl, i%3 == 2) {
				midResync++
			}
		})
	}
	if midResync == 0 {
		t.Fatalf("no kill point hit the middle of a resync")
	}
}

// TestConsistentResyncSpaceExhausted: an undo log too small for the
// resync runs out; dr says so (event, status), goes on as a plain resync,
// and once alpha is killed mid-resync, promotion is refused without
// --force, saying that no consistent image is left.
func TestConsistentResyncSpaceExhausted(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("real daemons")
	}
	// resync_rate: the resync after the exhaustion takes seconds, and
	// alpha dies in it.
	c := undoCluster(t, 20<<20, "64KiB", "A", "", func(src string) string {
		return strings.Replace(src, `compression = "lz4"`, `compression = "lz4"
      resync_rate = "1MiB"`, 1)
	})
	c.cli("alpha", "disconnect", "r0", "dr")
	client, err := nbd.Dial(context.Background(), c.node("alpha").Export, "r0")
	if err != nil {
		t.Fatal(err)
	}
	// Every other block: 8 MiB of single-block runs to resync (eight
	// seconds at 1 MiB/s, time enough to pause it), far more than 64 KiB
	// of undo log can save.
	buf := make([]byte, 4096)
	start := time.Now()
	for i := range 2048 {
		buf[0] = byte(i + 1)
		if err := client.WriteAt(buf, int64(i)*8192, false); err != nil {
			t.Fatal(err)
		}
	}
	client.Close()
	t.Logf("writes while dr was away: %v", time.Since(start))
	c.cli("alpha", "connect", "r0", "dr")
	st := c.waitFor("dr", "the undo log to run out", time.Minute, func(st *node.ResourceStatus) bool {
		return st.ConsistentResync != nil && st.ConsistentResync.State == "exhausted"
	})
	// Hold the resync where it is while we look (it would finish).
	c.cli("alpha", "pause-sync", "r0", "dr")
	if st.Disk != "Inconsistent" {
		t.Fatalf("dr is %s with an exhausted undo log", st.Disk)
	}
	waitLog(t, c, "dr", "target is Inconsistent until the resync completes", 1)
	out := c.cli("dr", "status", "r0")
	if !strings.Contains(out, "consistent resync: exhausted") || !strings.Contains(out, "WARNING") {
		t.Fatalf("status does not show the exhaustion:\n%s", out)
	}
	lost := strings.Count(c.log("dr"), lostLine)
	c.kill("alpha")
	waitLog(t, c, "dr", lostLine, lost+1)
	st = c.waitFor("dr", "alpha gone in the status", time.Minute, func(st *node.ResourceStatus) bool {
		return c.peer(st, "alpha").Conn != "Connected"
	})
	if st.Disk != "Inconsistent" || st.ConsistentResync == nil || st.ConsistentResync.State != "exhausted" {
		t.Fatalf("dr after alpha was killed: %s, %+v; want Inconsistent and exhausted (the resync was still running)", st.Disk, st.ConsistentResync)
	}
	out, err = c.cliErr("dr", "primary", "r0")
	if err == nil || !strings.Contains(out, "ran out of space") {
		t.Fatalf("primary without --force after exhaustion: %v\n%s", err, out)
	}
}

// waitLog waits until node n's log shows what at least n times.
func waitLog(t *testing.T, c *cluster, n, what string, times int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for strings.Count(c.log(n), what) < times {
		if time.Now().After(deadline) {
			t.Fatalf("%q not %d times in %s's log after 30s", what, times, n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestConsistentResyncPullAheadCatchUp: the catch-up resync after
// pull-ahead is a resync like any other: alpha goes Ahead of dr (a burst
// of 1 MiB writes outside the checked region overflows dr's 64 KiB send
// buffer while the checker's workload runs), catches it up by resync,
// and is killed in the middle of it; dr, promoted, rolls back to its
// image from before the catch-up, which passes the write-order check.
func TestConsistentResyncPullAheadCatchUp(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("kill points with real daemons")
	}
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	mid := 0
	for i := range 3 {
		t.Run(fmt.Sprintf("point%d", i), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, uint64(i)))
			c := undoCluster(t, 48<<20, "64MiB", "A", "", pullAheadToDR)
			wl := startWorkload(t, c, seed+uint64(i), 8<<20)
			time.Sleep(time.Duration(50+rng.IntN(200)) * time.Millisecond)
			catchUps := strings.Count(c.log("dr"), "old=Behind new=SyncTarget")
			client, err := nbd.Dial(context.Background(), c.node("alpha").Export, "r0")
			if err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 1<<20)
			for j := range 24 {
				buf[0] = byte(j + 1)
				if err := client.WriteAt(buf, int64(16+j)<<20, false); err != nil {
					t.Fatal(err)
				}
			}
			client.Close()
			// The burst sends alpha Ahead (unless the workload already
			// did), and a catch-up resync follows.
			deadline := time.Now().Add(time.Minute)
			for strings.Count(c.log("dr"), "old=Behind new=SyncTarget") <= catchUps {
				if st := c.status("dr"); c.peer(st, "alpha").Repl == "SyncTarget" {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("no catch-up resync after the burst")
				}
				time.Sleep(20 * time.Millisecond)
			}
			saved := uint64(1 + rng.IntN(300))
			c.waitFor("dr", "catch-up progress", time.Minute, func(st *node.ResourceStatus) bool {
				u := st.ConsistentResync
				return c.peer(st, "alpha").Repl != "SyncTarget" || (u != nil && u.SavedBlocks >= saved)
			})
			if killAndVerify(t, c, wl, false) {
				mid++
			}
		})
	}
	if mid == 0 {
		t.Fatalf("no kill point hit the middle of a catch-up resync")
	}
}
