package node

import (
	"fmt"
	"strings"
	"testing"
)

// TestTLSRekeyKeepsState: over tcp with TLS and a budget of a few hundred
// records per TLS session, a stream of protocol C writes runs through
// several re-keys, each a new TLS session on the same path that the
// connection continues on: no write fails, the connection never drops (no
// resync), dr's data equals alpha's, and both nodes count the re-keys in
// their status and events. With the nodes' own addresses only (no path
// blocks) and with two paths.
func TestTLSRekeyKeepsState(t *testing.T) {
	for _, single := range []bool{true, false} {
		t.Run(fmt.Sprintf("single=%v", single), func(t *testing.T) {
			opts := Options{TLSRekeyRecords: 400}
			c := newPathCluster(t, pathSetup{tls: true, single: single, opts: map[string]Options{"alpha": opts, "dr": opts}})
			alpha, dr := c.daemons["alpha"], c.daemons["dr"]
			logs := func() string { return "alpha:\n" + c.logs["alpha"].String() + "\ndr:\n" + c.logs["dr"].String() }
			waitInSync(t, alpha, logs)
			events := watchPaths(t, alpha, dr)
			logMark := map[string]int{"alpha": len(c.logs["alpha"].String()), "dr": len(c.logs["dr"].String())}
			before := peerStatus(t, alpha, "dr").TLSRekeys

			dev, err := alpha.LocalDevice("r0")
			if err != nil {
				t.Fatal(err)
			}
			load := startWrites(dev, 2, 16<<10)
			const want = 4
			waitUntil(t, "alpha's status counts the re-keys", func() (bool, string) {
				p := peerStatus(t, alpha, "dr")
				return p.TLSRekeys >= before+want, fmt.Sprintf("%d re-keys, %d writes\n%s", p.TLSRekeys-before, load.completed.Load(), logs())
			})
			load.wait(t, 50, logs)
			load.stop(t)
			t.Logf("%d protocol C writes completed", load.completed.Load())
			checkSameData(t, alpha, c.dir, dev.Size())
			c.checkNotLost(t, logMark)
			// The re-keying node is the dialer, alpha; dr counts the
			// same re-keys once the last one is through.
			waitUntil(t, "dr's status counts alpha's re-keys", func() (bool, string) {
				a, d := peerStatus(t, alpha, "dr"), peerStatus(t, dr, "alpha")
				return a.TLSRekeys == d.TLSRekeys, fmt.Sprintf("alpha %d, dr %d\n%s", a.TLSRekeys, d.TLSRekeys, logs())
			})
			events.mu.Lock()
			rekeys := events.rekeys
			events.mu.Unlock()
			count := map[string]int{}
			for _, ev := range rekeys {
				count[ev.Node]++
				if !strings.HasPrefix(ev.New, "path 0 ") {
					t.Errorf("%s: re-key event on %q, want path 0", ev.Node, ev.New)
				}
			}
			if count["alpha"] < want || count["dr"] < want {
				t.Errorf("re-key events: %v, want at least %d on each node", count, want)
			}
			if moves, _ := events.moves("alpha"); len(moves) != 0 {
				t.Errorf("alpha moved to %q; a re-key is no move", moves)
			}
		})
	}
}

// TestTLSRekeyOlderPeer: dr offers no resume feature, as an older
// version: alpha renews the keys by making the connection anew at each
// budget, saying so, and dr ends up with alpha's data all the same.
func TestTLSRekeyOlderPeer(t *testing.T) {
	opts := Options{TLSRekeyRecords: 400}
	old := func(d *Daemon) { d.noResume = true }
	c := newPathClusterAdjusted(t, pathSetup{tls: true, single: true, opts: map[string]Options{"alpha": opts, "dr": opts}}, map[string]func(*Daemon){"dr": old})
	alpha := c.daemons["alpha"]
	logs := func() string { return "alpha:\n" + c.logs["alpha"].String() + "\ndr:\n" + c.logs["dr"].String() }
	waitInSync(t, alpha, logs)
	dev, err := alpha.LocalDevice("r0")
	if err != nil {
		t.Fatal(err)
	}
	load := startWrites(dev, 2, 16<<10)
	waitUntil(t, "alpha renews the keys by reconnecting twice", func() (bool, string) {
		return strings.Count(c.logs["alpha"].String(), "renewing the TLS keys by reconnecting") >= 2, logs()
	})
	load.stop(t)
	if !strings.Contains(c.logs["alpha"].String(), "the peer cannot continue a connection on a new TLS session") {
		t.Errorf("alpha did not warn at connect that dr cannot renew keys in place; its log:\n%s", c.logs["alpha"].String())
	}
	waitUntil(t, "dr in sync again", func() (bool, string) {
		p := peerStatus(t, alpha, "dr")
		return p.Conn == "Connected" && p.Repl == "Established" && p.Disk == "UpToDate" && p.OutOfSync == 0,
			fmt.Sprintf("%s %s %s %d\n%s", p.Conn, p.Repl, p.Disk, p.OutOfSync, logs())
	})
	checkSameData(t, alpha, c.dir, dev.Size())
}

// TestSinglePathPeerLostWithinGrace: a tcp connection with TLS and no
// path blocks can resume (for its re-keys), but when its peer's daemon
// goes away it stays suspended only singlePathGrace, not its whole
// timeout (20 s here): then it fails, and the Primary's protocol C writes
// go on without the peer, as before such connections could resume.
func TestSinglePathPeerLostWithinGrace(t *testing.T) {
	c := newPathCluster(t, pathSetup{tls: true, single: true, timeout: "20s"})
	alpha, dr := c.daemons["alpha"], c.daemons["dr"]
	logs := func() string { return "alpha:\n" + c.logs["alpha"].String() + "\ndr:\n" + c.logs["dr"].String() }
	waitInSync(t, alpha, logs)
	if err := dr.Close(); err != nil {
		t.Fatal(err)
	}
	// The status may show dr gone before the log line that says why is
	// written: wait for both. Why: the path stayed gone for the grace,
	// or alpha's attempt to continue reached dr's listener while its
	// daemon was still shutting down, and dr refused it (its resource was
	// down already): a definite answer, which ends the connection at once.
	reasons := []string{
		fmt.Sprintf("no path to the peer within %v", singlePathGrace),
		"refused by the peer: resource r0 is down on node dr",
	}
	waitUntil(t, "alpha gives dr up within the grace", func() (bool, string) {
		p := peerStatus(t, alpha, "dr")
		said := false
		for _, r := range reasons {
			said = said || strings.Contains(c.logs["alpha"].String(), r)
		}
		return p.Conn != "Connected" && said,
			fmt.Sprintf("dr %s; alpha's log says neither %q yet\n%s", p.Conn, reasons, logs())
	})
	dev, err := alpha.LocalDevice("r0")
	if err != nil {
		t.Fatal(err)
	}
	load := startWrites(dev, 1, 4<<10)
	load.wait(t, 20, logs)
	load.stop(t)
}
