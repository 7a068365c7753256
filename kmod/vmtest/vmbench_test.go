//go:build vmtest

package vmtest

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestVMBench (`make vmbench`) measures georepl against the real DRBD: the
// drbd.ko (8.4) of the kernel package the rig boots, driven by Debian's
// drbd-utils, in the same two VMs, over the same link, in the same run.
// It runs only when asked (-vmbench): it takes tens of minutes and its
// figures are for reading, not for passing.
var (
	vmbench     = flag.Bool("vmbench", false, "run TestVMBench: georepl against the in-kernel DRBD 8.4")
	vmbenchRuns = flag.Int("vmbench.runs", 3, "rounds of every measurement; the table shows medians")
	vmbenchRTT  = flag.String("vmbench.rtt", "0,20,80", "link conditions: milliseconds of netem delay added to the primary's packets, 0 for the bare link")
	vmbenchOnly = flag.String("vmbench.only", "", "measure only the set-ups whose name holds this (the raw disk always)")
)

// The workloads, in vmguest's verbs, which the rig's other scenarios
// measure with (the guest has no fio: Debian's links 80 MB of libraries,
// too much for an initramfs in a 1 GiB VM): latency, 4 KiB
// O_DIRECT|O_DSYNC writes at queue depth 1 over the first MiB; fill, 1 MiB
// O_DIRECT|O_DSYNC writes from the device's start; iops, 4 KiB
// O_DIRECT|O_DSYNC writes from 16 writers at once, writer w on blocks w,
// w+16, ...: 16 neighbouring blocks in flight, not random offsets.
const (
	benchLatencyN = 40
	benchFillMiB  = 16
	benchIOPSN    = 400
	benchIOPSQD   = 16
	benchDisk     = 64 << 20
)

// benchSetup is one device measured.
type benchSetup struct {
	name     string // in the table
	kind     string // raw, drbd, georepl
	protocol string // A or C; "" for the raw disk
	dev      string // the device the workloads write to, on alpha
	res      string // DRBD's or georepl's resource
}

// benchSetups, alpha's disks in this order (bravo has the same): vda the
// raw disk, then one disk per replicated set-up, so that none shares a
// disk or a resource with another.
var benchSetups = []benchSetup{
	{"raw disk /dev/vda", "raw", "", "/dev/vda", ""},
	{"DRBD 8.4 A /dev/drbd1", "drbd", "A", "/dev/drbd1", "da"},
	{"georepl A /dev/nbd1", "georepl", "A", "/dev/nbd1", "gna"},
	{"georepl A /dev/ublkb1", "georepl", "A", "/dev/ublkb1", "gua"},
	{"DRBD 8.4 C /dev/drbd0", "drbd", "C", "/dev/drbd0", "dc"},
	{"georepl C /dev/nbd0", "georepl", "C", "/dev/nbd0", "gnc"},
	{"georepl C /dev/ublkb0", "georepl", "C", "/dev/ublkb0", "guc"},
}

// benchDiskName returns the guest disk of setup i (vda, vdb, ...).
func benchDiskName(i int) string { return "/dev/vd" + string(rune('a'+i)) }

// drbdConf is DRBD 8.4's configuration, tuned as its user's guide
// recommends for throughput ("Optimizing DRBD throughput"): max-buffers
// and max-epoch-size 8000 (the receiver may hold that many 4 KiB buffers
// and a write epoch that many requests), sndbuf-size and rcvbuf-size 0
// (the kernel auto-tunes the socket buffers) and al-extents 3389 (an
// activity log of 3389 4 MiB extents, so the benchmark's working set
// never waits for an activity-log transaction once warm). Flushes and
// barriers stay on: the guide allows turning them off only with a
// battery-backed write cache, and georepl keeps them too.
func drbdConf() string {
	var b strings.Builder
	b.WriteString(`global { usage-count no; }
common {
  net {
    max-buffers    8000;
    max-epoch-size 8000;
    sndbuf-size    0;
    rcvbuf-size    0;
  }
  disk {
    al-extents 3389;
  }
}
`)
	for i, s := range benchSetups {
		if s.kind != "drbd" {
			continue
		}
		minor := strings.TrimPrefix(s.dev, "/dev/drbd")
		port := 7800 + i
		fmt.Fprintf(&b, "resource %s {\n  net { protocol %s; }\n", s.res, s.protocol)
		for n, node := range []string{"alpha", "bravo"} {
			fmt.Fprintf(&b, "  on %s {\n    device    %s minor %s;\n    disk      %s;\n    address   10.0.0.%d:%d;\n    meta-disk internal;\n  }\n",
				node, s.dev, minor, benchDiskName(i), n+1, port)
		}
		b.WriteString("}\n")
	}
	return b.String()
}

