// Command benchrig is `make bench`: it measures georepl's NBD export with
// fio's nbd engine (and, for the journal commit workload, which needs FUA,
// with the project's NBD client) against nbdkit's file plugin serving the
// same backing file, in one run, and prints one table of medians and
// ratios.
//
// The machines this runs on are shared and noisy: their speed changes from
// one minute to the next. So nbdkit is not measured once up front: every
// georepl run is paired with an nbdkit run just before it, and a set-up's
// ratio is the median of its runs' ratios to their nbdkit partners. The
// nbdkit row shows the median of all nbdkit runs. (The two servers use the
// backing file in turn, never at once.)
//
// Set-ups: nbdkit (baseline); georepl alone (its peer is down, writes only
// mark the bitmap); protocol C with one peer; protocol A with one peer; C
// and A with two peers; protocol C with one peer over the tcp-fd transport
// plugin (plugins/tcp-fd, from -plugins), to set against the built-in tcp. All peers are daemons on this machine, so they share
// its disk and cores: two copies cost about half the disk bandwidth.
//
//	go run ./cmd/georepl/internal/benchrig -georepl bin/georepl [-runs 3] [-runtime 5s]
//
// With -compare OTHER it measures a second georepl binary too, set-up by
// set-up right after the first and against the same nbdkit: the before and
// after of a change in one run, e.g.
//
//	git worktree add /tmp/old HEAD~5 && (cd /tmp/old && go build -o /tmp/georepl-old ./cmd/georepl)
//	go run ./cmd/georepl/internal/benchrig -georepl bin/georepl -compare /tmp/georepl-old -runs 5
//
// With -profile DIR every daemon serves its runtime profiles (--pprof) and
// a CPU profile of each is written to DIR during every georepl fio run:
// what a change costs per write, beside what it does to the ratio.
//
// A second table gives, for the same runs, the CPU time the servers spent
// per request (all daemons of a set-up together, from /proc; ratio to
// nbdkit's in the paired run) and the daemons' context switches per
// request. A shared machine's load moves rates and latencies by a factor
// of two or more from one minute to the next, these far less: they say
// whether a change made the data path cheaper when the ratios cannot.
//
// With -wan it runs the WAN benchmark over a shaped link between two
// network namespaces (`make bench-wan`, root only; wan.go).
//
// With -tls it runs the TLS benchmark instead: protocol C over tcp with
// and without TLS, in paired runs (`make bench-tls`; tls.go).
//
// With -resync it runs the resync benchmark over a shaped link between two
// network namespaces instead (`make bench-resync`, root only; resync.go).
package main

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/georepl/georepl/cmd/georepl/internal/checker"
	"github.com/georepl/georepl/kmod/nbd"
)

type workload struct {
	name string
	args []string
	// latency workloads are compared by mean completion latency, others
	// by bandwidth or IOPS.
	metric string
	// run, if set, measures the workload instead of fio (args unused).
	run func(r *rig, uri string) (result, error)
}

var workloads = []workload{
	{"1MiB seq write QD8", []string{"--rw=write", "--bs=1M", "--iodepth=8"}, "bw", nil},
	{"4KiB rand write QD32", []string{"--rw=randwrite", "--bs=4k", "--iodepth=32"}, "iops", nil},
	{"4KiB rand write QD1", []string{"--rw=randwrite", "--bs=4k", "--iodepth=1"}, "lat", nil},
	// A flush after every write (what fsync costs an application): its
	// IOPS are write and flush pairs per second.
	{"4KiB write+flush QD1", []string{"--rw=randwrite", "--bs=4k", "--iodepth=1", "--fsync=1"}, "iops", nil},
	// A file system's journal commit as the kernel's block layer sends it
	// to an NBD device: FLUSH, then the commit block with FUA (fio's nbd
	// engine sends no FUA). Its IOPS are commits per second.
	{"journal commit QD1", nil, "iops", (*rig).journalCommits},
}

