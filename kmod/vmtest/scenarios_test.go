//go:build vmtest

package vmtest

import (
	"bytes"
	"cmp"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// guestConfigs are written to /etc/georepl/NAME in the initramfs: one
// configuration directory per scenario.
var guestConfigs = map[string]string{
	"failover/r0.hcl":      failoverResource(`device  = "/dev/nbd0"`, failoverALExtents),
	"failover-ublk/r0.hcl": failoverResource(`device  = "auto"`+"\n    ublk_queues      = 2\n    ublk_queue_depth = 64", failoverALExtents),
	"blocksize/r0.hcl":     blockSizeResource("r0", 7789, "/dev/vda", "", 0),
	"blocksize-4k/r1.hcl":  blockSizeResource("r1", 7790, "/dev/vdb", "    logical_block_size = \"4KiB\"\n", 1),
	"hold/hold.hcl":        holdResource("n", 7789, "/dev/vda", "/dev/nbd0") + holdResource("u", 7790, "/dev/vdb", "/dev/ublkb0"),
	"resize/rz.hcl":        resizeResource(),
	"autofailover/r0.hcl":  autoFailoverResource(),
	"wan/wan.hcl":          wanResource("c", "C", 7789, "/dev/vda", "/dev/nbd0") + wanResource("a", "A", 7790, "/dev/vdb", "/dev/nbd1"),
}

// failoverALExtents is the failover resource's activity log: 8 extents of
// 4 MiB, an eighth of its disk, so that a rejoin that resyncs the activity
// log is told apart from a full resync.
const (
	failoverALExtents = 8
	failoverDisk      = 256 << 20
	alExtentSize      = 4 << 20
)

// failoverResource is the resource of the ext4 failover scenarios; device
// is the kernel device lines of each node block, alExtents its activity
// log's size in extents.
func failoverResource(device string, alExtents int) string {
	return ext4Resource(device, alExtents, "", nil)
}

// ext4Resource is failoverResource with extra at the end of the resource
// block and nodeExtra(id) at the end of each node block (nil: nothing).
func ext4Resource(device string, alExtents int, extra string, nodeExtra func(id int) string) string {
	node := func(name string, id int) string {
		more := ""
		if nodeExtra != nil {
			more = nodeExtra(id)
		}
		return fmt.Sprintf(`  node %q {
    id      = %d
    address = "10.0.0.%d:7789"
    disk    = "/dev/vda"
    export  = "unix:/run/georepl/r0.sock"
    %s
%s  }
`, name, id, id+1, device, more)
	}
	return fmt.Sprintf(`resource "r0" {
  protocol = "C"
  net {
    shared_secret = "vm rig"
    ping_interval = "2s"
    timeout       = "4s"
  }
  disk {
    al_extents = %d
  }
%s`, alExtents, extra) + node("alpha", 0) + node("bravo", 1) + "}\n"
}

func wanResource(name, protocol string, port int, disk, device string) string {
	node := func(n string, id int) string {
		return fmt.Sprintf(`  node %q {
    id      = %d
    address = "10.0.0.%d:%d"
    disk    = %q
    export  = "unix:/run/georepl/%s.sock"
    device  = %q
  }
`, n, id, id+1, port, disk, name, device)
	}
	return fmt.Sprintf("resource %q {\n  protocol = %q\n  net {\n    shared_secret = \"vm rig\"\n  }\n", name, protocol) +
		node("alpha", 0) + node("bravo", 1) + "}\n"
}

// result is one row of the summary table.
type result struct {
	name, outcome, detail string
}

var (
	resultsMu sync.Mutex
	results   []result
	theRig    *rig
	rigErr    error
	rigOnce   sync.Once
)

func report(name, outcome, format string, args ...any) {
	resultsMu.Lock()
	defer resultsMu.Unlock()
	results = append(results, result{name, outcome, fmt.Sprintf(format, args...)})
}

func getRig(t *testing.T) *rig {
	rigOnce.Do(func() { theRig, rigErr = buildRig() })
	if rigErr != nil {
		t.Fatal(rigErr)
	}
	return theRig
}

func TestMain(m *testing.M) {
	code := m.Run()
	if theRig != nil {
		os.RemoveAll(theRig.work)
	}
	fmt.Println()
	fmt.Println("VM rig summary")
	fmt.Printf("%-28s %-5s %s\n", "scenario", "result", "detail")
	for _, r := range results {
		fmt.Printf("%-28s %-5s %s\n", r.name, r.outcome, r.detail)
		if r.outcome == "FAIL" && code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

// scenario runs fn as subtest name and records its outcome; fn records its
// own detail through *string.
func scenario(t *testing.T, name string, fn func(t *testing.T, detail *string)) {
	t.Run(name, func(t *testing.T) {
		var detail string
		start := time.Now()
		defer func() {
			outcome := "PASS"
			if t.Failed() {
				outcome = "FAIL"
			}
			report(name, outcome, "%s (%s)", detail, time.Since(start).Round(time.Second))
		}()
		fn(t, &detail)
	})
}

// bootPair boots alpha and bravo in parallel.
func (r *rig) bootPair(t *testing.T, lk link, alphaDisks, bravoDisks []string) (*vm, *vm) {
	t.Helper()
	a := r.startVM(t, "alpha", 0, lk, alphaDisks...)
	b := r.startVM(t, "bravo", 1, lk, bravoDisks...)
	a.waitBooted()
	b.waitBooted()
	return a, b
}

func TestExt4Failover(t *testing.T) {
	r := getRig(t)
	scenario(t, "ext4 failover (nbd)", func(t *testing.T, detail *string) {
		ext4Failover(t, r, nbdFailover, detail)
	})
}

// failoverKind is the kernel device an ext4 failover scenario runs on.
type failoverKind struct {
	conf   string // configuration directory in the guest
	dev    string // the kernel device the daemon attaches at `georepl primary`
	module string // the kernel module georepl loads for it
	// check runs on the primary once the device is attached and returns
	// what it saw, for the summary.
	check func(t *testing.T, v *vm) string
	// disk and alExtents are the size of each node's disk and of the
	// configuration's activity log: failoverDisk and failoverALExtents
	// when zero.
	disk      int64
	alExtents int
}

var nbdFailover = failoverKind{conf: "/etc/georepl/failover", dev: "/dev/nbd0", module: "nbd",
	check: func(t *testing.T, v *vm) string {
		out := v.must("echo @@BACKEND $(cat /sys/block/nbd0/backend)", time.Minute)
		if b, _ := lineWith(out, "@@BACKEND "); b != "georepl:r0" {
			t.Errorf("/sys/block/nbd0/backend is %q; want georepl:r0", b)
		}
		return ""
	}}

// ext4Failover is the whole failover story on kind's kernel device: the
// daemon attaches it at `georepl primary`, mkfs and mount, `georepl
// secondary` refused while mounted, files written with fsync and their
// checksums recorded, the primary's QEMU killed mid-write (power loss),
// the secondary promoted and its own device attached, journal replay,
// e2fsck -f -n clean, every fsync'd file intact; then the old primary
// rejoins just by coming up (its activity log marks what may differ), the
// resync moves the activity log's span and what changed since the
// failover, far less than the device, and both disks' data areas end
// byte-identical.
func ext4Failover(t *testing.T, r *rig, kind failoverKind, detail *string) {
	conf, dev := kind.conf, kind.dev
	dir := t.TempDir()
	disk, alExtents := cmp.Or(kind.disk, failoverDisk), cmp.Or(kind.alExtents, failoverALExtents)
	imgA := newDisk(t, filepath.Join(dir, "alpha.img"), disk)
	imgB := newDisk(t, filepath.Join(dir, "bravo.img"), disk)
	lk, err := newLink()
	if err != nil {
		t.Fatal(err)
	}
	alpha, bravo := r.bootPair(t, lk, []string{imgA}, []string{imgB})
	for _, v := range []*vm{alpha, bravo} {
		v.must("georepl create-md --config "+conf+" --node $NODE r0", time.Minute)
		v.must("daemon "+conf, time.Minute)
		v.must("georepl up r0", time.Minute)
	}
	// georepl loads the module at `primary`: /init does not.
	alpha.must(fmt.Sprintf(`[ ! -e /sys/module/%s ] || { echo "%s loaded before georepl primary"; false; }`, kind.module, kind.module), time.Minute)
	initialStart := time.Now()
	alpha.must("georepl primary --force r0", time.Minute)
	alpha.must("georepl wait-sync --timeout 10m r0 </dev/null >/tmp/ws.log 2>&1 || { cat /tmp/ws.log; false; }", 11*time.Minute)
	initialSync := time.Since(initialStart)
	attached := func(v *vm) {
		v.must(fmt.Sprintf(`[ "$(size %s)" != 0 ] || { echo "%s not attached by georepl primary"; georepl status r0; tail -20 /tmp/daemon.log; false; }`, dev, dev), time.Minute)
	}
	attached(alpha)
	checked := kind.check(t, alpha)
	// mkfs as an operator runs it: it discards the whole device first, a
	// request larger than the activity log.
	mkfsStart := time.Now()
	if out, rc := alpha.sh("/usr/sbin/mke2fs -q -t ext4 "+dev, 5*time.Minute); rc != 0 {
		alpha.sh("georepl status r0; tail -40 /tmp/daemon.log", time.Minute)
		t.Fatalf("mke2fs exited %d: %q", rc, out)
	}
	t.Logf("mke2fs took %s", time.Since(mkfsStart).Round(time.Second))
	alpha.must("mount "+dev+" /mnt", time.Minute)
	out := alpha.must("echo @@SIZE $(blockdev --getsize64 "+dev+")", time.Minute)
	sizeStr, _ := lineWith(out, "@@SIZE ")
	size, err := strconv.ParseInt(sizeStr, 10, 64)
	if err != nil || size <= 0 {
		t.Fatalf("device size %q", sizeStr)
	}
	// secondary must be refused while /mnt is mounted, naming the holder.
	refused := false
	if out, rc := alpha.sh("georepl secondary r0", time.Minute); rc == 0 || !strings.Contains(strings.Join(out, " "), "mounted on /mnt") {
		t.Errorf("georepl secondary with %s mounted: rc %d, %q; want a refusal naming /mnt", dev, rc, out)
	} else {
		refused = true
	}

	// Write fsync'd files, then pull the plug mid-write.
	fsynced, _ := alpha.writeThenKill(40)
	t.Logf("alpha killed after %d fsync'd files", len(fsynced))

	// Failover to bravo.
	deadline := time.Now().Add(2 * time.Minute)
	for {
		if _, rc := bravo.sh("georepl primary r0", time.Minute); rc == 0 {
			break
		} else if time.Now().After(deadline) {
			bravo.sh("georepl status r0; tail -20 /tmp/daemon.log", time.Minute)
			t.Fatal("bravo could not be promoted within 2 minutes of the power loss")
		} else {
			time.Sleep(2 * time.Second)
		}
	}
	attached(bravo)
	bravo.must("mount "+dev+" /mnt && umount /mnt", 2*time.Minute) // journal replay
	fsckClean := false
	if out, rc := bravo.sh("/usr/sbin/e2fsck -f -n "+dev, 5*time.Minute); rc == 0 {
		fsckClean = true
	} else {
		t.Errorf("e2fsck -f -n after journal replay exited %d:\n%s", rc, strings.Join(out, "\n"))
	}
	bravo.must("mount -o ro "+dev+" /mnt", time.Minute)
	bad := badFiles(t, bravo, fsynced, "after failover")
	bravo.must("umount /mnt", time.Minute)

	// The old primary rejoins just by coming up: its activity log names
	// the extents that may hold writes the others lack, and the new
	// primary resyncs those plus what changed since the failover.
	alpha = r.startVM(t, "alpha", 0, lk, imgA)
	alpha.waitBooted()
	alpha.must("daemon "+conf, time.Minute)
	alpha.must("georepl up r0", time.Minute)
	syncStart := time.Now()
	bravo.must("georepl wait-sync --timeout 10m r0 </dev/null >/tmp/ws.log 2>&1 || { cat /tmp/ws.log; false; }", 11*time.Minute)
	syncTook := time.Since(syncStart)
	marked := "no activity-log message"
	if out, rc := alpha.sh("grep -o 'activity log of an unclean shutdown[^\"]*' /tmp/daemon.log | head -1", time.Minute); rc == 0 && len(out) > 0 {
		marked, _, _ = strings.Cut(strings.TrimSpace(strings.Join(out, " ")), " out of sync")
	}
	// The new primary's log tells how much the rejoin moved.
	out = bravo.must("echo @@RESYNCED $(grep -o 'finished ([0-9]* bytes' /tmp/daemon.log | tail -1 | tr -dc 0-9)", time.Minute)
	resyncedStr, _ := lineWith(out, "@@RESYNCED ")
	resynced, err := strconv.ParseInt(resyncedStr, 10, 64)
	if err != nil {
		t.Errorf("no finished resync in the new primary's log (%q)", out)
	}
	// The activity log's span (what the old primary may have written
	// unseen) plus what the new primary wrote since the failover (the
	// journal replay: a few MiB), far below the device.
	if limit := int64(alExtents)*alExtentSize + size/8; resynced <= 0 || resynced > limit {
		t.Errorf("the rejoin resynced %d bytes; want some, and at most %d (the activity log is %d MiB of a %d MiB device)",
			resynced, limit, alExtents*alExtentSize>>20, size>>20)
	}

	// Clean shutdown of both, then compare the data areas.
	bravo.must("georepl secondary r0", time.Minute)
	bravo.must(fmt.Sprintf(`[ "$(size %s)" = 0 ] || { echo "%s still there after georepl secondary"; false; }`, dev, dev), time.Minute)
	for _, v := range []*vm{alpha, bravo} {
		v.must("georepl down r0 && stopdaemon && sync", 2*time.Minute)
		v.poweroff()
	}
	same, firstDiff, err := sameData(imgA, imgB, size)
	if err != nil {
		t.Fatal(err)
	}
	if !same {
		t.Errorf("data areas differ (first at byte %d of %d)", firstDiff, size)
	}
	*detail = fmt.Sprintf("%sinitial full sync of %d MiB %s; secondary refused while mounted=%v; %d files fsync'd before the power loss, %d bad after failover; e2fsck -f -n clean=%v; old primary rejoined by `up` (%s), resync of %.1f MiB (%.0f%% of the device) in %s; data areas identical=%v",
		checked, size>>20, initialSync.Round(time.Second), refused, len(fsynced), bad, fsckClean, marked,
		float64(resynced)/(1<<20), 100*float64(resynced)/float64(size), syncTook.Round(time.Second), same)
}

// writeThenKill starts writing files with fsync in v's /mnt (vmguest
// write), kills v's QEMU (a power loss) once n are fsync'd, and returns
// every file v said was fsync'd (name and sha256) and when the kill
// began.
func (v *vm) writeThenKill(n int) (fsynced map[string]string, killed time.Time) {
	v.t.Helper()
	from := v.mark()
	fmt.Fprintf(v.in, "vmguest write -dir /mnt -n 100000 &\n")
	for range n {
		from, _ = v.waitFrom(from, "@@FSYNCED ", 5*time.Minute)
		from++
	}
	killed = time.Now()
	v.kill()
	fsynced = map[string]string{}
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, l := range v.lines {
		if f := strings.Fields(l); len(f) == 3 && f[0] == "@@FSYNCED" {
			fsynced[f[1]] = f[2]
		}
	}
	return fsynced, killed
}

// badFiles checks every file of want (name and sha256, as writeThenKill
// returns them) in v's /mnt, reports each that differs or is missing
// (when: after what), and returns how many did.
func badFiles(t *testing.T, v *vm, want map[string]string, when string) int {
	t.Helper()
	out := v.must("cd /mnt && sha256sum f* 2>/dev/null; cd /", 5*time.Minute)
	got := map[string]string{}
	for _, l := range out {
		if f := strings.Fields(l); len(f) == 2 {
			got[f[1]] = f[0]
		}
	}
	bad := 0
	for name, sum := range want {
		if got[name] != sum {
			bad++
			t.Errorf("%s: checksum %q %s; recorded %s before the power loss", name, got[name], when, sum)
		}
	}
	return bad
}

// sameData compares the first n bytes of two images.
func sameData(a, b string, n int64) (bool, int64, error) {
	fa, err := os.Open(a)
	if err != nil {
		return false, 0, err
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		return false, 0, err
	}
	defer fb.Close()
	ba, bb := make([]byte, 1<<20), make([]byte, 1<<20)
	for off := int64(0); off < n; off += int64(len(ba)) {
		k := min(int64(len(ba)), n-off)
		if _, err := io.ReadFull(io.NewSectionReader(fa, off, k), ba[:k]); err != nil {
			return false, 0, err
		}
		if _, err := io.ReadFull(io.NewSectionReader(fb, off, k), bb[:k]); err != nil {
			return false, 0, err
		}
		if !bytes.Equal(ba[:k], bb[:k]) {
			for i := range k {
				if ba[i] != bb[i] {
					return false, off + i, nil
				}
			}
		}
	}
	return true, 0, nil
}

func TestWANLatency(t *testing.T) {
	r := getRig(t)
	// The VMs belong to the outer test, so that the second scenario can
	// go on with them.
	dir := t.TempDir()
	disk := func(name string) string { return newDisk(t, filepath.Join(dir, name), 16<<20) }
	lk, err := newLink()
	if err != nil {
		t.Fatal(err)
	}
	var alpha, bravo *vm
	ok := false
	scenario(t, "protocol A vs C over WAN", func(st *testing.T, detail *string) {
		alpha = r.startVM(t, "alpha", 0, lk, disk("alpha-c.img"), disk("alpha-a.img"), disk("alpha-local.img"))
		bravo = r.startVM(t, "bravo", 1, lk, disk("bravo-c.img"), disk("bravo-a.img"))
		alpha.t, bravo.t = st, st
		alpha.waitBooted()
		bravo.waitBooted()
		wanLatency(st, alpha, bravo, detail)
		ok = !st.Failed()
	})
	if !ok {
		return
	}
	scenario(t, "daemon restart (reattach)", func(st *testing.T, detail *string) {
		alpha.t, bravo.t = st, st
		daemonRestart(st, alpha, detail)
	})
}

// daemonRestart kills the primary's daemon with /dev/nbd0 attached and a
// write in flight, starts it again and checks
// that the kernel got new sockets (NBD_CMD_RECONFIGURE) and the write
// completed instead of failing.
func daemonRestart(t *testing.T, alpha *vm, detail *string) {
	const conf = "/etc/georepl/wan"
	alpha.must("kill -9 $(pidof georepl); sleep 1", time.Minute)
	alpha.must("vmguest latency -n 3 -device /dev/nbd0 >/tmp/inflight.log 2>&1 & echo $! >/tmp/inflight.pid", time.Minute)
	start := time.Now()
	alpha.must("sleep 2; daemon "+conf+" && georepl up c && georepl up a", 2*time.Minute)
	out, rc := alpha.sh("georepl primary c", 2*time.Minute)
	how := "primary"
	if rc != 0 {
		t.Logf("georepl primary c after the restart: %q; trying --force", out)
		alpha.must("georepl primary --force c", 2*time.Minute)
		how = "primary --force"
	}
	out = alpha.must("i=0; while kill -0 $(cat /tmp/inflight.pid) 2>/dev/null && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done; cat /tmp/inflight.log", 2*time.Minute)
	if _, ok := lineWith(out, "@@LATENCY "); !ok {
		t.Errorf("the write in flight across the daemon restart did not complete: %q", out)
	}
	took := time.Since(start)
	out = alpha.must("cat /sys/block/nbd0/backend; dmesg | grep -i nbd | tail -5", time.Minute)
	t.Logf("after the restart: %q", out)
	*detail = fmt.Sprintf("daemon SIGKILLed with /dev/nbd0 attached and a write in flight; restarted, `%s`: the kernel took new sockets and the write completed after %s", how, took.Round(100*time.Millisecond))
}

// netemDelay is added to the primary's outgoing packets: the round trip
// between the nodes grows by that much.
const netemDelay = 40 * time.Millisecond

func wanLatency(t *testing.T, alpha, bravo *vm, detail *string) {
	const conf = "/etc/georepl/wan"
	for _, v := range []*vm{alpha, bravo} {
		v.must("georepl create-md --config "+conf+" --node $NODE c && georepl create-md --config "+conf+" --node $NODE a", time.Minute)
		v.must("daemon "+conf, time.Minute)
		v.must("georepl up c && georepl up a", time.Minute)
	}
	alpha.must("georepl primary --force c && georepl primary --force a", time.Minute)
	alpha.must("{ georepl wait-sync --timeout 5m c && georepl wait-sync --timeout 5m a; } </dev/null >/tmp/ws.log 2>&1 || { cat /tmp/ws.log; false; }", 11*time.Minute)
	alpha.must("attach /dev/nbd0 c && attach /dev/nbd1 a", time.Minute)
	// measure returns the median and the fastest of 40 writes.
	measure := func(dev string) (time.Duration, time.Duration) {
		out := alpha.must("vmguest latency -n 40 -device "+dev, 5*time.Minute)
		v, ok := lineWith(out, "@@LATENCY ")
		if !ok {
			t.Fatalf("no latency from %s: %q", dev, out)
		}
		var med, p90, fastest int64
		fmt.Sscanf(v, "%d %d %d", &med, &p90, &fastest)
		t.Logf("%s: median %d µs, p90 %d µs, fastest %d µs", dev, med, p90, fastest)
		return time.Duration(med) * time.Microsecond, time.Duration(fastest) * time.Microsecond
	}
	// First on the bare link, then with the WAN's delay: protocol C pays
	// the round trip (once: the flush Linux sends after the FUA write
	// has nothing left to wait for), protocol A does not. The checks
	// are bounds no load can cross: a protocol C write that completes
	// faster than the added delay did not wait for the peer, and
	// protocol A writes that all take longer than it did (a slow machine
	// only makes writes slower; how much slower is a figure, not a
	// check).
	local, _ := measure("/dev/vdc")
	c0, _ := measure("/dev/nbd0")
	a0, _ := measure("/dev/nbd1")
	alpha.must(fmt.Sprintf("/usr/sbin/tc qdisc add dev eth0 root netem delay %dms rate 20mbit", netemDelay.Milliseconds()), time.Minute)
	ping := alpha.must("ping -c 3 10.0.0.2 | tail -1", time.Minute)
	c, cFastest := measure("/dev/nbd0")
	a, aFastest := measure("/dev/nbd1")
	if cFastest < netemDelay {
		t.Errorf("protocol C: a write completed in %s with the WAN's %s delay: it did not wait for the peer", cFastest, netemDelay)
	}
	if aFastest >= netemDelay {
		t.Errorf("protocol A: the fastest of 40 writes took %s with the WAN's %s delay (median %s, C %s): A waits for the peer", aFastest, netemDelay, a, c)
	}
	r := func(d time.Duration) time.Duration { return d.Round(100 * time.Microsecond) }
	*detail = fmt.Sprintf("4 KiB O_DIRECT|O_DSYNC write, median of 40: local disk %s; bare link A %s, C %s; +%s RTT (netem, 20 Mbit/s; ping %s) A %s, C %s",
		r(local), r(a0), r(c0), netemDelay, strings.TrimPrefix(strings.TrimSpace(strings.Join(ping, " ")), "round-trip min/avg/max = "), r(a), r(c))
	alpha.must("/usr/sbin/tc qdisc del dev eth0 root", time.Minute)
}
