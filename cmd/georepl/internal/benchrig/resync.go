package main

// The resync benchmark (`make bench-resync`, -resync): two daemons in two
// network namespaces joined by a veth pair whose both ends are shaped by
// tc's token bucket filter to a fixed rate (200 Mbit/s by default), as a
// WAN link would be. alpha holds random data and is promoted with --force,
// so bravo receives a full resync of the whole device: every block marked.
// The resync's throughput is measured from the engine's own events (the
// "started" and "finished" resync events carry their time and byte count)
// and reported as a fraction of the link rate, with and without checksum
// resync (csums; every block differs, so csums only adds its digests and
// round trips). Further runs write through alpha's export with fio
// (1 MiB sequential writes at queue depth 4, and 4 KiB random writes at
// queue depth 1; protocol C, so every write crosses the link) while the
// resync runs, with resync_min_app_share 0.3 (the default) and 0, and
// report the application's write rate and the resync rate over the same
// seconds.
//
// It needs root (ip netns, tc) and iproute2; fio for the application runs.
// The machines this runs on are shared: numbers are medians of -runs runs.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// resyncBench is one configuration of the resync benchmark.
type resyncBench struct {
	bin      string
	runs     int
	size     int64  // device size in bytes
	rateMbit int    // link rate
	dir      string // scratch directory
}

// resyncVariant is one row of the report.
type resyncVariant struct {
	name     string
	csums    string
	appShare float64
	// app, if set, are fio's workload arguments for writes through the
	// export during the resync.
	app []string
}

var (
	seqQD4  = []string{"--rw=write", "--bs=1M", "--iodepth=4"}
	randQD1 = []string{"--rw=randwrite", "--bs=4k", "--iodepth=1"}
)

var resyncVariants = []resyncVariant{
	{name: "resync alone", csums: "none", appShare: 0.3},
	{name: "resync alone, csums crc32c", csums: "crc32c", appShare: 0.3},
	{name: "+ 1MiB seq writes QD4, app share 0.3", csums: "none", appShare: 0.3, app: seqQD4},
	{name: "+ 1MiB seq writes QD4, app share 0", csums: "none", appShare: 0, app: seqQD4},
	{name: "+ 4KiB rand writes QD1, app share 0.3", csums: "none", appShare: 0.3, app: randQD1},
	{name: "+ 4KiB rand writes QD1, app share 0", csums: "none", appShare: 0, app: randQD1},
}

// resyncRun is what one run measured, in bytes per second.
type resyncRun struct {
	resync float64 // whole resync: bytes / duration
	// during the application's writes (app runs only)
	appRate, resyncDuringApp float64
}

func runResyncBench(bin string, runs int, sizeMiB, rateMbit int) error {
	dir, net, done, err := shapedLink("resync", rateMbit)
	if err != nil {
		return err
	}
	defer done()
	b := &resyncBench{bin: bin, runs: runs, size: int64(sizeMiB) << 20, rateMbit: rateMbit, dir: dir}
	fmt.Fprintf(os.Stderr, "filling alpha's disk with %d MiB of random data\n", sizeMiB)
	if err := fillRandom(filepath.Join(dir, "alpha.img"), b.size); err != nil {
		return err
	}
	linkBytes := float64(rateMbit) * 1e6 / 8
	type row struct {
		v    resyncVariant
		runs []resyncRun
	}
	var rows []row
	for _, v := range resyncVariants {
		r := row{v: v}
		for i := range runs {
			fmt.Fprintf(os.Stderr, "%s: run %d of %d\n", v.name, i+1, runs)
			m, err := b.once(net, v)
			if err != nil {
				return fmt.Errorf("%s: %w", v.name, err)
			}
			r.runs = append(r.runs, m)
		}
		rows = append(rows, r)
	}

	fmt.Printf("\nresync of %d MiB (every block marked: a full sync of random data) between two network namespaces,\n", sizeMiB)
	fmt.Printf("veth shaped by tc tbf to %d Mbit/s each way; medians of %d runs\n\n", rateMbit, runs)
	fmt.Printf("%-40s %14s %8s %14s %14s %10s\n", "run", "resync", "of link", "app writes", "resync during", "app share")
	for _, r := range rows {
		whole := median(pick(r.runs, func(m resyncRun) float64 { return m.resync }))
		fmt.Printf("%-40s %9.1f MB/s %7.2fx", r.v.name, whole/1e6, whole/linkBytes)
		if r.v.app != nil {
			app := median(pick(r.runs, func(m resyncRun) float64 { return m.appRate }))
			during := median(pick(r.runs, func(m resyncRun) float64 { return m.resyncDuringApp }))
			fmt.Printf(" %9.2f MB/s %9.1f MB/s %9.0f%%", app/1e6, during/1e6, 100*app/(app+during))
		}
		fmt.Println()
	}
	fmt.Printf("\n\"of link\": resync payload bytes per second over the link rate (%.1f MB/s; the TCP/IP headers are not counted);\n", linkBytes/1e6)
	fmt.Println("\"+ ...\": fio writes through alpha's export (protocol C: every write crosses the link) for 10 s of the resync,")
	fmt.Println("with resync_min_app_share as shown; \"resync\" is then the whole resync's rate, \"resync during\" its rate over")
	fmt.Println("those 10 s, app share = app / (app + resync during)")
	return nil
}

