//go:build vmtest

package vmtest

import (
	"cmp"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
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
	vmbenchPin  = flag.Bool("vmbench.pin", false, "pin every thread of alpha's QEMU to host CPU 0 and bravo's to host CPU 1, so that neither VM's emulation takes the other's core")
	vmbenchEnv  = flag.String("vmbench.daemonenv", "", "NAME=VALUE set in the georepl daemons' environment on both nodes (e.g. GOMAXPROCS=1)")
	vmbenchSys  = flag.Bool("vmbench.strace", true, "count georepl's system calls per QD1 write on both nodes with strace -c -f, once, on the first link condition")
)

// The workloads, in vmguest's verbs, which the rig's other scenarios
// measure with (the guest has no fio: Debian's links 80 MB of libraries,
// too much for an initramfs in a 1 GiB VM): latency, 4 KiB
// O_DIRECT|O_DSYNC writes at queue depth 1 over the first MiB; fill, 1 MiB
// O_DIRECT|O_DSYNC writes from the device's start; iops, 4 KiB
// O_DIRECT|O_DSYNC writes from 16 writers at once, writer w on blocks w,
// w+16, ...: 16 neighbouring blocks in flight, not random offsets.
const (
	benchLatencyN = 100
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
	// nopeer: the resource is up on alpha only, Primary with its peer
	// never connected, so nothing is replicated: what is left is the
	// device path and the local disk.
	nopeer bool
	// busy, for the raw disk only: what bravo does while the workloads
	// run on alpha. "cpu": its two vCPUs spin in a shell loop (another
	// VM's emulation taking the host's cores); "disk": it writes its
	// own disk bravoDisk with 4 KiB O_DIRECT|O_DSYNC writes at QD1 (a
	// secondary's writes, down to the host's flush of its image file).
	busy, bravoDisk string
}

// benchSetups, alpha's disks in this order (bravo has the same): vda the
// raw disk, then one disk per replicated set-up, so that none shares a
// disk or a resource with another.
var benchSetups = []benchSetup{
	{name: "raw disk /dev/vda", kind: "raw", dev: "/dev/vda"},
	// The raw disk again, bravo busy: its own disk (vdb) is not used.
	{name: "raw vda, bravo busy", kind: "raw", dev: "/dev/vda", busy: "cpu"},
	// bravo writes the disk of this set-up, its vdc.
	{name: "raw vda, bravo writes", kind: "raw", dev: "/dev/vda", busy: "disk", bravoDisk: "/dev/vdc"},
	{name: "DRBD 8.4 no peer drbd2", kind: "drbd", protocol: "A", dev: "/dev/drbd2", res: "dn", nopeer: true},
	{name: "georepl no peer ublkb2", kind: "georepl", protocol: "A", dev: "/dev/ublkb2", res: "gun", nopeer: true},
	{name: "DRBD 8.4 A /dev/drbd1", kind: "drbd", protocol: "A", dev: "/dev/drbd1", res: "da"},
	{name: "georepl A /dev/nbd1", kind: "georepl", protocol: "A", dev: "/dev/nbd1", res: "gna"},
	{name: "georepl A /dev/ublkb1", kind: "georepl", protocol: "A", dev: "/dev/ublkb1", res: "gua"},
	{name: "DRBD 8.4 C /dev/drbd0", kind: "drbd", protocol: "C", dev: "/dev/drbd0", res: "dc"},
	{name: "georepl C /dev/nbd0", kind: "georepl", protocol: "C", dev: "/dev/nbd0", res: "gnc"},
	{name: "georepl C /dev/ublkb0", kind: "georepl", protocol: "C", dev: "/dev/ublkb0", res: "guc"},
}