type setup struct {
	name  string
	nodes []string          // nodes started; the first is primary
	conns map[string]string // peer -> protocol
	// plugin, if set, is the transport plugin (a binary of -plugins) the
	// connections use instead of the built-in tcp; tls runs every
	// connection with TLS, certificates by tls init. Only the -georepl
	// binary measures such a set-up: a -compare binary may predate both.
	plugin string
	tls    bool
}

var setups = []setup{
	{"georepl alone", []string{"alpha"}, map[string]string{"bravo": "C"}, "", false},
	{"georepl C, 1 peer", []string{"alpha", "bravo"}, map[string]string{"bravo": "C"}, "", false},
	{"georepl C, 1 peer, TLS", []string{"alpha", "bravo"}, map[string]string{"bravo": "C"}, "", true},
	{"georepl A, 1 peer", []string{"alpha", "bravo"}, map[string]string{"bravo": "A"}, "", false},
	{"georepl C+A, 2 peers", []string{"alpha", "bravo", "dr"}, map[string]string{"bravo": "C", "dr": "A"}, "", false},
	{"georepl C, 1 peer, tcp-fd plugin", []string{"alpha", "bravo"}, map[string]string{"bravo": "C"}, "tcp-fd", false},
}

func main() {
	bin := flag.String("georepl", "bin/georepl", "georepl binary")
	runs := flag.Int("runs", 3, "runs per measurement (the median is reported)")
	runtime := flag.Duration("runtime", 5*time.Second, "fio runtime per run")
	sizeMiB := flag.Int("size", 1024, "device size in MiB")
	wan := flag.Bool("wan", false, "run the WAN benchmark instead: protocol A over a shaped link, tcp and quic, with and without LZ4 (root; see wan.go)")
	resync := flag.Bool("resync", false, "run the resync benchmark instead (root: network namespaces, tc tbf; see resync.go)")
	resyncMiB := flag.Int("resync-size", 512, "with -resync: device size in MiB, all of it resynchronised")
	rateMbit := flag.Int("rate", 0, "with -resync or -wan: the link rate in Mbit/s (default 200 for -resync, 100 for -wan)")
	pluginDir := flag.String("plugins", "bin/plugins", "directory of the transport plugins the plugin set-ups use (`make plugins` builds them)")
	compare := flag.String("compare", "", "also measure this georepl binary, each set-up right after -georepl's, for a before/after table in one run")
	profile := flag.String("profile", "", "write a CPU profile of every daemon during each georepl fio run to this directory (for `go tool pprof`; the daemons run with --pprof)")
	tlsBench := flag.Bool("tls", false, "run the TLS benchmark instead: protocol C over tcp with and without TLS, runs paired, TLS/plaintext ratios (see tls.go)")
	flag.StringVar(&netnsPrefix, "netns-prefix", netnsPrefix, "with -resync or -wan: the prefix of the network namespaces and veth interfaces made (PREFIX+\"A-\"+pid, at most 6 characters), so that runs side by side can be told apart")
	only := flag.String("only", "", "measure only the set-ups and workloads whose names contain one of these comma-separated words (e.g. \"alone,QD1\"), or that are named exactly by a word =NAME (words then separated by ;, e.g. \"=georepl C, 1 peer;QD1\"); nbdkit always runs")
	flag.Parse()
	if *profile != "" {
		if err := os.MkdirAll(*profile, 0o755); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
	}
	if *wan {
		if *only != "" {
			wanVariants = keep(wanVariants, wanVariant.String, *only)
		}
		if err := runWANBench(*bin, *runs, cmp.Or(*rateMbit, 100)); err != nil {
			fmt.Fprintln(os.Stderr, "bench-wan:", err)
			os.Exit(1)
		}
		return
	}
	if *tlsBench {
		r := &rig{bins: []string{*bin}, runs: *runs, runtime: *runtime, size: int64(*sizeMiB) << 20, pluginDir: *pluginDir,
			profileDir: *profile, pprof: map[string][]string{}, daemons: map[string][]daemon{}, peaks: map[string]string{}}
		if err := runTLSBench(*bin, *runs, r); err != nil {
			fmt.Fprintln(os.Stderr, "bench-tls:", err)
			os.Exit(1)
		}
		return
	}
	if *resync {
		if err := runResyncBench(*bin, *runs, *resyncMiB, cmp.Or(*rateMbit, 200)); err != nil {
			fmt.Fprintln(os.Stderr, "bench-resync:", err)
			os.Exit(1)
		}
		return
	}
	if *only != "" {
		setups = keep(setups, func(s setup) string { return s.name }, *only)
		workloads = keep(workloads, func(w workload) string { return w.name }, *only)
	}
	r := &rig{bins: []string{*bin}, runs: *runs, runtime: *runtime, size: int64(*sizeMiB) << 20, pluginDir: *pluginDir,
		profileDir: *profile, pprof: map[string][]string{}, daemons: map[string][]daemon{}, peaks: map[string]string{}}
	if *compare != "" {
		r.bins = append(r.bins, *compare)
	}
	if err := r.run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// keep returns the items whose names contain one of only's words, or all
// of them when -only names none of them: "-only QD1" keeps every set-up
// and the QD1 workload. The words are separated by commas, or by
// semicolons if only holds one (set-up names hold commas); a word that
// starts with "=" keeps only the item of exactly that name:
// "-only '=georepl C, 1 peer;QD'" keeps that set-up and every workload.
func keep[T any](items []T, name func(T) string, only string) []T {
	sep := ","
	if strings.Contains(only, ";") {
		sep = ";"
	}
	var kept []T
	for _, it := range items {
		for _, word := range strings.Split(only, sep) {
			word = strings.TrimSpace(word)
			exact, isExact := strings.CutPrefix(word, "=")
			if word != "" && (isExact && name(it) == exact || !isExact && strings.Contains(name(it), word)) {
				kept = append(kept, it)
				break
			}
		}
	}
	if len(kept) == 0 {
		return items
	}
	return kept
}

type rig struct {
	bins      []string // the georepl binaries measured: one, or two to compare
	pluginDir string
	runs      int
	runtime   time.Duration
	size      int64
	dir       string
	// profileDir, if set, receives CPU profiles; pprof maps a cluster's
	// NBD URI to its daemons' profile addresses, node by node.
	profileDir string
	pprof      map[string][]string
	// daemons maps a cluster's NBD URI to its daemons, for their peak
	// memory (peakRSS) once the set-up's runs are over.
	daemons map[string][]daemon
	peaks   map[string]string // row name → the peak RSS of each daemon
	// nbdkit is the baseline server's process id, for its CPU time.
	nbdkit int
}

type daemon struct {
	node string
	pid  int
}

type result struct {
	bw, iops, latUs float64
	// cpuSec is the CPU time fio itself spent (fio runs only).
	cpuSec float64
	// requests is how many requests the run sent, for the servers' CPU
	// time per request.
	requests float64
}

// metric returns the value workload w is compared by.
func (v result) metric(w workload) float64 {
	switch w.metric {
	case "bw":
		return v.bw
	case "iops":
		return v.iops
	}
	return v.latUs
}

// cell is one set-up's outcome for one workload: the median of its runs
// and the median of their ratios to the nbdkit run paired with each; and
// the same for the CPU time its servers spent per request (cpuUs, every
// daemon of the set-up together) and their context switches per request.
type cell struct {
	value, ratio    float64
	cpuUs, cpuRatio float64
	switches        float64
}

func (r *rig) run() error {
	for _, tool := range []string{"fio", "nbdkit"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s is missing: run `make deps`", tool)
		}
	}
	var err error
	if r.dir, err = os.MkdirTemp("", "georepl-bench-"); err != nil {
		return err
	}
	defer os.RemoveAll(r.dir)

	stopNbdkit, err := r.startNbdkit()
	if err != nil {
		return fmt.Errorf("nbdkit: %w", err)
	}
	defer stopNbdkit()
	results := map[string]map[string]cell{}
	baseRuns := map[string][]float64{}
	baseCPU := map[string][]float64{}
	var names []string
	for _, s := range setups {
		bins := r.bins
		if s.plugin != "" || s.tls {
			bins = bins[:1]
		}
		var rowNames []string
		for _, bin := range bins {
			name := s.name
			if len(r.bins) > 1 {
				name += " [" + filepath.Base(bin) + "]"
			}
			rowNames = append(rowNames, name)
		}
		res, peaks, err := r.measureSetup(bins, s, baseRuns, baseCPU)
		if err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
		for i, name := range rowNames {
			results[name], r.peaks[name] = res[i], peaks[i]
		}
		names = append(names, rowNames...)
	}

	fmt.Printf("\nfio --ioengine=nbd (journal commit: the project's NBD client), %v per run, median of %d runs, each paired with an nbdkit run, %d MiB device, same backing file\n\n", r.runtime, r.runs, r.size>>20)
	base := map[string]cell{}
	for _, w := range workloads {
		base[w.name] = cell{value: median(baseRuns[w.name]), ratio: 1,
			cpuUs: median(baseCPU[w.name]), cpuRatio: 1, switches: math.NaN()}
	}
	printTable(names, base, results, func(w workload, c cell) string {
		switch w.metric {
		case "bw":
			return fmt.Sprintf("%.0f MB/s (%.2fx)", c.value/1e6, c.ratio)
		case "iops":
			return fmt.Sprintf("%.1fk IOPS (%.2fx)", c.value/1e3, c.ratio)
		}
		return fmt.Sprintf("%.0f µs (%.2fx)", c.value, c.ratio)
	})
	fmt.Println("\nratios: bandwidth and IOPS relative to nbdkit (higher is better); QD1 latency relative to nbdkit (lower is better);")
	fmt.Println("each the median of the ratios of a run to the nbdkit run just before it")

	// What the servers spent per request: unlike rates and latencies it
	// changes little with the load of a shared machine.
	fmt.Println("\nserver CPU time per request (every daemon of the set-up together; ratio to nbdkit's) and context switches per request")
	fmt.Println("(nbdkit's threads end with each connection, taking their count along: no ratio), medians:")
	fmt.Println()
	printTable(names, base, results, func(_ workload, c cell) string {
		if math.IsNaN(c.switches) {
			return fmt.Sprintf("%.1f µs (%.2fx)", c.cpuUs, c.cpuRatio)
		}
		return fmt.Sprintf("%.1f µs (%.2fx), %.1f cs", c.cpuUs, c.cpuRatio, c.switches)
	})
	fmt.Println("\npeak resident memory of each daemon over its set-up's runs (VmHWM; max_buffer 64 MiB per peer):")
	for _, n := range names {
		fmt.Printf("  %s: %s\n", n, r.peaks[n])
	}
	return nil
}

