// Command benchrig is `make bench`: it measures georepl's NBD export with
// fio's nbd engine against nbdkit's file plugin serving the same backing
// file, in one run, and prints one table of medians and ratios.
//
// Set-ups: nbdkit (baseline); georepl alone (its peer is down, writes only
// mark the bitmap); protocol C with one peer; protocol A with one peer; C
// and A with two peers. All peers are daemons on this machine, so they share
// its disk and cores: two copies cost about half the disk bandwidth.
//
//	go run ./cmd/georepl/internal/benchrig -georepl bin/georepl [-runs 3] [-runtime 5s]
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
)

type workload struct {
	name string
	args []string
	// latency workloads are compared by mean completion latency, others
	// by bandwidth or IOPS.
	metric string
}

var workloads = []workload{
	{"1MiB seq write QD8", []string{"--rw=write", "--bs=1M", "--iodepth=8"}, "bw"},
	{"4KiB rand write QD32", []string{"--rw=randwrite", "--bs=4k", "--iodepth=32"}, "iops"},
	{"4KiB rand write QD1", []string{"--rw=randwrite", "--bs=4k", "--iodepth=1"}, "lat"},
}

type setup struct {
	name  string
	nodes []string          // nodes started; the first is primary
	conns map[string]string // peer -> protocol
}

var setups = []setup{
	{"georepl alone", []string{"alpha"}, map[string]string{"bravo": "C"}},
	{"georepl C, 1 peer", []string{"alpha", "bravo"}, map[string]string{"bravo": "C"}},
	{"georepl A, 1 peer", []string{"alpha", "bravo"}, map[string]string{"bravo": "A"}},
	{"georepl C+A, 2 peers", []string{"alpha", "bravo", "dr"}, map[string]string{"bravo": "C", "dr": "A"}},
}