// group is what a georepl set-up is compared with: the DRBD set-up of
// the same group (its protocol, or no peer).
func (s benchSetup) group() string {
	if s.nopeer {
		return "nopeer"
	}
	return s.protocol
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
	for _, p := range []string{"/sbin/drbdadm", "/sbin/drbdsetup", "/sbin/drbdmeta", "/lib/drbd/drbdadm-84", "/lib/drbd/drbdsetup-84", "/usr/bin/strace"} {
		if err := copyWithLibs(p, dir); err != nil {
			t.Fatalf("%v (are drbd-utils and strace installed? setup.sh installs them)", err)
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
	// Over the QD1 workload, per write, on the primary (p) and the
	// secondary (s): the whole VM's CPU time in ms (user and kernel,
	// from /proc/stat) and, for georepl, the daemon's CPU time in ms
	// (/proc/PID/stat) and its threads' context switches, voluntary
	// and not (/proc/PID/task/*/status); and the daemon's threads at
	// the end.
	vmP, vmS, dcpuP, dcpuS, csP, csS, thrP, thrS float64
}

// guestCPU reads v's cumulative CPU time from /proc/stat's cpu line, in
// seconds (USER_HZ is 100): user space (user, nice) and the kernel
// (system, irq, softirq).
func guestCPU(t *testing.T, v *vm) (user, sys float64) {
	t.Helper()
	out := v.must("echo @@CPU $(head -1 /proc/stat)", time.Minute)
	line, ok := lineWith(out, "@@CPU ")
	f := strings.Fields(line)
	if !ok || len(f) < 8 || f[0] != "cpu" {
		t.Fatalf("no cpu line in /proc/stat: %q", out)
	}
	n := func(i int) float64 {
		x, err := strconv.ParseFloat(f[i], 64)
		if err != nil {
			t.Fatalf("/proc/stat: %q: %v", line, err)
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
		if *vmbenchPin {
			pinQEMU(t, alpha, 0)
			pinQEMU(t, bravo, 1)
		}
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
		fmt.Fprintf(&out, "no peer: the resource up on the primary only, its peer never connected, nothing replicated (the device path and the local disk); bravo busy: the raw disk while both of bravo's vCPUs spin in a shell loop; bravo writes: the raw disk while bravo writes its own disk (4 KiB O_DIRECT|O_DSYNC, QD1)\n")
		if *vmbenchEnv != "" {
			fmt.Fprintf(&out, "georepl daemons started with %s in their environment (-vmbench.daemonenv)\n", *vmbenchEnv)
		}
		if *vmbenchPin {
			fmt.Fprintf(&out, "QEMU pinned (-vmbench.pin): every thread of alpha's QEMU on host CPU 0, of bravo's on host CPU 1\n")
		}
		fmt.Fprintf(&out, "NOTE: under TCG every guest instruction is emulated, and georepl's user-space daemon (Go, system calls, copies) is inflated more than DRBD's in-kernel path: expect a smaller gap on hardware (not measured here)\n")
		fmt.Fprintf(&out, "per QD1 write (the %d writes of the QD1 workload), on the primary/secondary: the VM's CPU time (user and kernel, /proc/stat), the georepl daemon's CPU time (/proc/PID/stat) and its threads' context switches (voluntary and not), each less what the same window costs idle (the idle line); the raw disk's row is the window's own cost (vmguest's start, the console's commands). CPU time in a TCG guest counts its vCPUs' time, the host's preemption included\n", benchLatencyN)
		if *vmbenchSys {
			fmt.Fprintf(&out, "system calls: strace -c -f attached to both daemons over one more QD1 workload (%d writes) on the first link condition, and what the idle daemons (the idle line) make over the same window, for comparison; strace slows the daemons, so the runtime's own calls (futex, nanosleep, epoll_pwait) count more than without it\n", benchLatencyN)
		}
		idle := benchIdle(t, &out, alpha, bravo, setups)
		var idleCalls [2]syscalls
		if *vmbenchSys && slices.ContainsFunc(setups, func(s benchSetup) bool { return s.kind == "georepl" }) {
			idleCalls = rates(benchSyscalls(t, alpha, bravo, func() { alpha.must("sleep 5", time.Minute) }))
			writeSyscalls(&out, "idle, system calls a second (strace -c -f on the daemons)", idleCalls, [2]syscalls{}, 1)
		}
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
					samples[s.name] = append(samples[s.name], benchRound(t, alpha, bravo, s, idle))
				}
			}
			var sys strings.Builder
			if *vmbenchSys && ms == rtts[0] {
				for _, s := range setups {
					if s.kind == "georepl" {
						sc := benchSyscalls(t, alpha, bravo, func() {
							alpha.must(fmt.Sprintf("vmguest latency -n %d -device %s", benchLatencyN, s.dev), 20*time.Minute)
						})
						writeSyscalls(&sys, s.name+": system calls per QD1 write (strace -c -f on the daemons)", sc, idleCalls, benchLatencyN)
					}
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
			out.WriteString(sys.String())
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
	var drbd, geo, drbdAlone, geoAlone []string
	for _, s := range setups {
		switch {
		case s.kind == "drbd" && s.nopeer:
			drbdAlone = append(drbdAlone, s.res)
		case s.kind == "drbd":
			drbd = append(drbd, s.res)
		case s.kind == "georepl" && s.nopeer:
			geoAlone = append(geoAlone, s.res)
		case s.kind == "georepl":
			geo = append(geo, s.res)
		}
	}
	for _, v := range []*vm{alpha, bravo} {
		// The set-ups without a peer are up on alpha only.
		dr, ge := drbd, geo
		if v == alpha {
			dr, ge = append(slices.Clone(drbd), drbdAlone...), append(slices.Clone(geo), geoAlone...)
		}
		if len(dr) > 0 {
			v.must("mkdir -p /var/lib/drbd /var/lock /run/drbd && ln -sfn /run /var/run && for m in $(cat /mods/drbd/order); do insmod /mods/drbd/$m.ko || exit 1; done && head -1 /proc/drbd", time.Minute)
			for _, res := range dr {
				v.must("yes yes | drbdadm create-md --force "+res+" >/tmp/drbd-md.log 2>&1 || { cat /tmp/drbd-md.log; false; }", 2*time.Minute)
				v.must("drbdadm up "+res, 2*time.Minute)
			}
		}
		// bravo's daemon runs even when it has no resource to serve,
		// so that its figures are there to read.
		if len(geo)+len(geoAlone) > 0 {
			for _, res := range ge {
				v.must(fmt.Sprintf("georepl create-md --config %s --node $NODE %s", benchConfDir, res), time.Minute)
			}
			start := "daemon " + benchConfDir
			if *vmbenchEnv != "" {
				start = "export " + *vmbenchEnv + "; " + start
			}
			v.must(start, time.Minute)
			for _, res := range ge {
				v.must("georepl up "+res, time.Minute)
			}
		}
	}
	for _, res := range drbdAlone {
		alpha.must("drbdadm primary --force "+res+" && drbdadm cstate "+res+" && drbdadm dstate "+res, time.Minute)
	}
	for _, res := range drbd {
		alpha.must("i=0; until [ \"$(drbdadm cstate "+res+")\" = Connected ] || [ $i -ge 600 ]; do sleep 0.2; i=$((i+1)); done; drbdadm cstate "+res+"; [ \"$(drbdadm cstate "+res+")\" = Connected ]", 3*time.Minute)
		alpha.must("drbdadm -- --clear-bitmap new-current-uuid "+res, time.Minute)
		alpha.must("drbdadm primary "+res, time.Minute)
		alpha.must("i=0; until [ \"$(drbdadm dstate "+res+")\" = UpToDate/UpToDate ] || [ $i -ge 300 ]; do sleep 0.2; i=$((i+1)); done; drbdadm dstate "+res+"; [ \"$(drbdadm dstate "+res+")\" = UpToDate/UpToDate ]", 2*time.Minute)
	}
	for _, res := range append(slices.Clone(geo), geoAlone...) {
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
func benchRound(t *testing.T, alpha, bravo *vm, s benchSetup, idle figures) benchSample {
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
	if s.busy != "" {
		// Background loops on bravo; each ends when /tmp/busy goes,
		// says so in /tmp/busy.done.N and sleeps (a guest background
		// job must not exit).
		loop, n := ":", 2 // two spinning shells, one a vCPU
		if s.busy == "disk" {
			loop, n = "vmguest latency -n 20 -device "+s.bravoDisk+" >/dev/null 2>&1", 1
		}
		bravo.must(fmt.Sprintf("touch /tmp/busy; rm -f /tmp/busy.done.*; for i in $(seq %d); do (while [ -e /tmp/busy ]; do %s; done; touch /tmp/busy.done.$i; exec sleep 100000) </dev/null >/dev/null 2>&1 & done", n, loop), time.Minute)
		defer bravo.must(fmt.Sprintf("rm -f /tmp/busy; for i in $(seq %d); do until [ -e /tmp/busy.done.$i ]; do sleep 0.1; done; done", n), 5*time.Minute)
	}
	u0, s0 := guestCPU(t, alpha)
	var d0 daemonLatency
	if s.kind == "georepl" {
		d0 = daemonLatencies(t, alpha, s.res)
	}
	// The per-write figures, less the idle cost of the same window:
	// read after the status call above, which the daemon serves, and
	// before the one below.
	geo := s.kind == "georepl"
	f := measure(t, alpha, bravo, geo, idle, func() {
		b.latUS = value(fmt.Sprintf("vmguest latency -n %d -device %s", benchLatencyN, s.dev), "@@LATENCY ")
	}).minus(figures{}, benchLatencyN)
	b.vmP, b.vmS = f.vmP*1000, f.vmS*1000
	if geo {
		b.dcpuP, b.dcpuS = f.dP.cpuS*1000, f.dS.cpuS*1000
		b.csP, b.csS = f.dP.ctxsw, f.dS.ctxsw
		b.thrP, b.thrS = f.dP.threads, f.dS.threads
		b.appUS, b.localUS = daemonLatencies(t, alpha, s.res).meanSince(d0)
	}
	b.mbps = value(fmt.Sprintf("vmguest fill -n %d -device %s", benchFillMiB, s.dev), "@@THROUGHPUT ")
	b.iops = value(fmt.Sprintf("vmguest iops -n %d -qd %d -device %s", benchIOPSN, benchIOPSQD, s.dev), "@@IOPS ")
	u1, s1 := guestCPU(t, alpha)
	b.userS, b.sysS = u1-u0, s1-s0
	t.Logf("%s: QD1 %.0f µs (daemon: %.0f µs a write, %.0f µs its local write), seq %.1f MB/s, QD16 %.0f IOPS; guest CPU %.1f s user, %.1f s kernel; per QD1 write: VM CPU %.2f/%.2f ms, daemon CPU %.2f/%.2f ms, %.1f/%.1f context switches (primary/secondary)",
		s.name, b.latUS, b.appUS, b.localUS, b.mbps, b.iops, b.userS, b.sysS, b.vmP, b.vmS, b.dcpuP, b.dcpuS, b.csP, b.csS)
	return b
}

// figures are the per-write figures' counters on both nodes: the VMs'
// CPU seconds (user and kernel) and the georepl daemons' /proc figures
// (zero without georepl), and when they were read.
type figures struct {
	vmP, vmS float64
	dP, dS   daemonStat
}

// readFigures reads alpha's and bravo's figures.
func readFigures(t *testing.T, alpha, bravo *vm, geo bool) figures {
	t.Helper()
	vmCPU := func(v *vm) float64 { u, k := guestCPU(t, v); return u + k }
	f := figures{vmP: vmCPU(alpha), vmS: vmCPU(bravo)}
	if geo {
		f.dP, f.dS = daemonStats(t, alpha), daemonStats(t, bravo)
	}
	return f
}

// minus is f-g, scaled by 1/div; threads are f's.
func (f figures) minus(g figures, div float64) figures {
	d := func(a, b daemonStat) daemonStat {
		return daemonStat{cpuS: (a.cpuS - b.cpuS) / div, ctxsw: (a.ctxsw - b.ctxsw) / div, threads: a.threads}
	}
	return figures{vmP: (f.vmP - g.vmP) / div, vmS: (f.vmS - g.vmS) / div, dP: d(f.dP, g.dP), dS: d(f.dS, g.dS)}
}

// measure reads the figures around run, and returns their change less
// what idle (per second, from benchIdle) would have spent over the same
// window: from the first reading's start to the last's end.
func measure(t *testing.T, alpha, bravo *vm, geo bool, idle figures, run func()) figures {
	t.Helper()
	d, w := around(t, alpha, bravo, geo, run)
	return d.minus(figures{vmP: idle.vmP * w, vmS: idle.vmS * w,
		dP: daemonStat{cpuS: idle.dP.cpuS * w, ctxsw: idle.dP.ctxsw * w},
		dS: daemonStat{cpuS: idle.dS.cpuS * w, ctxsw: idle.dS.ctxsw * w}}, 1)
}

// around reads the figures before and after run and returns their
// change and the window's length in seconds, from the first reading's
// start to the last's end.
func around(t *testing.T, alpha, bravo *vm, geo bool, run func()) (figures, float64) {
	t.Helper()
	began := time.Now()
	f0 := readFigures(t, alpha, bravo, geo)
	run()
	f1 := readFigures(t, alpha, bravo, geo)
	return f1.minus(f0, 1), time.Since(began).Seconds()
}

// benchIdle measures what the VMs and the georepl daemons spend a second
// with every set-up up and no I/O, over benchIdleFor, writes it to out
// and returns it.
func benchIdle(t *testing.T, out *strings.Builder, alpha, bravo *vm, setups []benchSetup) figures {
	t.Helper()
	geo := slices.ContainsFunc(setups, func(s benchSetup) bool { return s.kind == "georepl" })
	d, w := around(t, alpha, bravo, geo, func() {
		alpha.must(fmt.Sprintf("sleep %d", int(benchIdleFor/time.Second)), time.Minute)
	})
	idle := d.minus(figures{}, w)
	fmt.Fprintf(out, "idle, every set-up up, no I/O, %.1f s: VM CPU %.1f%%/%.1f%% of one vCPU (alpha/bravo)", w, idle.vmP*100, idle.vmS*100)
	if geo {
		fmt.Fprintf(out, "; georepl daemons: CPU %.1f%%/%.1f%%, %.0f/%.0f context switches a second, %.0f/%.0f threads", idle.dP.cpuS*100, idle.dS.cpuS*100, idle.dP.ctxsw, idle.dS.ctxsw, idle.dP.threads, idle.dS.threads)
	}
	out.WriteString("\n")
	return idle
}

// benchIdleFor is how long benchIdle watches the idle VMs.
const benchIdleFor = 10 * time.Second

// daemonStat is the georepl daemon's CPU time in seconds, its threads'
// context switches (voluntary and not) and its threads.
type daemonStat struct{ cpuS, ctxsw, threads float64 }

// daemonStats reads v's georepl daemon's figures from /proc.
func daemonStats(t *testing.T, v *vm) daemonStat {
	t.Helper()
	out := v.must(`p=$(pidof georepl) && echo @@DSTAT $(cut -d' ' -f14,15 /proc/$p/stat) $(cat /proc/$p/task/*/status | awk '/ctxt_switches/ {s += $2} END {print s}') $(ls /proc/$p/task | wc -l)`, time.Minute)
	line, _ := lineWith(out, "@@DSTAT ")
	f := strings.Fields(line)
	if len(f) != 4 {
		t.Fatalf("%s: the daemon's /proc figures: %q", v.name, out)
	}
	var x [4]float64
	for i := range f {
		var err error
		if x[i], err = strconv.ParseFloat(f[i], 64); err != nil {
			t.Fatalf("%s: the daemon's /proc figures: %q: %v", v.name, line, err)
		}
	}
	// utime and stime are in clock ticks, USER_HZ 100.
	return daemonStat{cpuS: (x[0] + x[1]) / 100, ctxsw: x[2], threads: x[3]}
}

// pinQEMU sets the CPU affinity of every thread of v's QEMU to host CPU
// cpu.
func pinQEMU(t *testing.T, v *vm, cpu int) {
	t.Helper()
	if n := runtime.NumCPU(); cpu >= n {
		t.Fatalf("-vmbench.pin: host CPU %d for %s, but the host has %d", cpu, v.name, n)
	}
	v.mu.Lock()
	pid := v.cmd.Process.Pid
	v.mu.Unlock()
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		t.Fatalf("-vmbench.pin: %s's QEMU: %v", v.name, err)
	}
	var set unix.CPUSet
	set.Set(cpu)
	for _, task := range tasks {
		tid, err := strconv.Atoi(task.Name())
		if err != nil {
			continue
		}
		if err := unix.SchedSetaffinity(tid, &set); err != nil {
			t.Fatalf("-vmbench.pin: %s's QEMU thread %d to CPU %d: %v", v.name, tid, cpu, err)
		}
	}
	t.Logf("%s: %d threads of QEMU (pid %d) pinned to host CPU %d", v.name, len(tasks), pid, cpu)
}

// syscalls is one daemon's system calls by name, "total" their sum, over
// window seconds.
type syscalls struct {
	calls  map[string]float64
	window float64
}

// benchSyscalls counts the system calls of the georepl daemons on alpha
// and bravo while run runs, with strace -c -f attached to each (which
// slows them: the counts are what to read, not the latency). A window
// starts 1 s before the start command returns (strace attached, then a
// second's sleep) and ends when the stop command is sent.
func benchSyscalls(t *testing.T, alpha, bravo *vm, run func()) [2]syscalls {
	t.Helper()
	// strace in a subshell that sleeps once it ends (a guest background
	// job must not exit); its summary goes to /tmp/strace.txt.
	start := `rm -f /tmp/strace.txt; p=$(pidof georepl) && (strace -c -f -p $p -o /tmp/strace.txt & echo $! >/tmp/strace.pid; wait; exec sleep 100000) </dev/null >/dev/null 2>&1 &
i=0; until grep -q 'TracerPid:[[:space:]]*[1-9]' /proc/$p/status || [ $i -ge 300 ]; do sleep 0.1; i=$((i+1)); done; sleep 1; grep -q 'TracerPid:[[:space:]]*[1-9]' /proc/$p/status`
	stop := `kill -INT $(cat /tmp/strace.pid); i=0; while kill -0 $(cat /tmp/strace.pid) 2>/dev/null && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; sed 's/^/@@ST /' /tmp/strace.txt`
	vms := [2]*vm{alpha, bravo}
	var began [2]time.Time
	for i, v := range vms {
		v.must(start, time.Minute)
		began[i] = time.Now().Add(-time.Second)
	}
	run()
	var res [2]syscalls
	for i, v := range vms {
		res[i] = syscalls{calls: map[string]float64{}, window: time.Since(began[i]).Seconds()}
		lines := v.must(stop, 2*time.Minute)
		for _, l := range lines {
			l, ok := strings.CutPrefix(strings.TrimSpace(l), "@@ST ")
			f := strings.Fields(l)
			if !ok || len(f) < 5 || strings.HasPrefix(f[0], "%") || strings.HasPrefix(f[0], "-") {
				continue
			}
			if calls, err := strconv.ParseFloat(f[3], 64); err == nil {
				res[i].calls[f[len(f)-1]] = calls
			}
		}
		if res[i].calls["total"] == 0 {
			t.Fatalf("%s: no strace summary:\n%s", v.name, strings.Join(lines, "\n"))
		}
	}
	return res
}

// writeSyscalls writes, after label, each daemon's calls in sc divided
// by per: the total and the six most frequent and, when idle (calls a
// second) is given, what the idle daemon made over the same window, also
// divided by per. Not subtracted: a busy daemon's runtime does not poll
// and sleep as an idle one does, so the difference can go below zero.
func writeSyscalls(out *strings.Builder, label string, sc, idle [2]syscalls, per float64) {
	out.WriteString(label)
	for i, c := range sc {
		var names []string
		for name := range c.calls {
			if name != "total" {
				names = append(names, name)
			}
		}
		slices.SortFunc(names, func(a, b string) int { return cmp.Compare(c.calls[b], c.calls[a]) })
		var rows []string
		for _, name := range names[:min(6, len(names))] {
			rows = append(rows, fmt.Sprintf("%s %.1f", name, c.calls[name]/per))
		}
		fmt.Fprintf(out, "; %s %.1f (%s", [2]string{"primary", "secondary"}[i], c.calls["total"]/per, strings.Join(rows, ", "))
		if idle[i].calls != nil {
			fmt.Fprintf(out, "; idle over the same %.1f s: %.1f", c.window, idle[i].calls["total"]*c.window/per)
		}
		out.WriteString(")")
	}
	out.WriteString("\n")
}

// rates is sc per second of its window.
func rates(sc [2]syscalls) [2]syscalls {
	var r [2]syscalls
	for i, c := range sc {
		r[i] = syscalls{calls: map[string]float64{}, window: 1}
		for name, n := range c.calls {
			r[i].calls[name] = n / c.window
		}
	}
	return r
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
		col := func(f func(benchSample) float64) float64 {
			var xs []float64
			for _, s := range ss {
				xs = append(xs, f(s))
			}
			return median(xs)
		}
		med[name] = benchSample{
			latUS: col(func(s benchSample) float64 { return s.latUS }),
			mbps:  col(func(s benchSample) float64 { return s.mbps }),
			iops:  col(func(s benchSample) float64 { return s.iops }),
			userS: col(func(s benchSample) float64 { return s.userS }),
			sysS:  col(func(s benchSample) float64 { return s.sysS }),
			appUS: col(func(s benchSample) float64 { return s.appUS }), localUS: col(func(s benchSample) float64 { return s.localUS }),
			vmP: col(func(s benchSample) float64 { return s.vmP }), vmS: col(func(s benchSample) float64 { return s.vmS }),
			dcpuP: col(func(s benchSample) float64 { return s.dcpuP }), dcpuS: col(func(s benchSample) float64 { return s.dcpuS }),
			csP: col(func(s benchSample) float64 { return s.csP }), csS: col(func(s benchSample) float64 { return s.csS }),
			thrP: col(func(s benchSample) float64 { return s.thrP }), thrS: col(func(s benchSample) float64 { return s.thrS }),
		}
	}
	raw := med[benchSetups[0].name]
	drbd := map[string]benchSample{}
	for _, s := range setups {
		if s.kind == "drbd" {
			drbd[s.group()] = med[s.name]
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
		d, hasD := drbd[s.group()]
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
	fmt.Fprintf(out, "per QD1 write, less the idle cost, primary/secondary: %-14s %-13s %-15s %s\n", "VM CPU ms", "daemon CPU ms", "daemon ctx sw", "daemon threads")
	for _, s := range setups {
		m := med[s.name]
		line := fmt.Sprintf("%-54s %-14s", s.name, fmt.Sprintf("%.2f/%.2f", m.vmP, m.vmS))
		if s.kind == "georepl" {
			line += fmt.Sprintf(" %-13s %-15s %.0f/%.0f", fmt.Sprintf("%.2f/%.2f", m.dcpuP, m.dcpuS), fmt.Sprintf("%.1f/%.1f", m.csP, m.csS), m.thrP, m.thrS)
		}
		fmt.Fprintln(out, line)
	}
}
