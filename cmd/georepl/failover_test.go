package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"path/filepath"
	"regexp"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/georepl/georepl/cmd/georepl/internal/checker"
	"github.com/georepl/georepl/cmd/georepl/internal/node"
	"github.com/georepl/georepl/kmod/nbd"
)

// autoFailover puts the demo under automatic failover: alpha, bravo and
// dr vote on consensus ports of their own (dr is never promoted
// automatically), with a one-second detection timeout.
func autoFailover(t *testing.T) func(string) string {
	ports, err := checker.FreePorts(3)
	if err != nil {
		t.Fatal(err)
	}
	return func(src string) string {
		dir := filepath.Dir(regexp.MustCompile(`disk\s*=\s*"([^"]+)"`).FindStringSubmatch(src)[1])
		i := 0
		src = regexp.MustCompile(`(?m)^  node "(\w+)" \{\n`).ReplaceAllStringFunc(src, func(m string) string {
			name := regexp.MustCompile(`"(\w+)"`).FindStringSubmatch(m)[1]
			extra := ""
			if name == "dr" {
				extra = "      auto_promote = false\n"
			}
			i++
			return m + fmt.Sprintf("    failover {\n      address = \"127.0.0.1:%d\"\n      dir = %q\n%s    }\n", ports+i-1, filepath.Join(dir, name+".failover"), extra)
		})
		return regexp.MustCompile(`(?m)^  net \{\n`).ReplaceAllString(src, "  failover {\n    mode = \"auto\"\n    detection_timeout = \"1s\"\n  }\n\n  net {\n")
	}
}

// TestClusterAutoFailoverKill: real daemons under automatic failover.
// The Primary is killed (SIGKILL) right after acknowledging writes under
// protocol C; the other data node is promoted without an operator and
// serves every acknowledged write. The killed node comes back as
// Secondary, resyncs, and the next kill moves the service back. Each
// round's time from the kill to the promotion is logged, with the median
// and the maximum.
func TestClusterAutoFailoverKill(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 8<<20, shortTimeouts, autoFailover(t))
	c.startInSync()
	primary, other := "alpha", "bravo"
	var times []time.Duration
	for round := range 2 {
		c.waitFor(primary, other+" in sync", time.Minute, func(st *node.ResourceStatus) bool {
			p := c.peer(st, other)
			return p.Disk == "UpToDate" && p.Repl == "Established"
		})
		client, err := nbd.Dial(context.Background(), c.node(primary).Export, "r0")
		if err != nil {
			t.Fatal(err)
		}
		data := make([]byte, 64<<10)
		rand.Read(data)
		off := int64(round) << 20
		if err := client.WriteAt(data, off, false); err != nil {
			t.Fatalf("round %d: write on %s: %v", round, primary, err)
		}
		client.Close()

		killed := time.Now()
		c.kill(primary)
		st := c.waitFor(other, other+" promoted automatically", time.Minute, func(st *node.ResourceStatus) bool { return st.Role == "Primary" })
		times = append(times, time.Since(killed))
		if st.Failover == nil || st.Failover.Holder != other || st.Failover.Term != uint64(round+2) {
			t.Fatalf("round %d: %s's failover status %+v, want %s holding term %d", round, other, st.Failover, other, round+2)
		}
		client, err = nbd.Dial(context.Background(), c.node(other).Export, "r0")
		if err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(data))
		if _, err := client.ReadAt(got, off); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, data) {
			t.Fatalf("round %d: the write %s acknowledged before it was killed is not on %s", round, primary, other)
		}
		client.Close()
		if dr := c.status("dr"); dr.Role != "Secondary" {
			t.Fatalf("dr is %s", dr.Role)
		}
		c.start(primary)
		c.waitFor(primary, primary+" back as Secondary", time.Minute, func(st *node.ResourceStatus) bool {
			return st.Role == "Secondary" && st.Failover != nil && st.Failover.Term == uint64(round+2)
		})
		primary, other = other, primary
	}
	slices.Sort(times)
	t.Logf("failover times after SIGKILL of the Primary (detection_timeout 1s): %v; median %v, max %v", times, times[len(times)/2], times[len(times)-1])
}

// TestClusterAutoFailoverFrozenPrimary: real daemons under automatic
// failover; an application writes on the Primary without pause under
// protocol C when the Primary's daemon freezes (SIGSTOP: its sockets stay
// open, as in a partition). bravo is promoted; when alpha resumes, its
// lease has ended (the engine reads it from the clock), it learns the new
// term and is demoted, and its held write fails. Every write the
// application saw acknowledged is on bravo.
func TestClusterAutoFailoverFrozenPrimary(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 8<<20, shortTimeouts, autoFailover(t))
	c.startInSync()
	client, err := nbd.Dial(context.Background(), c.node("alpha").Export, "r0")
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	type write struct {
		off  int64
		data []byte
	}
	var (
		mu     sync.Mutex
		acked  []write
		failed *write
		done   = make(chan struct{})
	)
	go func() {
		defer close(done)
		for i := int64(0); ; i++ {
			w := write{off: (i % 1024) * 4096, data: make([]byte, 4096)}
			rand.Read(w.data)
			err := client.WriteAt(w.data, w.off, false)
			mu.Lock()
			if err != nil {
				failed = &w
				mu.Unlock()
				return
			}
			acked = append(acked, w)
			mu.Unlock()
		}
	}()
	time.Sleep(300 * time.Millisecond)
	alpha := c.procs["alpha"]
	if err := alpha.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	frozen := time.Now()
	c.waitFor("bravo", "bravo promoted automatically", time.Minute, func(st *node.ResourceStatus) bool { return st.Role == "Primary" })
	t.Logf("failover time: %v from freezing the Primary to bravo's promotion (detection_timeout 1s)", time.Since(frozen))
	if err := alpha.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	c.waitFor("alpha", "alpha demoted by its daemon", time.Minute, func(st *node.ResourceStatus) bool { return st.Role == "Secondary" })
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatal("the write held on alpha did not fail after its demotion")
	}
	bclient, err := nbd.Dial(context.Background(), c.node("bravo").Export, "r0")
	if err != nil {
		t.Fatal(err)
	}
	defer bclient.Close()
	last := map[int64][]byte{}
	for _, w := range acked {
		last[w.off] = w.data
	}
	for off, want := range last {
		got := make([]byte, len(want))
		if _, err := bclient.ReadAt(got, off); err != nil {
			t.Fatal(err)
		}
		if failed != nil && off == failed.off && bytes.Equal(got, failed.data) {
			continue // the failed write reached bravo: allowed, like any failed write
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("the write alpha acknowledged last at offset %d is not on bravo (%d writes acknowledged)", off, len(acked))
		}
	}
	t.Logf("%d writes acknowledged by alpha, all on bravo", len(acked))
}
