//go:build vmtest

package vmtest

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// holdResource is a two-node resource with quorum = "majority" (both
// nodes): the Primary holds its writes (on_no_quorum = "suspend-io", the
// default) while the other node is away. device is alpha's kernel device.
func holdResource(name string, port int, disk, device string) string {
	node := func(n string, id int) string {
		dev := ""
		if n == "alpha" {
			dev = fmt.Sprintf("export = \"unix:/run/georepl/%s.sock\"\n    device = %q", name, device)
		}
		return fmt.Sprintf(`  node %q {
    id      = %d
    address = "10.0.0.%d:%d"
    disk    = %q
    %s
  }
`, n, id, id+1, port, disk, dev)
	}
	return fmt.Sprintf(`resource %q {
  protocol = "C"
  quorum   = "majority"
  net {
    shared_secret = "vm rig"
    ping_interval = "2s"
    timeout       = "4s"
  }
`, name) + node("alpha", 0) + node("bravo", 1) + "}\n"
}

// quorumHold is how long the test keeps the Primary without quorum: longer
// than the kernel's default request timeout (30 s) plus its dead-connection
// timeout (120 s here), after which an nbd device that gives up on its
// sockets fails the held writes.
const quorumHold = 3 * time.Minute

// TestQuorumHold writes to ext4 on /dev/nbd0 and on /dev/ublkb0 (two
// resources of one Primary) with fsync, cuts the link to the only other
// node for quorumHold, so that the Primary loses quorum and holds every
// write (suspend-io), then restores it: every write must complete, the
// writers go on, and the kernel log has no I/O error.
func TestQuorumHold(t *testing.T) {
	r := getRig(t)
	scenario(t, "quorum lost 3 min (nbd and ublk)", func(t *testing.T, detail *string) {
		dir := t.TempDir()
		lk, err := newLink()
		if err != nil {
			t.Fatal(err)
		}
		disks := func(node string) []string {
			return []string{newDisk(t, filepath.Join(dir, node+"-n.img"), 64<<20), newDisk(t, filepath.Join(dir, node+"-u.img"), 64<<20)}
		}
		alpha, bravo := r.bootPair(t, lk, disks("alpha"), disks("bravo"))
		const conf = "/etc/georepl/hold"
		for _, v := range []*vm{alpha, bravo} {
			v.must("georepl create-md --config "+conf+" --node $NODE n && georepl create-md --config "+conf+" --node $NODE u", time.Minute)
			v.must("daemon "+conf, time.Minute)
			v.must("georepl up n && georepl up u", time.Minute)
		}
		alpha.must("georepl primary --force n && georepl primary --force u", 2*time.Minute)
		alpha.must("{ georepl wait-sync --timeout 5m n && georepl wait-sync --timeout 5m u; } </dev/null >/tmp/ws.log 2>&1 || { cat /tmp/ws.log; false; }", 11*time.Minute)
		devs := map[string]string{"n": "/dev/nbd0", "u": "/dev/ublkb0"}
		for res, dev := range devs {
			alpha.must(fmt.Sprintf("/usr/sbin/mke2fs -q -t ext4 %s && mkdir -p /m%s && mount %s /m%s", dev, res, dev, res), 5*time.Minute)
			alpha.must(fmt.Sprintf("vmguest write -dir /m%s -n 1000000 -size 16384 >/tmp/w%s.log 2>&1 & echo $! >/tmp/w%s.pid", res, res, res), time.Minute)
		}
		// count returns how many files each writer has fsync'd.
		count := func() map[string]int {
			out := alpha.must("for r in n u; do echo @@COUNT $r $(grep -c FSYNCED /tmp/w$r.log); done", time.Minute)
			c := map[string]int{}
			for _, l := range out {
				if f := strings.Fields(l); len(f) == 3 && f[0] == "@@COUNT" {
					c[f[1]], _ = strconv.Atoi(f[2])
				}
			}
			return c
		}
		alive := func(when string) {
			for res := range devs {
				if _, rc := alpha.sh(fmt.Sprintf("kill -0 $(cat /tmp/w%s.pid)", res), time.Minute); rc != 0 {
					out, _ := alpha.sh(fmt.Sprintf("tail -3 /tmp/w%s.log; dmesg | tail -20", res), time.Minute)
					t.Fatalf("%s: the writer on %s ended: %q", when, devs[res], out)
				}
			}
		}
		time.Sleep(5 * time.Second)
		before := count()
		for res, n := range before {
			if n == 0 {
				t.Fatalf("the writer on %s fsync'd nothing before the cut", devs[res])
			}
		}
		alpha.must("dmesg -c >/dev/null", time.Minute)
		// Cut bravo off: alpha loses quorum after timeout and holds.
		bravo.must("ip link set eth0 down", time.Minute)
		cut := time.Now()
		deadline := cut.Add(time.Minute)
		for {
			out := alpha.must("georepl status", time.Minute)
			if strings.Count(strings.Join(out, "\n"), "(NO, suspend-io)") == 2 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("alpha did not lose quorum on both resources within a minute of the cut: %q", out)
			}
			time.Sleep(2 * time.Second)
		}
		held := count()
		time.Sleep(quorumHold - time.Since(cut))
		alive("after the hold")
		during := count()
		for res := range devs {
			// One file may have been between its write and its print.
			if during[res] > held[res]+1 {
				t.Errorf("%s: %d files fsync'd while quorum was lost (from %d to %d): nothing was held", devs[res], during[res]-held[res], held[res], during[res])
			}
		}
		bravo.must("ip link set eth0 up", time.Minute)
		restored := time.Now()
		// Quorum back: the held writes complete and the writers go on.
		deadline = restored.Add(2 * time.Minute)
		var after map[string]int
		for {
			after = count()
			if after["n"] >= during["n"]+20 && after["u"] >= during["u"]+20 {
				break
			}
			if time.Now().After(deadline) {
				out, _ := alpha.sh("georepl status; tail -3 /tmp/wn.log /tmp/wu.log", time.Minute)
				t.Fatalf("the writers did not go on within 2 minutes of the link's return (%v before, %v now): %q", during, after, out)
			}
			time.Sleep(2 * time.Second)
		}
		resumed := time.Since(restored)
		alive("after the return")
		alpha.must("kill $(cat /tmp/wn.pid) $(cat /tmp/wu.pid); sleep 1; sync", 2*time.Minute)
		out, _ := alpha.sh("grep -h vmguest: /tmp/wn.log /tmp/wu.log", time.Minute)
		if len(out) > 0 && strings.TrimSpace(strings.Join(out, "")) != "" {
			t.Errorf("a writer failed: %q", out)
		}
		// The kernel's log since the cut: no failed I/O, no socket given up.
		out, _ = alpha.sh("dmesg | grep -i -E 'error|timed out|dead|fail' ; true", time.Minute)
		var bad []string
		for _, l := range out {
			if strings.TrimSpace(l) != "" {
				bad = append(bad, l)
			}
		}
		if len(bad) > 0 {
			t.Errorf("kernel log after the hold:\n%s", strings.Join(bad, "\n"))
		}
		out, _ = alpha.sh("echo @@STUCK $(dmesg | grep -c 'Possible stuck request') @@HUNG $(dmesg | grep -c 'blocked for more than')", time.Minute)
		var stuck, hung int
		if l, ok := lineWith(out, "@@STUCK "); ok {
			fmt.Sscanf(l, "%d @@HUNG %d", &stuck, &hung)
		}
		for res, dev := range devs {
			alpha.must("umount /m"+res, time.Minute)
			if out, rc := alpha.sh("/usr/sbin/e2fsck -f -n "+dev, 5*time.Minute); rc != 0 {
				t.Errorf("e2fsck -f -n %s exited %d:\n%s", dev, rc, strings.Join(out, "\n"))
			}
		}
		*detail = fmt.Sprintf("ext4 writers with fsync on /dev/nbd0 and /dev/ublkb0, link cut %s: quorum lost, %d+%d files during the hold; link back, writers resumed in %s (%d and %d files since), no writer error, kernel log clean (%d stuck-request notices, %d hung-task warnings)",
			quorumHold, during["n"]-held["n"], during["u"]-held["u"], resumed.Round(time.Second), after["n"]-during["n"], after["u"]-during["u"], stuck, hung)
	})
}
