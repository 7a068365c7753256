//go:build vmtest

package vmtest

import (
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The rdma transport plugin in the guests: the plugin (cgo) and its
// conformance test binary with the libraries ldd lists, the Soft-RoCE
// provider of libibverbs, and iproute2's rdma for /init's
// `rdma link add rxe0 type rxe netdev eth0`.
const (
	rdmaPlugin = "/usr/lib/georepl/rdma"
	rdmaTest   = "/usr/lib/georepl/rdma.test"
)

// addRDMA builds the plugin and its tests into ird, with what they need,
// and writes the rdma scenario's configuration with the plugin's
// checksum.
func addRDMA(root, work, ird string) error {
	plugin := filepath.Join(ird, rdmaPlugin)
	if err := cgoBuild(root, "build", plugin, "./plugins/rdma"); err != nil {
		return err
	}
	if err := cgoBuild(root, "test", filepath.Join(ird, rdmaTest), "./plugins/rdma"); err != nil {
		return err
	}
	for _, bin := range []string{plugin, filepath.Join(ird, rdmaTest)} {
		if err := copyLibs(bin, ird); err != nil {
			return err
		}
	}
	providers, _ := filepath.Glob("/usr/lib/x86_64-linux-gnu/libibverbs/librxe-rdmav*.so")
	if len(providers) == 0 {
		return fmt.Errorf("no Soft-RoCE provider of libibverbs (librxe-rdmav*.so): is ibverbs-providers installed?")
	}
	for _, f := range append(providers, "/usr/bin/rdma") {
		if err := copyWithLibs(f, ird); err != nil {
			return err
		}
	}
	if err := copyFile("/etc/libibverbs.d/rxe.driver", filepath.Join(ird, "etc/libibverbs.d/rxe.driver"), 0o644); err != nil {
		return err
	}
	b, err := os.ReadFile(plugin)
	if err != nil {
		return err
	}
	hdr := fmt.Sprintf("plugin \"rdma\" {\n  path   = %q\n  sha256 = \"%x\"\n}\n\n", rdmaPlugin, sha256.Sum256(b))
	failover := failoverResource(`device  = "/dev/nbd0"`, rdmaFailoverALExtents)
	if !strings.Contains(failover, "  net {\n") {
		return fmt.Errorf("the failover resource has no net block to put the rdma transport in")
	}
	for name, text := range map[string]string{
		"rdma/rdma.hcl": hdr + rdmaResource("rd", "rdma", 7791, "/dev/vda", "/dev/nbd0") +
			rdmaResource("tc", "tcp", 7792, "/dev/vdb", "/dev/nbd1"),
		"rdma-short/rd.hcl":    hdr + rdmaResource("rd", "rdma", 7791, "/dev/vda", "/dev/nbd0"),
		"failover-rdma/r0.hcl": hdr + strings.Replace(failover, "  net {\n", "  net {\n    transport = \"rdma\"\n    csums     = \"crc32c\"\n", 1),
	} {
		conf := filepath.Join(ird, "etc/georepl", name)
		if err := os.MkdirAll(filepath.Dir(conf), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// The ext4 failover over rdma moves less data than the others: Soft-RoCE
// under emulation carries 0.6 to 1.4 MB/s, and the initial sync of the
// others' 256 MiB took 3 of its 7.5 minutes (95 MiB: 2 min 43 s at a load
// average of 10). Its resource resyncs by checksum (csums), so that the
// initial sync of two zeroed disks and the rejoin's resync send digests
// and the blocks that differ; the writes replicate over rdma as ever. The
// smallest activity log (7 extents, 28 MiB) on 96 MiB still tells the
// rejoin's resync (the activity log and the journal replay) from a full
// one.
const (
	rdmaFailoverDisk      = 96 << 20
	rdmaFailoverALExtents = 7
)

// TestExt4FailoverRDMA is the ext4 power-loss failover (ext4Failover)
// with the resource's connection on the rdma transport over Soft-RoCE.
func TestExt4FailoverRDMA(t *testing.T) {
	r := getRig(t)
	scenario(t, "ext4 failover (nbd over rdma)", func(t *testing.T, detail *string) {
		kind := nbdFailover
		kind.conf = "/etc/georepl/failover-rdma"
		kind.disk, kind.alExtents = rdmaFailoverDisk, rdmaFailoverALExtents
		kind.check = func(t *testing.T, v *vm) string {
			nbdFailover.check(t, v)
			if out := v.must("georepl status r0", time.Minute); !strings.Contains(strings.Join(out, " "), "transport:rdma(running)") {
				t.Errorf("the connection is not on the rdma transport: %q", out)
			}
			return "connection on rdma; "
		}
		ext4Failover(t, r, kind, detail)
	})
}

// cgoBuild runs `go build` or `go test -c` of pkg into out with cgo. The
// plugin is built without its symbol table and DWARF (a third smaller):
// every start of it hashes it (its sha256 is checked), seconds each under
// the guests' emulation, and the conformance suite starts it twelve times.
func cgoBuild(root, verb, out, pkg string) error {
	args := []string{verb, "-trimpath", "-ldflags=-s -w", "-o", out, pkg}
	if verb == "test" {
		args = []string{"test", "-c", "-trimpath", "-o", out, pkg}
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	cmd := exec.Command("go", args...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=1", "GOOS=linux", "GOARCH=amd64")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go %s %s (cgo: needs libibverbs-dev and librdmacm-dev): %w\n%s", verb, pkg, err, b)
	}
	return nil
}

// rdmaResource is a protocol C resource between alpha and bravo over
// transport.
func rdmaResource(name, transport string, port int, disk, device string) string {
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
	return fmt.Sprintf("resource %q {\n  protocol = \"C\"\n  net {\n    transport     = %q\n    shared_secret = \"vm rig\"\n  }\n", name, transport) +
		node("alpha", 0) + node("bravo", 1) + "}\n"
}

// TestRDMA proves the rdma transport plugin on the kernel's RDMA verbs,
// Soft-RoCE (rdma_rxe) on each guest's eth0:
//
//   - conformance: the transport conformance suite on the plugin inside
//     alpha, dialer and listener in one plugin process over rxe on eth0
//     (the suite's Dial and Listen share one Transport, so its two ends
//     are one guest; the bytes still go through the rxe device's queue
//     pairs, looped back by rxe);
//   - replication: resource rd with transport = "rdma" under protocol C
//     between the two guests, beside resource tc on tcp in the same VMs:
//     4 KiB O_DIRECT|O_DSYNC write latency, 4 KiB IOPS from 16 writers
//     and 1 MiB write throughput through /dev/nbd0 (rdma) and /dev/nbd1
//     (tcp); then the primary's plugin SIGKILLed mid-write
//     (rdmaPluginKilled); then both disks' data areas compared byte for
//     byte after a clean shutdown, and what fill wrote checked on both.
func TestRDMA(t *testing.T) {
	r := getRig(t)
	alpha, bravo, imgs := bootRDMA(t, r, 32<<20, "rd", "tc")
	scenario(t, "rdma conformance (rxe)", func(st *testing.T, detail *string) {
		alpha.t, bravo.t = st, st
		defer func() { alpha.t, bravo.t = t, t }()
		rdmaConformance(st, alpha, bravo, detail)
	})
	scenario(t, "rdma replication (protocol C)", func(st *testing.T, detail *string) {
		alpha.t, bravo.t = st, st
		rdmaReplication(st, alpha, bravo, imgs, rdmaCompared, detail)
	})
}

// TestRDMAShort is the rdma proof CI affords: TestRDMA on one boot of
// the two guests without its tcp resource and its measurements. The
// conformance suite in full over rxe (and bravo's no-device error), then
// resource rd with transport = "rdma" under protocol C: initial sync of
// its 16 MiB disk, the primary's plugin SIGKILLed during 12 MiB of
// writes, the resync, and after a clean shutdown both data areas
// byte-identical with every acknowledged write on both.
func TestRDMAShort(t *testing.T) {
	r := getRig(t)
	alpha, bravo, imgs := bootRDMA(t, r, 16<<20, "rd")
	scenario(t, "rdma short: conformance", func(st *testing.T, detail *string) {
		alpha.t, bravo.t = st, st
		defer func() { alpha.t, bravo.t = t, t }()
		rdmaConformance(st, alpha, bravo, detail)
	})
	scenario(t, "rdma short: replication (C)", func(st *testing.T, detail *string) {
		alpha.t, bravo.t = st, st
		rdmaReplication(st, alpha, bravo, imgs, rdmaShort, detail)
	})
}

// bootRDMA boots alpha and bravo, each with a disk of size per
// resource (in their order: /dev/vda, /dev/vdb), and waits for their rxe0
// to be ACTIVE. imgs maps NODE-RESOURCE.img to the disk's image.
func bootRDMA(t *testing.T, r *rig, size int64, resources ...string) (alpha, bravo *vm, imgs map[string]string) {
	dir := t.TempDir()
	imgs = map[string]string{}
	disks := func(node string) []string {
		var d []string
		for _, res := range resources {
			name := node + "-" + res + ".img"
			imgs[name] = newDisk(t, filepath.Join(dir, name), size)
			d = append(d, imgs[name])
		}
		return d
	}
	lk, err := newLink()
	if err != nil {
		t.Fatal(err)
	}
	alpha, bravo = r.bootPair(t, lk, disks("alpha"), disks("bravo"))
	for _, v := range []*vm{alpha, bravo} {
		v.must("rdma link show | grep -q 'rxe0.*ACTIVE' || { rdma link show; dmesg | tail -20; false; }", time.Minute)
	}
	return alpha, bravo, imgs
}

// rdmaConformance runs the transport conformance suite on the plugin
// inside alpha, over rxe0. Meanwhile bravo, idle, shows the error of a
// host whose rdma_rxe has no device, then gets rxe0 back.
func rdmaConformance(t *testing.T, alpha, bravo *vm, detail *string) {
	bravoOut := make(chan []string, 1)
	go func() {
		out, _ := bravo.sh(fmt.Sprintf("rdma link delete rxe0; %s -test.run TestNoDeviceError -test.v 2>&1 | grep -E '^ *(--- |proto_test)'; rdma link add rxe0 type rxe netdev eth0; sleep 1; rdma link show", rdmaTest), 5*time.Minute)
		bravoOut <- out
	}()
	out, rc := alpha.sh(fmt.Sprintf("cd /tmp && GEOREPL_RDMA_ADDR=10.0.0.1:0 GEOREPL_RDMA_PLUGIN=%s %s -test.run TestConformance -test.v -test.timeout 20m 2>&1 | grep -E '^ *(=== RUN|--- |PASS|FAIL|ok|panic)|rdma_test|suite.go' ; cd /", rdmaPlugin, rdmaTest), 25*time.Minute)
	passed, failed := 0, 0
	for _, l := range out {
		l = strings.TrimSpace(l)
		if strings.HasPrefix(l, "--- PASS: TestConformance/") {
			passed++
		}
		if strings.HasPrefix(l, "--- FAIL") {
			failed++
		}
	}
	if rc != 0 || failed > 0 || passed == 0 || !strings.Contains(strings.Join(out, "\n"), "--- PASS: TestConformance ") {
		t.Errorf("conformance over rxe: rc %d, %d subtests passed, %d failed:\n%s", rc, passed, failed, strings.Join(out, "\n"))
	}
	// LargeTransfer moves 64 MiB on the data channel: the transport's
	// own throughput over rxe, without georepl around it.
	large := ""
	for _, l := range out {
		var secs float64
		if _, err := fmt.Sscanf(strings.TrimSpace(l), "--- PASS: TestConformance/LargeTransfer (%fs)", &secs); err == nil && secs > 0 {
			large = fmt.Sprintf("; LargeTransfer's 64 MiB in %.1fs (%.1f MB/s)", secs, 64*1.048576/secs)
		}
	}
	diag := <-bravoOut
	noDevice := ""
	for _, l := range diag {
		if _, msg, ok := strings.Cut(l, "proto_test.go:"); ok {
			_, noDevice, _ = strings.Cut(msg, ": ") // after the line number
		}
	}
	if all := strings.Join(diag, "\n"); !strings.Contains(all, "--- PASS: TestNoDeviceError") || !strings.Contains(all, "rxe0") || !strings.Contains(all, "ACTIVE") {
		t.Errorf("bravo without rxe0, then with it again: %q", diag)
	}
	t.Logf("bravo without rxe0: %q", diag)
	*detail = fmt.Sprintf("%d subtests passed, %d failed, over rxe0 on alpha's eth0%s; bravo with rdma_rxe and no device: %q", passed, failed, large, noDevice)
}

// rdmaRun is what rdmaReplication does.
type rdmaRun struct {
	conf string // configuration directory in the guests
	// compare adds resource tc on tcp beside rd on rdma (/dev/vdb,
	// /dev/nbd1) and measures both.
	compare bool
	killMiB int // written while the primary's plugin is killed
}

var (
	// rdmaCompared is TestRDMA's: rdma against tcp, same VMs, same run.
	rdmaCompared = rdmaRun{conf: "/etc/georepl/rdma", compare: true, killMiB: 24}
	// rdmaShort is TestRDMAShort's: rd alone, no measurements, and less
	// written across the plugin's death (at 1 to 2 MB/s under TCG, still
	// seconds of writes after the kill).
	rdmaShort = rdmaRun{conf: "/etc/georepl/rdma-short", killMiB: 12}
)

// rdmaReplication replicates resource rd (transport = "rdma", protocol
// C) from alpha to bravo: initial sync, the primary's plugin killed
// mid-write (rdmaPluginKilled), a clean shutdown, then both disks' data
// areas compared byte for byte and what fill wrote checked on both.
func rdmaReplication(t *testing.T, alpha, bravo *vm, imgs map[string]string, run rdmaRun, detail *string) {
	conf := run.conf
	res := []string{"rd"}
	if run.compare {
		res = append(res, "tc")
	}
	// each is "georepl VERB r" for every resource r, joined by &&.
	each := func(verb string) string {
		var cmds []string
		for _, r := range res {
			cmds = append(cmds, "georepl "+verb+" "+r)
		}
		return strings.Join(cmds, " && ")
	}
	for _, v := range []*vm{alpha, bravo} {
		v.must(each("create-md --config "+conf+" --node $NODE"), time.Minute)
		v.must("daemon "+conf, time.Minute)
		v.must(each("up"), time.Minute)
	}
	alpha.must(each("primary --force"), time.Minute)
	syncStart := time.Now()
	alpha.must("{ "+each("wait-sync --timeout 10m")+"; } </dev/null >/tmp/ws.log 2>&1 || { cat /tmp/ws.log; georepl status rd; tail -30 /tmp/daemon.log; false; }", 21*time.Minute)
	syncTook := time.Since(syncStart)
	out := alpha.must("georepl status rd", time.Minute)
	t.Logf("status rd: %q", out)
	if !strings.Contains(strings.Join(out, " "), "transport:rdma(running)") {
		t.Errorf("georepl status rd does not show the rdma transport running: %q", out)
	}
	alpha.must("attach /dev/nbd0 rd", time.Minute)
	measured := ""
	if run.compare {
		alpha.must("attach /dev/nbd1 tc", time.Minute)
		measured = rdmaCompare(t, alpha)
	}
	out = alpha.must("echo @@SIZE $(blockdev --getsize64 /dev/nbd0)", time.Minute)
	sizeStr, _ := lineWith(out, "@@SIZE ")
	size, err := strconv.ParseInt(sizeStr, 10, 64)
	if err != nil || size <= 0 {
		t.Fatalf("device size %q", sizeStr)
	}
	killed := rdmaPluginKilled(t, alpha, run.killMiB)
	for _, v := range []*vm{alpha, bravo} {
		if v == alpha {
			v.must(each("secondary"), time.Minute)
		}
		v.must(each("down")+" && stopdaemon && sync", 2*time.Minute)
		v.poweroff()
	}
	same, firstDiff, err := sameData(imgs["alpha-rd.img"], imgs["bravo-rd.img"], size)
	if err != nil {
		t.Fatal(err)
	}
	if !same {
		t.Errorf("rdma: the data areas differ (first at byte %d of %d)", firstDiff, size)
	}
	// Every write fill had acknowledged is on both disks.
	want := fillData(run.killMiB)
	for _, img := range []string{"alpha-rd.img", "bravo-rd.img"} {
		if off, err := hasPrefix(imgs[img], want); err != nil {
			t.Fatal(err)
		} else if off >= 0 {
			t.Errorf("%s: acknowledged data differs at byte %d", img, off)
		}
	}
	synced := "rd (rdma)"
	if run.compare {
		synced = "rd (rdma) and tc (tcp)"
	}
	*detail = fmt.Sprintf("initial sync of %d MiB each, %s, %s; %s%s; data areas identical=%v",
		size>>20, synced, syncTook.Round(time.Second), measured, killed, same)
}

// rdmaCompare measures /dev/nbd0 (rd, rdma) and /dev/nbd1 (tc, tcp) on
// alpha and returns the summary's words for it.
func rdmaCompare(t *testing.T, alpha *vm) string {
	latency := func(dev string) (int64, int64) {
		out := alpha.must("vmguest latency -n 100 -device "+dev, 10*time.Minute)
		v, ok := lineWith(out, "@@LATENCY ")
		if !ok {
			t.Fatalf("no latency from %s: %q", dev, out)
		}
		var med, p90 int64
		fmt.Sscanf(v, "%d %d", &med, &p90)
		return med, p90
	}
	throughput := func(dev string) float64 {
		out := alpha.must("vmguest fill -n 16 -device "+dev, 10*time.Minute)
		v, ok := lineWith(out, "@@THROUGHPUT ")
		if !ok {
			t.Fatalf("no throughput from %s: %q", dev, out)
		}
		mbps, _ := strconv.ParseFloat(v, 64)
		return mbps
	}
	iops := func(dev string) float64 {
		out := alpha.must("vmguest iops -n 400 -qd 16 -device "+dev, 10*time.Minute)
		v, ok := lineWith(out, "@@IOPS ")
		if !ok {
			t.Fatalf("no IOPS from %s: %q", dev, out)
		}
		n, _ := strconv.ParseFloat(v, 64)
		return n
	}
	rdMed, rdP90 := latency("/dev/nbd0")
	tcMed, tcP90 := latency("/dev/nbd1")
	rdIOPS, tcIOPS := iops("/dev/nbd0"), iops("/dev/nbd1")
	rdTput, tcTput := throughput("/dev/nbd0"), throughput("/dev/nbd1")
	return fmt.Sprintf("4 KiB O_DIRECT|O_DSYNC write median/p90: rdma %d/%d µs, tcp %d/%d µs; 4 KiB QD16: rdma %.0f IOPS, tcp %.0f IOPS; 1 MiB O_DSYNC writes: rdma %.1f MB/s, tcp %.1f MB/s; ",
		rdMed, rdP90, tcMed, tcP90, rdIOPS, tcIOPS, rdTput, tcTput)
}

// rdmaPluginKilled SIGKILLs the primary's rdma plugin while
// `vmguest fill` writes mib MiB to /dev/nbd0 under protocol C, two
// seconds into it (and fails unless fill is still writing then): the
// writes go on (the peer is off, its blocks marked), georepl restarts the
// plugin, the connection comes back through it and resyncs. It returns
// what it saw.
func rdmaPluginKilled(t *testing.T, alpha *vm, mib int) string {
	alpha.must(fmt.Sprintf("vmguest fill -n %d -device /dev/nbd0 >/tmp/fill.log 2>&1 & echo $! >/tmp/fill.pid", mib), time.Minute)
	out := alpha.must("sleep 2; kill -0 $(cat /tmp/fill.pid) || { echo fill ended before the plugin was killed; cat /tmp/fill.log; false; }; p=$(pidof rdma); echo @@PLUGIN $p; kill -9 $p", time.Minute)
	old, _ := lineWith(out, "@@PLUGIN ")
	start := time.Now()
	out = alpha.must("while kill -0 $(cat /tmp/fill.pid) 2>/dev/null; do sleep 0.2; done; cat /tmp/fill.log", 10*time.Minute)
	if _, ok := lineWith(out, "@@THROUGHPUT "); !ok {
		t.Fatalf("fill failed across the plugin's death: %q", out)
	}
	alpha.must("georepl wait-sync --timeout 10m rd </dev/null >/tmp/ws.log 2>&1 || { cat /tmp/ws.log; georepl status rd; tail -30 /tmp/daemon.log; false; }", 11*time.Minute)
	took := time.Since(start)
	out = alpha.must("echo @@PLUGIN $(pidof rdma)", time.Minute)
	now, _ := lineWith(out, "@@PLUGIN ")
	if now == "" || now == old {
		t.Errorf("the rdma plugin was not restarted: pid %q before the kill, %q after", old, now)
	}
	return fmt.Sprintf("plugin (pid %s) SIGKILLed during %d MiB of protocol C writes: the writes completed, plugin restarted (pid %s), peer back in sync after %s", old, mib, now, took.Round(time.Second))
}

// fillData is what `vmguest fill -n mib` writes from the device's start.
func fillData(mib int) []byte {
	rng := rand.NewChaCha8([32]byte{42})
	b := make([]byte, mib<<20)
	for i := range mib {
		rng.Read(b[i<<20 : (i+1)<<20])
	}
	return b
}

// hasPrefix returns -1 if the file at path starts with want, else the
// first offset that differs.
func hasPrefix(path string, want []byte) (int64, error) {
	got := make([]byte, len(want))
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	if _, err := io.ReadFull(f, got); err != nil {
		return 0, err
	}
	for i := range want {
		if got[i] != want[i] {
			return int64(i), nil
		}
	}
	return -1, nil
}