// georeplBenchConf is georepl's configuration of the same set-ups, with
// its defaults otherwise.
func georeplBenchConf() string {
	var b strings.Builder
	for i, s := range benchSetups {
		if s.kind == "georepl" {
			b.WriteString(wanResource(s.res, s.protocol, 7800+i, benchDiskName(i), s.dev))
		}
	}
	return b.String()
}

const benchConfDir = "/etc/georepl/vmbench"

// benchFiles returns a folder for the rig's withExtraFiles: drbd-utils
// with their libraries, drbd.ko and its dependencies decompressed under
// /mods/drbd with their load order, /etc/drbd.conf and georepl's
// configuration.
func benchFiles(t *testing.T, r *rig) string {
	t.Helper()
	dir := t.TempDir()
	for _, p := range []string{"/sbin/drbdadm", "/sbin/drbdsetup", "/sbin/drbdmeta", "/lib/drbd/drbdadm-84", "/lib/drbd/drbdsetup-84"} {
		if err := copyWithLibs(p, dir); err != nil {
			t.Fatalf("%v (is drbd-utils installed? setup.sh installs it)", err)
		}
	}
	modDir := filepath.Join(r.cache, "kernel/lib/modules", r.kver)
	order, err := moduleOrder(modDir, []string{"drbd"})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, m := range order {
		name := strings.TrimSuffix(filepath.Base(m), ".ko.xz")
		names = append(names, name)
		raw, err := exec.Command("xz", "-dc", m).Output()
		if err != nil {
			t.Fatalf("xz -dc %s: %v", m, err)
		}
		if err := os.MkdirAll(filepath.Join(dir, "mods/drbd"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "mods/drbd", name+".ko"), raw, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	files := map[string]string{
		"mods/drbd/order":               strings.Join(names, "\n") + "\n",
		"etc/drbd.conf":                 drbdConf(),
		benchConfDir[1:] + "/bench.hcl": georeplBenchConf(),
	}
	for name, text := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// benchImage creates a disk image with its blocks allocated, so that no
// set-up pays the host file system's allocation on its first writes and
// another not.
func benchImage(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Fallocate(int(f.Fd()), 0, 0, benchDisk); err != nil {
		t.Fatalf("fallocate %s: %v", path, err)
	}
	return path
}

// benchSample is one round's figures of one set-up: the three workloads,
// and the CPU seconds alpha's kernel accounted to user space and to the
// kernel (system, irq, softirq) over the three of them.
type benchSample struct {
	latUS, mbps, iops, userS, sysS float64
	// For georepl, over the QD1 workload: the daemon's mean latency of
	// an application write from its submission to the engine to its
	// completion, and of the local disk's write within it (status
	// --json's app_write_latency and local_write_latency).
	appUS, localUS float64
}

// guestCPU reads alpha's cumulative CPU time from /proc/stat's cpu line,
// in seconds (USER_HZ is 100): user space (user, nice) and the kernel
// (system, irq, softirq).
func guestCPU(t *testing.T, alpha *vm) (user, sys float64) {
	t.Helper()
	out := alpha.must("echo @@CPU $(head -1 /proc/stat)", time.Minute)
	v, ok := lineWith(out, "@@CPU ")
	f := strings.Fields(v)
	if !ok || len(f) < 8 || f[0] != "cpu" {
		t.Fatalf("no cpu line in /proc/stat: %q", out)
	}
	n := func(i int) float64 {
		x, err := strconv.ParseFloat(f[i], 64)
		if err != nil {
			t.Fatalf("/proc/stat: %q: %v", v, err)
		}
		return x / 100
	}
	return n(1) + n(2), n(3) + n(6) + n(7)
}

func TestVMBench(t *testing.T) {
	if !*vmbench {
		t.Skip("a benchmark: run it with -vmbench (make vmbench)")
	}
	var rtts []int
	for _, f := range strings.Split(*vmbenchRTT, ",") {
		ms, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || ms < 0 {
			t.Fatalf("-vmbench.rtt: %q is not a number of milliseconds", f)
		}
		rtts = append(rtts, ms)
	}
	var setups []benchSetup
	for _, s := range benchSetups {
		if s.kind == "raw" || strings.Contains(s.name, *vmbenchOnly) {
			setups = append(setups, s)
		}
	}
	r := getRig(t)
	br := r.withExtraFiles(t, benchFiles(t, r))
	scenario(t, "vmbench georepl vs DRBD 8.4", func(t *testing.T, detail *string) {
		start := time.Now()
		load0 := hostLoad()
		dir := t.TempDir()
		var ad, bd []string
		for i := range benchSetups {
			ad = append(ad, benchImage(t, filepath.Join(dir, fmt.Sprintf("alpha-%d.img", i))))
			bd = append(bd, benchImage(t, filepath.Join(dir, fmt.Sprintf("bravo-%d.img", i))))
		}
		lk, err := newLink()
		if err != nil {
			t.Fatal(err)
		}
		alpha, bravo := br.bootPair(t, lk, ad, bd)
		benchUp(t, alpha, bravo, setups)

		// Warm-up: one fill of each device, so that every set-up's
		// activity log holds the working set and every block was
		// written once before the first measured round.
		for _, s := range setups {
			alpha.must(fmt.Sprintf("vmguest fill -n %d -device %s", benchFillMiB, s.dev), 20*time.Minute)
		}
		var out strings.Builder
		fmt.Fprintf(&out, "\nvmbench: georepl against DRBD 8.4.11 (in-kernel, drbd-utils 9 with drbdadm-84), two QEMU TCG VMs (2 vCPUs, 1 GiB each), Debian kernel %s, UDP link between them\n", r.kver)
		fmt.Fprintf(&out, "DRBD settings: max-buffers 8000, max-epoch-size 8000, sndbuf-size 0 and rcvbuf-size 0 (auto-tuned), al-extents 3389, flushes on; georepl: its defaults\n")
		fmt.Fprintf(&out, "QD1: 4 KiB O_DIRECT|O_DSYNC writes at queue depth 1, median latency of %d; seq: %d MiB in 1 MiB O_DIRECT|O_DSYNC writes; QD16: %d 4 KiB O_DIRECT|O_DSYNC writes from 16 writers (neighbouring blocks, not random)\n", benchLatencyN, benchFillMiB, benchIOPSN)
		fmt.Fprintf(&out, "each figure the median of %d rounds (set-ups interleaved in every round); xraw: against the raw disk in the same VM, same link condition; xDRBD: georepl against DRBD under the same protocol\n", *vmbenchRuns)
		fmt.Fprintf(&out, "latency ratios: higher is slower; throughput and IOPS ratios: lower is slower; primary CPU: seconds the primary VM spent in user space and in its kernel over the three workloads; daemon QD1: georepl's own mean time per QD1 write, from its submission to the engine to its completion, and of the local disk write within it (status --json)\n")
		fmt.Fprintf(&out, "NOTE: under TCG every guest instruction is emulated, and georepl's user-space daemon (Go, system calls, copies) is inflated more than DRBD's in-kernel path: expect a smaller gap on hardware (not measured here)\n")
		fmt.Print(out.String())
		out.Reset()
		for _, ms := range rtts {
			if ms > 0 {
				// netem's default queue of 1000 packets would drop
				// at a delay of tens of ms and these rates.
				alpha.must(fmt.Sprintf("/usr/sbin/tc qdisc add dev eth0 root netem delay %dms limit 100000", ms), time.Minute)
			}
			ping := strings.TrimSpace(strings.Join(alpha.must("ping -c 5 -q 10.0.0.2 | tail -1", time.Minute), " "))
			samples := map[string][]benchSample{}
			for round := 0; round < *vmbenchRuns; round++ {
				for _, s := range setups {
					samples[s.name] = append(samples[s.name], benchRound(t, alpha, s))
				}
			}
			if ms > 0 {
				alpha.must("/usr/sbin/tc qdisc del dev eth0 root", time.Minute)
			}
			cond := "bare link"
			if ms > 0 {
				cond = fmt.Sprintf("netem delay %d ms", ms)
			}
			// Each condition's table as soon as it is measured: a
			// run cut short still shows what it measured.
			fmt.Fprintf(&out, "\n%s (ping %s)\n", cond, strings.TrimPrefix(ping, "round-trip "))
			benchTable(&out, setups, samples)
			fmt.Print(out.String())
			out.Reset()
		}
		fmt.Printf("\nhost load average before %s, after %s; %s\n", load0, hostLoad(), time.Since(start).Round(time.Second))
		*detail = fmt.Sprintf("%d rounds, link conditions %s ms; table above", *vmbenchRuns, *vmbenchRTT)
	})
}

// hostLoad is the host's 1, 5 and 15 minute load averages.
func hostLoad() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

// benchUp brings every replicated set-up up, connected and UpToDate, with
// alpha Primary and its device there. DRBD skips its initial sync (both
// disks are new: --clear-bitmap new-current-uuid, as DRBD's guide says);
// georepl has no such step and syncs them.
func benchUp(t *testing.T, alpha, bravo *vm, setups []benchSetup) {
	var drbd, geo []string
	for _, s := range setups {
		switch s.kind {
		case "drbd":
			drbd = append(drbd, s.res)
		case "georepl":
			geo = append(geo, s.res)
		}
	}
	for _, v := range []*vm{alpha, bravo} {
		if len(drbd) > 0 {
			v.must("mkdir -p /var/lib/drbd /var/lock /run/drbd && ln -sfn /run /var/run && for m in $(cat /mods/drbd/order); do insmod /mods/drbd/$m.ko || exit 1; done && head -1 /proc/drbd", time.Minute)
			for _, res := range drbd {
				v.must("yes yes | drbdadm create-md --force "+res+" >/tmp/drbd-md.log 2>&1 || { cat /tmp/drbd-md.log; false; }", 2*time.Minute)
				v.must("drbdadm up "+res, 2*time.Minute)
			}
		}
		if len(geo) > 0 {
			for _, res := range geo {
				v.must(fmt.Sprintf("georepl create-md --config %s --node $NODE %s", benchConfDir, res), time.Minute)
			}
			v.must("daemon "+benchConfDir, time.Minute)
			for _, res := range geo {
				v.must("georepl up "+res, time.Minute)
			}
		}
	}
	for _, res := range drbd {
		alpha.must("i=0; until [ \"$(drbdadm cstate "+res+")\" = Connected ] || [ $i -ge 600 ]; do sleep 0.2; i=$((i+1)); done; drbdadm cstate "+res+"; [ \"$(drbdadm cstate "+res+")\" = Connected ]", 3*time.Minute)
		alpha.must("drbdadm -- --clear-bitmap new-current-uuid "+res, time.Minute)
		alpha.must("drbdadm primary "+res, time.Minute)
		alpha.must("i=0; until [ \"$(drbdadm dstate "+res+")\" = UpToDate/UpToDate ] || [ $i -ge 300 ]; do sleep 0.2; i=$((i+1)); done; drbdadm dstate "+res+"; [ \"$(drbdadm dstate "+res+")\" = UpToDate/UpToDate ]", 2*time.Minute)
	}
	for _, res := range geo {
		alpha.must("georepl primary --force "+res, time.Minute)
	}
	for _, res := range geo {
		alpha.must("georepl wait-sync --timeout 10m "+res+" </dev/null >/tmp/ws.log 2>&1 || { cat /tmp/ws.log; false; }", 11*time.Minute)
	}
	for _, s := range setups {
		if s.kind != "raw" {
			alpha.must(fmt.Sprintf("i=0; until [ \"$(size %s)\" != 0 ] || [ $i -ge 300 ]; do sleep 0.1; i=$((i+1)); done; [ \"$(size %s)\" != 0 ]", s.dev, s.dev), time.Minute)
		}
	}
	if len(drbd) > 0 {
		alpha.must("cat /proc/drbd", time.Minute)
	}
}

// benchRound measures the three workloads once on s.
func benchRound(t *testing.T, alpha *vm, s benchSetup) benchSample {
	t.Helper()
	value := func(cmd, marker string) float64 {
		out := alpha.must(cmd, 20*time.Minute)
		v, ok := lineWith(out, marker)
		if !ok {
			t.Fatalf("%s: no %s in %q", s.name, marker, out)
		}
		f, err := strconv.ParseFloat(strings.Fields(v)[0], 64)
		if err != nil {
			t.Fatalf("%s: %s %q: %v", s.name, marker, v, err)
		}
		return f
	}
	var b benchSample
	u0, s0 := guestCPU(t, alpha)
	var d0 daemonLatency
	if s.kind == "georepl" {
		d0 = daemonLatencies(t, alpha, s.res)
	}
	b.latUS = value(fmt.Sprintf("vmguest latency -n %d -device %s", benchLatencyN, s.dev), "@@LATENCY ")
	if s.kind == "georepl" {
		b.appUS, b.localUS = daemonLatencies(t, alpha, s.res).meanSince(d0)
	}
	b.mbps = value(fmt.Sprintf("vmguest fill -n %d -device %s", benchFillMiB, s.dev), "@@THROUGHPUT ")
	b.iops = value(fmt.Sprintf("vmguest iops -n %d -qd %d -device %s", benchIOPSN, benchIOPSQD, s.dev), "@@IOPS ")
	u1, s1 := guestCPU(t, alpha)
	b.userS, b.sysS = u1-u0, s1-s0
	t.Logf("%s: QD1 %.0f µs (daemon: %.0f µs a write, %.0f µs its local write), seq %.1f MB/s, QD16 %.0f IOPS; guest CPU %.1f s user, %.1f s kernel", s.name, b.latUS, b.appUS, b.localUS, b.mbps, b.iops, b.userS, b.sysS)
	return b
}

// daemonLatency is a georepl resource's write latency histograms' counts
// and sums: application writes, then local disk writes.
type daemonLatency struct{ appN, appS, localN, localS float64 }

// daemonLatencies reads res's latency counters from georepl status
// --json on alpha.
func daemonLatencies(t *testing.T, alpha *vm, res string) daemonLatency {
	t.Helper()
	out := alpha.must(fmt.Sprintf(`echo @@DLAT $(georepl status --json %s | tr -d ' \n' | grep -o -E '"(app|local)_write_latency":\{"count":[0-9]*,"sum_seconds":[-+.0-9eE]*' | sed 's/.*"count":\([0-9]*\),"sum_seconds":/\1 /')`, res), time.Minute)
	v, _ := lineWith(out, "@@DLAT ")
	f := strings.Fields(v)
	var d daemonLatency
	if len(f) != 4 {
		t.Fatalf("%s: georepl status --json: no app and local write latency in %q", res, out)
	}
	for i, p := range []*float64{&d.appN, &d.appS, &d.localN, &d.localS} {
		x, err := strconv.ParseFloat(f[i], 64)
		if err != nil {
			t.Fatalf("%s: latency counter %q: %v", res, f[i], err)
		}
		*p = x
	}
	return d
}

// meanSince is the mean latency, in µs, of the application writes and
// of the local writes counted since d0.
func (d daemonLatency) meanSince(d0 daemonLatency) (appUS, localUS float64) {
	if n := d.appN - d0.appN; n > 0 {
		appUS = (d.appS - d0.appS) / n * 1e6
	}
	if n := d.localN - d0.localN; n > 0 {
		localUS = (d.localS - d0.localS) / n * 1e6
	}
	return appUS, localUS
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// benchTable writes one link condition's table: medians, their ratios to
// the raw disk and, for georepl, to DRBD under the same protocol.
func benchTable(out *strings.Builder, setups []benchSetup, samples map[string][]benchSample) {
	med := map[string]benchSample{}
	for name, ss := range samples {
		var l, m, i, u, k, a, lo []float64
		for _, s := range ss {
			l, m, i = append(l, s.latUS), append(m, s.mbps), append(i, s.iops)
			u, k = append(u, s.userS), append(k, s.sysS)
			a, lo = append(a, s.appUS), append(lo, s.localUS)
		}
		med[name] = benchSample{median(l), median(m), median(i), median(u), median(k), median(a), median(lo)}
	}
	raw := med[benchSetups[0].name]
	drbd := map[string]benchSample{}
	for _, s := range setups {
		if s.kind == "drbd" {
			drbd[s.protocol] = med[s.name]
		}
	}
	ratio := func(x, base float64) string {
		if base == 0 {
			return "-"
		}
		return fmt.Sprintf("%.2fx", x/base)
	}
	fmt.Fprintf(out, "%-24s %9s %7s %7s | %9s %7s %7s | %9s %7s %7s | %s\n", "set-up", "QD1 ms", "xraw", "xDRBD", "seq MB/s", "xraw", "xDRBD", "QD16 IOPS", "xraw", "xDRBD", "primary CPU s user/kernel | daemon QD1 ms write/local")
	for _, s := range setups {
		m := med[s.name]
		d, hasD := drbd[s.protocol]
		xd := func(x, base float64) string {
			if s.kind != "georepl" || !hasD {
				return "-"
			}
			return ratio(x, base)
		}
		daemon := ""
		if s.kind == "georepl" {
			daemon = fmt.Sprintf(" | %.2f/%.2f", m.appUS/1000, m.localUS/1000)
		}
		fmt.Fprintf(out, "%-24s %9.2f %7s %7s | %9.1f %7s %7s | %9.0f %7s %7s | %.1f/%.1f%s\n", s.name,
			m.latUS/1000, ratio(m.latUS, raw.latUS), xd(m.latUS, d.latUS),
			m.mbps, ratio(m.mbps, raw.mbps), xd(m.mbps, d.mbps),
			m.iops, ratio(m.iops, raw.iops), xd(m.iops, d.iops), m.userS, m.sysS, daemon)
	}
}