func pick(runs []resyncRun, f func(resyncRun) float64) []float64 {
	out := make([]float64, len(runs))
	for i, r := range runs {
		out[i] = f(r)
	}
	return out
}

// shapedLink prepares a benchmark over a shaped link (what, for its
// messages): it checks for root and the tools, makes a scratch directory
// and the network namespaces (setupNetwork), and tears them down on
// SIGINT or SIGTERM too, since they outlive the process otherwise. done
// removes both.
func shapedLink(what string, rateMbit int) (dir string, net *benchNet, done func(), err error) {
	if os.Geteuid() != 0 {
		return "", nil, nil, fmt.Errorf("the %s benchmark needs root: it creates network namespaces and tc qdiscs", what)
	}
	for _, tool := range []string{"ip", "tc", "fio"} {
		if _, err := exec.LookPath(tool); err != nil {
			return "", nil, nil, fmt.Errorf("%s is missing: run `make deps` (iproute2, fio)", tool)
		}
	}
	if dir, err = os.MkdirTemp("", "georepl-bench-"+what+"-"); err != nil {
		return "", nil, nil, err
	}
	if net, err = setupNetwork(rateMbit); err != nil {
		os.RemoveAll(dir)
		return "", nil, nil, err
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() {
		if _, ok := <-sig; ok {
			net.teardown()
			os.Exit(1)
		}
	}()
	return dir, net, func() {
		signal.Stop(sig)
		net.teardown()
		os.RemoveAll(dir)
	}, nil
}

// benchNet is the two namespaces and the shaped veth pair between them.
type benchNet struct {
	ns   [2]string
	addr [2]string
}

func run(name string, args ...string) error {
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// netnsPrefix starts the names of the namespaces and veths setupNetwork
// makes (-netns-prefix).
var netnsPrefix = "gr"

// setupNetwork creates namespaces PREFIXA-PID and PREFIXB-PID joined by a
// veth pair (10.213.0.1 and .2), both ends shaped to rateMbit.
func setupNetwork(rateMbit int) (*benchNet, error) {
	if len(netnsPrefix) > 6 {
		// An interface name has at most 15 characters: prefix, "vA", 5 digits.
		return nil, fmt.Errorf("-netns-prefix %q: at most 6 characters", netnsPrefix)
	}
	pid := os.Getpid()
	n := &benchNet{
		ns:   [2]string{fmt.Sprintf("%sA-%d", netnsPrefix, pid), fmt.Sprintf("%sB-%d", netnsPrefix, pid)},
		addr: [2]string{"10.213.0.1", "10.213.0.2"},
	}
	veth := [2]string{fmt.Sprintf("%svA%d", netnsPrefix, pid%100000), fmt.Sprintf("%svB%d", netnsPrefix, pid%100000)}
	steps := [][]string{
		{"ip", "netns", "add", n.ns[0]},
		{"ip", "netns", "add", n.ns[1]},
		{"ip", "link", "add", veth[0], "type", "veth", "peer", "name", veth[1]},
	}
	for i := range 2 {
		steps = append(steps,
			[]string{"ip", "link", "set", veth[i], "netns", n.ns[i]},
			[]string{"ip", "-n", n.ns[i], "addr", "add", n.addr[i] + "/24", "dev", veth[i]},
			[]string{"ip", "-n", n.ns[i], "link", "set", veth[i], "up"},
			[]string{"ip", "-n", n.ns[i], "link", "set", "lo", "up"},
			// burst: at least rate/HZ; latency bounds the queue (about
			// 600 KB at 200 Mbit/s), like a router's buffer.
			[]string{"ip", "netns", "exec", n.ns[i], "tc", "qdisc", "add", "dev", veth[i], "root", "tbf",
				"rate", fmt.Sprintf("%dmbit", rateMbit), "burst", "256kb", "latency", "25ms"})
	}
	for _, s := range steps {
		if err := run(s[0], s[1:]...); err != nil {
			n.teardown()
			return nil, err
		}
	}
	return n, nil
}

func (n *benchNet) teardown() {
	for _, ns := range n.ns {
		exec.Command("ip", "netns", "delete", ns).Run() // takes its veth end along
	}
}

// once runs the variant once on fresh metadata and returns what it measured.
func (b *resyncBench) once(net *benchNet, v resyncVariant) (resyncRun, error) {
	dir, err := os.MkdirTemp(b.dir, "run-")
	if err != nil {
		return resyncRun{}, err
	}
	defer os.RemoveAll(dir)
	bravoImg := filepath.Join(dir, "bravo.img")
	if err := makeFile(bravoImg, b.size); err != nil {
		return resyncRun{}, err
	}
	settings := fmt.Sprintf("  protocol = \"C\"\n  net {\n    shared_secret = \"bench\"\n    csums = %q\n    resync_min_app_share = %g\n  }\n", v.csums, v.appShare)
	pair, err := startPair(b.bin, dir, net, settings, [2]string{filepath.Join(b.dir, "alpha.img"), bravoImg})
	if err != nil {
		return resyncRun{}, err
	}
	defer pair.stop()
	admin := pair.admin
	cli := func(args ...string) ([]byte, error) { return pair.cli("alpha", args...) }

	ctx, cancel := context.WithCancel(context.Background())
	events := exec.CommandContext(ctx, b.bin, "--admin", admin("alpha"), "events", "r0")
	evOut, err := events.StdoutPipe()
	if err != nil {
		cancel()
		return resyncRun{}, err
	}
	evErr, err := events.StderrPipe()
	if err != nil {
		cancel()
		return resyncRun{}, err
	}
	if err := events.Start(); err != nil {
		cancel()
		return resyncRun{}, err
	}
	defer func() {
		cancel()
		events.Wait()
	}()
	started, finished := make(chan time.Time, 1), make(chan resyncDone, 1)
	go watchResync(evOut, started, finished)
	subscribed := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(evErr)
		for sc.Scan() {
			if strings.Contains(sc.Text(), "subscribed") {
				close(subscribed)
				break
			}
		}
		io.Copy(io.Discard, evErr)
	}()
	select {
	case <-subscribed:
	case <-time.After(30 * time.Second):
		return resyncRun{}, errors.New("georepl events did not subscribe within 30s")
	}

	if _, err := cli("primary", "--force", "r0"); err != nil {
		return resyncRun{}, err
	}
	var t0 time.Time
	select {
	case t0 = <-started:
	case <-time.After(time.Minute):
		return resyncRun{}, errors.New("no resync started within a minute (or its event was missed)")
	}
	var m resyncRun
	if v.app != nil {
		if m.appRate, m.resyncDuringApp, err = b.appDuringResync(cli, filepath.Join(dir, "alpha.nbd"), dir, v.app); err != nil {
			return resyncRun{}, err
		}
	}
	select {
	case d := <-finished:
		m.resync = float64(d.bytes) / d.at.Sub(t0).Seconds()
	case <-time.After(30 * time.Minute):
		return resyncRun{}, errors.New("the resync did not finish within 30 minutes")
	}
	return m, nil
}

type resyncDone struct {
	at    time.Time
	bytes uint64
}

var finishedBytes = regexp.MustCompile(`^finished \((\d+) bytes`)

// watchResync reads `georepl events` JSON lines and reports the times of
// the first resync's start and end (with its byte count).
func watchResync(out interface{ Read([]byte) (int, error) }, started chan<- time.Time, finished chan<- resyncDone) {
	sc := bufio.NewScanner(out)
	seen := false
	for sc.Scan() {
		var ev struct {
			Time   time.Time `json:"time"`
			What   string    `json:"what"`
			Peer   string    `json:"peer"`
			Detail string    `json:"detail"`
		}
		if json.Unmarshal(sc.Bytes(), &ev) != nil || ev.What != "resync" || ev.Peer != "bravo" {
			continue
		}
		switch {
		case !seen && strings.HasPrefix(ev.Detail, "started"):
			seen = true
			started <- ev.Time
		case seen && finishedBytes.MatchString(ev.Detail):
			n, _ := strconv.ParseUint(finishedBytes.FindStringSubmatch(ev.Detail)[1], 10, 64)
			finished <- resyncDone{ev.Time, n}
			return
		}
	}
}

// appDuringResync lets the resync settle for two seconds, then writes
// through the export with fio for ten, and returns the application's write
// rate and the resync's rate (from the status's done bytes) over them.
func (b *resyncBench) appDuringResync(cli func(...string) ([]byte, error), sock, dir string, workload []string) (app, resync float64, err error) {
	done := func() (uint64, error) {
		out, err := cli("status", "--json", "r0")
		if err != nil {
			return 0, err
		}
		var sts []struct {
			Peers []struct {
				Resync *struct {
					DoneBytes uint64 `json:"done_bytes"`
				} `json:"resync"`
			} `json:"peers"`
		}
		if err := json.Unmarshal(out, &sts); err != nil || len(sts) == 0 || len(sts[0].Peers) == 0 {
			return 0, fmt.Errorf("status during the resync: %v: %s", err, out)
		}
		if sts[0].Peers[0].Resync == nil {
			return 0, errors.New("the resync ended before the application's writes did: use a larger -resync-size or a slower -rate")
		}
		return sts[0].Peers[0].Resync.DoneBytes, nil
	}
	time.Sleep(2 * time.Second)
	d0, err := done()
	if err != nil {
		return 0, 0, err
	}
	t0 := time.Now()
	const runtime = 10
	fio := exec.Command("fio", append([]string{"--name=app", "--ioengine=nbd", "--uri=nbd+unix:///r0?socket=" + sock,
		"--size=" + fmt.Sprint(b.size/2), "--time_based", "--randrepeat=0",
		"--runtime=" + fmt.Sprint(runtime), "--output-format=json"}, workload...)...)
	fio.Dir = dir
	out, err := fio.Output()
	if err != nil {
		return 0, 0, fmt.Errorf("fio: %v", err)
	}
	elapsed := time.Since(t0).Seconds()
	d1, err := done()
	if err != nil {
		return 0, 0, err
	}
	var rep struct {
		Jobs []struct {
			Write struct {
				BW float64 `json:"bw_bytes"`
			} `json:"write"`
		} `json:"jobs"`
	}
	if i := strings.IndexByte(string(out), '{'); i < 0 || json.Unmarshal(out[i:], &rep) != nil || len(rep.Jobs) == 0 {
		return 0, 0, fmt.Errorf("fio output: %s", out)
	}
	return rep.Jobs[0].Write.BW, float64(d1-d0) / elapsed, nil
}

// fillRandom writes size bytes of random data to path.
func fillRandom(path string, size int64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	w := bufio.NewWriterSize(f, 1<<20)
	rng := rand.NewChaCha8([32]byte{'g', 'e', 'o'})
	buf := make([]byte, 1<<20)
	for left := size; left > 0; left -= int64(len(buf)) {
		rng.Read(buf)
		if _, err := w.Write(buf[:min(int64(len(buf)), left)]); err != nil {
			return err
		}
	}
	return w.Flush()
}