// printTable prints a table of the workloads' cells: nbdkit's row
// (base), then the set-ups' rows in names' order, each cell as text says.
func printTable(names []string, base map[string]cell, rows map[string]map[string]cell, text func(workload, cell) string) {
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprint(tw, "setup")
	for _, w := range workloads {
		fmt.Fprintf(tw, "\t%s", w.name)
	}
	fmt.Fprintln(tw)
	row := func(name string, cells map[string]cell) {
		fmt.Fprint(tw, name)
		for _, w := range workloads {
			fmt.Fprintf(tw, "\t%s", text(w, cells[w.name]))
		}
		fmt.Fprintln(tw)
	}
	row("nbdkit file", base)
	for _, n := range names {
		row(n, rows[n])
	}
	tw.Flush()
}

// measure runs one workload once and returns what it measured.
func (r *rig) measure(uri string, w workload) (result, error) {
	if w.run != nil {
		return w.run(r, uri)
	}
	return r.fio(uri, w)
}

// journalCommits runs journal commits for r.runtime, one at a time: two
// 4 KiB journal blocks written, then FLUSH (the commit's PREFLUSH), then
// the 4 KiB commit block with FUA, as the kernel sends a file system's
// commit to an NBD device. The journal wraps around in the first 64 MiB.
func (r *rig) journalCommits(uri string) (result, error) {
	spec, export, err := nbdSpec(uri)
	if err != nil {
		return result{}, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := nbd.Dial(ctx, spec, export)
	if err != nil {
		return result{}, fmt.Errorf("journal commits on %s: %w", uri, err)
	}
	defer c.Close()
	const block, journal = 4096, 64 << 20
	buf := make([]byte, block)
	commits, off := 0, int64(0)
	start := time.Now()
	for time.Since(start) < r.runtime {
		for range 2 {
			buf[0]++
			if err := c.WriteAt(buf, off, false); err != nil {
				return result{}, fmt.Errorf("journal commits on %s: write: %w", uri, err)
			}
			off = (off + block) % journal
		}
		if err := c.Flush(); err != nil {
			return result{}, fmt.Errorf("journal commits on %s: flush: %w", uri, err)
		}
		buf[0]++
		if err := c.WriteAt(buf, off, true); err != nil {
			return result{}, fmt.Errorf("journal commits on %s: FUA write: %w", uri, err)
		}
		off = (off + block) % journal
		commits++
	}
	elapsed := time.Since(start)
	return result{iops: float64(commits) / elapsed.Seconds(), latUs: float64(elapsed.Microseconds()) / float64(commits),
		requests: 4 * float64(commits)}, nil
}

// nbdSpec turns an nbd+unix URI, as fio takes it, into nbd.Dial's spec and
// export name.
func nbdSpec(uri string) (spec, export string, err error) {
	u, err := url.Parse(uri)
	if err != nil || u.Scheme != "nbd+unix" || u.Query().Get("socket") == "" {
		return "", "", fmt.Errorf("NBD URI %q: want nbd+unix:///EXPORT?socket=PATH", uri)
	}
	return "unix:" + u.Query().Get("socket"), strings.TrimPrefix(u.Path, "/"), nil
}

// fio runs one workload once and returns what fio measured.
func (r *rig) fio(uri string, w workload) (result, error) {
	args := append([]string{"--name=bench", "--ioengine=nbd", "--uri=" + uri,
		"--size=" + fmt.Sprint(r.size/2), "--time_based", "--runtime=" + fmt.Sprint(int(r.runtime.Seconds())),
		"--output-format=json", "--randrepeat=0"}, w.args...)
	out, err := exec.Command("fio", args...).Output()
	if err != nil {
		return result{}, fmt.Errorf("fio %s: %w", strings.Join(args, " "), err)
	}
	var rep struct {
		Jobs []struct {
			UsrCPU    float64 `json:"usr_cpu"` // percent of one CPU over the run
			SysCPU    float64 `json:"sys_cpu"`
			RuntimeMs float64 `json:"job_runtime"`
			Write     struct {
				BW       float64 `json:"bw_bytes"`
				IOPS     float64 `json:"iops"`
				TotalIOs float64 `json:"total_ios"`
				Lat      struct {
					Mean float64 `json:"mean"`
				} `json:"lat_ns"`
			} `json:"write"`
		} `json:"jobs"`
	}
	if err := json.Unmarshal(out[strings.IndexByte(string(out), '{'):], &rep); err != nil || len(rep.Jobs) == 0 {
		return result{}, fmt.Errorf("fio output: %v", err)
	}
	job := rep.Jobs[0]
	wr := job.Write
	requests := wr.TotalIOs
	if slices.Contains(w.args, "--fsync=1") {
		requests *= 2 // a flush after each write
	}
	return result{wr.BW, wr.IOPS, wr.Lat.Mean / 1e3, (job.UsrCPU + job.SysCPU) / 100 * job.RuntimeMs / 1e3, requests}, nil
}

// paired runs workload w r.runs times on each of uris, each run right
// after one on nbdkit, and returns per uri the median and the median ratio;
// the nbdkit values are appended to baseRuns, and nbdkit's CPU time per
// request to baseCPU. With two uris (-compare) the
// runs interleave, nbdkit, first, nbdkit, second, so that a slow minute of
// the machine falls on both binaries alike.
func (r *rig) paired(uris []string, w workload, baseRuns, baseCPU map[string][]float64) ([]cell, error) {
	n := len(uris)
	values, ratios := make([][]float64, n), make([][]float64, n)
	cpus, cpuRatios, sws := make([][]float64, n), make([][]float64, n), make([][]float64, n)
	for run := range r.runs {
		for i, uri := range uris {
			b, bu, err := r.measureUsage(r.nbdkitURI(), w, []int{r.nbdkit})
			if err != nil {
				return nil, fmt.Errorf("nbdkit: %w", err)
			}
			var pids []int
			for _, d := range r.daemons[uri] {
				pids = append(pids, d.pid)
			}
			stopProfiles := r.startProfiles(uri, w, run)
			v, vu, err := r.measureUsage(uri, w, pids)
			stopProfiles()
			if err != nil {
				return nil, err
			}
			bm, vm := b.metric(w), v.metric(w)
			baseRuns[w.name] = append(baseRuns[w.name], bm)
			values[i], ratios[i] = append(values[i], vm), append(ratios[i], vm/bm)
			bc, _ := bu.perRequest(b)
			vc, vs := vu.perRequest(v)
			baseCPU[w.name] = append(baseCPU[w.name], bc)
			cpus[i], cpuRatios[i], sws[i] = append(cpus[i], vc), append(cpuRatios[i], vc/bc), append(sws[i], vs)
		}
	}
	cells := make([]cell, n)
	for i := range uris {
		cells[i] = cell{median(values[i]), median(ratios[i]), median(cpus[i]), median(cpuRatios[i]), median(sws[i])}
	}
	return cells, nil
}

// measureUsage is measure, with what processes pids spent meanwhile.
func (r *rig) measureUsage(uri string, w workload, pids []int) (result, usage, error) {
	before := usageOf(pids)
	v, err := r.measure(uri, w)
	return v, usageOf(pids).minus(before), err
}

// usage is what processes spent: time on a CPU, and context switches
// (voluntary and not), over all their threads.
type usage struct {
	cpu      time.Duration
	switches uint64
}

// usageOf sums the usage of processes pids: their user and system time
// (processTicks: threads that ended included, as nbdkit's do with their
// connection) and the context switches of their threads
// (contextSwitches: a thread that ended drops out of that sum, so only a
// Go daemon's, whose threads live on, are comparable from run to run). A
// process that cannot be read adds nothing.
func usageOf(pids []int) usage {
	var u usage
	for _, pid := range pids {
		if t, err := processTicks(pid); err == nil {
			u.cpu += time.Duration(t) * time.Second / clockTicks
		}
		if n, err := contextSwitches(pid); err == nil {
			u.switches += n
		}
	}
	return u
}

func (u usage) minus(v usage) usage {
	return usage{u.cpu - v.cpu, u.switches - v.switches}
}

// perRequest returns the CPU time in µs and the context switches per
// request of the run that measured v.
func (u usage) perRequest(v result) (cpuUs, switches float64) {
	n := max(v.requests, 1)
	return float64(u.cpu.Microseconds()) / n, float64(u.switches) / n
}

func median(v []float64) float64 {
	sort.Float64s(v)
	return v[len(v)/2]
}

func (r *rig) nbdkitURI() string {
	return "nbd+unix:///?socket=" + filepath.Join(r.dir, "nbdkit.sock")
}

// startNbdkit serves alpha.img with nbdkit's file plugin until the
// returned function is called.
func (r *rig) startNbdkit() (func(), error) {
	img := filepath.Join(r.dir, "alpha.img")
	if err := makeFile(img, r.size); err != nil {
		return nil, err
	}
	sock := filepath.Join(r.dir, "nbdkit.sock")
	cmd := exec.Command("nbdkit", "-f", "-U", sock, "file", img)
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	if err := waitSocket(sock); err != nil {
		stop(cmd)
		return nil, err
	}
	r.nbdkit = cmd.Process.Pid
	return func() { stop(cmd) }, nil
}

// measureSetup starts set-up s once per binary of bins and measures every
// workload on them; it returns one row of cells per binary.
func (r *rig) measureSetup(bins []string, s setup, baseRuns, baseCPU map[string][]float64) (rows []map[string]cell, peaks []string, err error) {
	fmt.Fprintln(os.Stderr, "measuring", s.name)
	var uris []string
	for i, bin := range bins {
		uri, stopCluster, err := r.startCluster(bin, s, i == 0)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", bin, err)
		}
		defer stopCluster()
		uris = append(uris, uri)
	}
	rows = make([]map[string]cell, len(uris))
	for i := range rows {
		rows[i] = map[string]cell{}
	}
	for _, w := range workloads {
		cells, err := r.paired(uris, w, baseRuns, baseCPU)
		if err != nil {
			return nil, nil, err
		}
		for i, c := range cells {
			rows[i][w.name] = c
		}
	}
	for _, uri := range uris {
		var each []string
		for _, d := range r.daemons[uri] {
			each = append(each, d.node+" "+peakRSS(d.pid))
		}
		peaks = append(peaks, strings.Join(each, ", "))
	}
	return rows, peaks, nil
}