func main() {
	bin := flag.String("georepl", "bin/georepl", "georepl binary")
	runs := flag.Int("runs", 3, "runs per measurement (the median is reported)")
	runtime := flag.Duration("runtime", 5*time.Second, "fio runtime per run")
	sizeMiB := flag.Int("size", 1024, "device size in MiB")
	flag.Parse()
	r := &rig{bin: *bin, runs: *runs, runtime: *runtime, size: int64(*sizeMiB) << 20}
	if err := r.run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

type rig struct {
	bin     string
	runs    int
	runtime time.Duration
	size    int64
	dir     string
}

type result struct {
	bw, iops, latUs float64
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

	results := map[string]map[string]result{}
	names := []string{"nbdkit file"}
	base, err := r.measureNbdkit()
	if err != nil {
		return fmt.Errorf("nbdkit: %w", err)
	}
	results["nbdkit file"] = base
	for _, s := range setups {
		res, err := r.measureGeorepl(s)
		if err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
		results[s.name] = res
		names = append(names, s.name)
	}

	fmt.Printf("\nfio --ioengine=nbd, %v per run, median of %d runs, %d MiB device, same backing file\n\n", r.runtime, r.runs, r.size>>20)
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprint(tw, "setup")
	for _, w := range workloads {
		fmt.Fprintf(tw, "\t%s", w.name)
	}
	fmt.Fprintln(tw)
	for _, n := range names {
		fmt.Fprint(tw, n)
		for _, w := range workloads {
			v, b := results[n][w.name], base[w.name]
			switch w.metric {
			case "bw":
				fmt.Fprintf(tw, "\t%.0f MB/s (%.2fx)", v.bw/1e6, v.bw/b.bw)
			case "iops":
				fmt.Fprintf(tw, "\t%.1fk IOPS (%.2fx)", v.iops/1e3, v.iops/b.iops)
			case "lat":
				fmt.Fprintf(tw, "\t%.0f µs (%.2fx)", v.latUs, v.latUs/b.latUs)
			}
		}
		fmt.Fprintln(tw)
	}
	tw.Flush()
	fmt.Println("\nratios: bandwidth and IOPS relative to nbdkit (higher is better); QD1 latency relative to nbdkit (lower is better)")
	return nil
}

// fio runs one workload r.runs times and returns the median.
func (r *rig) fio(uri string, w workload) (result, error) {
	var bws, iopss, lats []float64
	for i := 0; i < r.runs; i++ {
		args := append([]string{"--name=bench", "--ioengine=nbd", "--uri=" + uri,
			"--size=" + fmt.Sprint(r.size/2), "--time_based", "--runtime=" + fmt.Sprint(int(r.runtime.Seconds())),
			"--output-format=json", "--randrepeat=0"}, w.args...)
		out, err := exec.Command("fio", args...).Output()
		if err != nil {
			return result{}, fmt.Errorf("fio %s: %w", strings.Join(args, " "), err)
		}
		var rep struct {
			Jobs []struct {
				Write struct {
					BW   float64 `json:"bw_bytes"`
					IOPS float64 `json:"iops"`
					Lat  struct {
						Mean float64 `json:"mean"`
					} `json:"lat_ns"`
				} `json:"write"`
			} `json:"jobs"`
		}
		if err := json.Unmarshal(out[strings.IndexByte(string(out), '{'):], &rep); err != nil || len(rep.Jobs) == 0 {
			return result{}, fmt.Errorf("fio output: %v", err)
		}
		wr := rep.Jobs[0].Write
		bws, iopss, lats = append(bws, wr.BW), append(iopss, wr.IOPS), append(lats, wr.Lat.Mean/1e3)
	}
	return result{median(bws), median(iopss), median(lats)}, nil
}

func median(v []float64) float64 {
	sort.Float64s(v)
	return v[len(v)/2]
}

func (r *rig) measureNbdkit() (map[string]result, error) {
	img := filepath.Join(r.dir, "alpha.img")
	if err := makeFile(img, r.size); err != nil {
		return nil, err
	}
	sock := filepath.Join(r.dir, "nbdkit.sock")
	cmd := exec.Command("nbdkit", "-f", "-U", sock, "file", img)
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	defer stop(cmd)
	if err := waitSocket(sock); err != nil {
		return nil, err
	}
	fmt.Fprintln(os.Stderr, "measuring nbdkit file")
	res := map[string]result{}
	for _, w := range workloads {
		v, err := r.fio("nbd+unix:///?socket="+sock, w)
		if err != nil {
			return nil, err
		}
		res[w.name] = v
	}
	return res, nil
}

func (r *rig) measureGeorepl(s setup) (map[string]result, error) {
	fmt.Fprintln(os.Stderr, "measuring", s.name)
	dir, err := os.MkdirTemp(r.dir, "cluster-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	conf := filepath.Join(dir, "conf")
	os.MkdirAll(conf, 0o755)
	port := 20000 + rand.IntN(30000)
	all := []string{"alpha", "bravo", "dr"}[:1+len(s.conns)]
	var hcl strings.Builder
	fmt.Fprintf(&hcl, "resource \"r0\" {\n  protocol = \"C\"\n  net {\n    shared_secret = \"bench\"\n  }\n")
	for i, n := range all {
		// alpha uses the very file nbdkit served, as the issue asks.
		disk := filepath.Join(dir, n+".img")
		if n == "alpha" {
			disk = filepath.Join(r.dir, "alpha.img")
		}
		if err := makeFile(disk, r.size); err != nil {
			return nil, err
		}
		fmt.Fprintf(&hcl, "  node %q {\n    id = %d\n    address = \"127.0.0.1:%d\"\n    disk = %q\n    export = \"unix:%s\"\n  }\n",
			n, i, port+i, disk, filepath.Join(dir, n+".nbd"))
	}
	for p, proto := range s.conns {
		fmt.Fprintf(&hcl, "  connection \"alpha\" %q {\n    protocol = %q\n  }\n", p, proto)
	}
	hcl.WriteString("}\n")
	if err := os.WriteFile(filepath.Join(conf, "r0.hcl"), []byte(hcl.String()), 0o644); err != nil {
		return nil, err
	}
	var procs []*exec.Cmd
	defer func() {
		for _, p := range procs {
			stop(p)
		}
	}()
	for _, n := range all {
		if out, err := exec.Command(r.bin, "create-md", "--force", "--config", conf, "--node", n, "r0").CombinedOutput(); err != nil {
			return nil, fmt.Errorf("create-md %s: %v: %s", n, err, out)
		}
	}
	for _, n := range s.nodes {
		logf, _ := os.Create(filepath.Join(dir, n+".log"))
		cmd := exec.Command(r.bin, "daemon", "--config", conf, "--node", n, "--admin", filepath.Join(dir, n+".admin"), "--up", "--log-level", "warn")
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			return nil, err
		}
		procs = append(procs, cmd)
		if err := waitSocket(filepath.Join(dir, n+".admin")); err != nil {
			return nil, err
		}
	}
	cli := func(args ...string) error {
		out, err := exec.Command(r.bin, append([]string{"--admin", filepath.Join(dir, "alpha.admin")}, args...)...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("georepl %s: %v: %s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	if err := cli("primary", "--force", "r0"); err != nil {
		return nil, err
	}
	if len(s.nodes) > 1 {
		// Wait for the initial full sync so that it does not compete.
		if err := waitConnected(r.bin, filepath.Join(dir, "alpha.admin"), len(s.nodes)-1); err != nil {
			return nil, err
		}
		if err := cli("wait-sync", "--timeout", "10m", "r0"); err != nil {
			return nil, err
		}
	}
	uri := "nbd+unix:///r0?socket=" + filepath.Join(dir, "alpha.nbd")
	res := map[string]result{}
	for _, w := range workloads {
		v, err := r.fio(uri, w)
		if err != nil {
			return nil, err
		}
		res[w.name] = v
	}
	return res, nil
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