// peakRSS returns the highest resident set size process pid has had
// (VmHWM in /proc/PID/status), or why it cannot tell.
func peakRSS(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return "?"
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			var kb int
			fmt.Sscan(v, &kb)
			return fmt.Sprintf("%d MiB", kb>>10)
		}
	}
	return "?"
}

// startCluster starts set-up s with binary bin, makes alpha Primary and
// waits for the initial sync; it returns the NBD URI of alpha's export and
// a function that stops the cluster and removes its files. Only the
// cluster with onNbdkitFile uses nbdkit's own backing file for alpha; a
// second one, for -compare, gets a file of its own in the same directory.
func (r *rig) startCluster(bin string, s setup, onNbdkitFile bool) (uri string, stopAll func(), err error) {
	dir, err := os.MkdirTemp(r.dir, "cluster-")
	if err != nil {
		return "", nil, err
	}
	var procs []*exec.Cmd
	stopAll = func() {
		for _, p := range procs {
			stop(p)
		}
		os.RemoveAll(dir)
	}
	defer func() {
		if err != nil {
			stopAll()
		}
	}()
	conf := filepath.Join(dir, "conf")
	os.MkdirAll(conf, 0o755)
	all := []string{"alpha", "bravo", "dr"}[:1+len(s.conns)]
	port, err := checker.FreePorts(len(all))
	if err != nil {
		return "", nil, err
	}
	var hcl strings.Builder
	transport := ""
	if s.plugin != "" {
		path, err := filepath.Abs(filepath.Join(r.pluginDir, s.plugin))
		if err != nil {
			return "", nil, err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return "", nil, fmt.Errorf("plugin %s: %w (make plugins builds it)", s.plugin, err)
		}
		fmt.Fprintf(&hcl, "plugin %q {\n  path = %q\n  sha256 = \"%x\"\n}\n\n", s.plugin, path, sha256.Sum256(b))
		transport = fmt.Sprintf("    transport = %q\n", s.plugin)
	}
	fmt.Fprintf(&hcl, "resource \"r0\" {\n  protocol = \"C\"\n  net {\n    shared_secret = \"bench\"\n%s  }\n", transport)
	tlsDir := filepath.Join(dir, "tls")
	if s.tls {
		fmt.Fprintf(&hcl, "  tls {\n    ca = %q\n  }\n", filepath.Join(tlsDir, "ca.crt"))
	}
	for i, n := range all {
		// alpha uses the very file nbdkit served, as the issue asks.
		disk := filepath.Join(dir, n+".img")
		if n == "alpha" && onNbdkitFile {
			disk = filepath.Join(r.dir, "alpha.img")
		}
		if err := makeFile(disk, r.size); err != nil {
			return "", nil, err
		}
		fmt.Fprintf(&hcl, "  node %q {\n    id = %d\n    address = \"127.0.0.1:%d\"\n    disk = %q\n    export = \"unix:%s\"\n",
			n, i, port+i, disk, filepath.Join(dir, n+".nbd"))
		if s.tls {
			fmt.Fprintf(&hcl, "    tls {\n      cert = %q\n      key  = %q\n    }\n", filepath.Join(tlsDir, n+".crt"), filepath.Join(tlsDir, n+".key"))
		}
		hcl.WriteString("  }\n")
	}
	for p, proto := range s.conns {
		fmt.Fprintf(&hcl, "  connection \"alpha\" %q {\n    protocol = %q\n  }\n", p, proto)
	}
	hcl.WriteString("}\n")
	if err := os.WriteFile(filepath.Join(conf, "r0.hcl"), []byte(hcl.String()), 0o644); err != nil {
		return "", nil, err
	}
	if s.tls {
		if out, err := exec.Command(bin, "tls", "init", "--config", conf, "--out", tlsDir).CombinedOutput(); err != nil {
			return "", nil, fmt.Errorf("tls init: %v: %s", err, out)
		}
	}
	for _, n := range all {
		if out, err := exec.Command(bin, "create-md", "--force", "--config", conf, "--node", n, "r0").CombinedOutput(); err != nil {
			return "", nil, fmt.Errorf("create-md %s: %v: %s", n, err, out)
		}
	}
	var pprofAddrs []string
	for _, n := range s.nodes {
		logf, _ := os.Create(filepath.Join(dir, n+".log"))
		args := []string{"daemon", "--config", conf, "--node", n, "--admin", filepath.Join(dir, n+".admin"), "--up", "--log-level", "warn"}
		if r.profileDir != "" {
			p, err := checker.FreePorts(1)
			if err != nil {
				return "", nil, err
			}
			addr := fmt.Sprintf("127.0.0.1:%d", p)
			args = append(args, "--pprof", addr)
			pprofAddrs = append(pprofAddrs, fmt.Sprintf("%s/%s/%s/%s", addr, filepath.Base(bin), slug(s.name), n))
		}
		cmd := exec.Command(bin, args...)
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			return "", nil, err
		}
		procs = append(procs, cmd)
		if err := waitSocket(filepath.Join(dir, n+".admin")); err != nil {
			return "", nil, err
		}
	}
	cli := func(args ...string) error {
		out, err := exec.Command(bin, append([]string{"--admin", filepath.Join(dir, "alpha.admin")}, args...)...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("georepl %s: %v: %s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	if err := cli("primary", "--force", "r0"); err != nil {
		return "", nil, err
	}
	if len(s.nodes) > 1 {
		// Wait for the initial full sync so that it does not compete.
		if err := waitConnected(bin, filepath.Join(dir, "alpha.admin"), len(s.nodes)-1); err != nil {
			return "", nil, err
		}
		if err := cli("wait-sync", "--timeout", "10m", "r0"); err != nil {
			return "", nil, err
		}
	}
	uri = "nbd+unix:///r0?socket=" + filepath.Join(dir, "alpha.nbd")
	r.pprof[uri] = pprofAddrs
	for i, p := range procs {
		r.daemons[uri] = append(r.daemons[uri], daemon{s.nodes[i], p.Process.Pid})
	}
	return uri, stopAll, nil
}

// waitConnected waits until the primary sees n connected peers.
func waitConnected(bin, admin string, n int) error {
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		out, err := exec.Command(bin, "--admin", admin, "status", "--json", "r0").Output()
		if err == nil && strings.Count(string(out), `"connection": "Connected"`) >= n {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return errors.New("peers did not connect within a minute")
}

func makeFile(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Truncate(size)
}

func waitSocket(path string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for ctx.Err() == nil {
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("nothing listens on %s after 30s", path)
}

func stop(cmd *exec.Cmd) {
	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		cmd.Process.Kill()
		<-done
	}
}
