package main

import (
	"fmt"
	"os"
	"runtime"
	"sort"
	"strings"
)

// The TLS benchmark (-tls, `make bench-tls`): protocol C with one peer
// over tcp, in plaintext and with TLS, each run of one right after a run
// of the other (the order alternating), so that a slow moment of a shared
// machine falls on both alike. Each workload's figure is the median of
// the runs' ratios TLS / plaintext: bandwidth for 1 MiB QD8 (the goal is
// at least 0.9x), mean latency for 4 KiB QD1 (at most 1.1x).
//
// Beside the ratio it prints where the CPU went, medians of the same
// runs: how many of the machine's cores were busy during a run (fio,
// both daemons and whatever else runs there), and per MiB written (1 MiB
// QD8) or per write (QD1) the CPU time fio and each daemon spent and the
// context switches each daemon made. For 1 MiB writes it also measures
// what AES-GCM costs on this CPU and prints the ceiling that cost sets:
// when the plaintext run is CPU-bound (all cores busy), bandwidth goes as
// the inverse of the CPU per MiB, and TLS adds at least a seal and an
// open of every byte, so TLS/plaintext is at most plain / (plain +
// crypto); and how much CPU TLS spent beyond the crypto itself (copies,
// system calls, scheduling). With -profile DIR, each daemon's CPU profile
// of every run is written to DIR as well.

var tlsWorkloads = []workload{workloads[0], workloads[2]}

// tlsModes names the two set-ups the benchmark compares, in order.
var tlsModes = [2]string{"plaintext", "TLS"}

func runTLSBench(bin string, runs int, r *rig) error {
	var err error
	if r.dir, err = os.MkdirTemp("", "georepl-bench-tls-"); err != nil {
		return err
	}
	defer os.RemoveAll(r.dir)
	var uris [2]string
	for i, s := range []setup{setups[1], setups[2]} {
		if s.tls != (i == 1) || s.conns["bravo"] != "C" {
			return fmt.Errorf("set-up %q is not what the TLS benchmark compares", s.name)
		}
		uri, stop, err := r.startCluster(bin, s, false)
		if err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
		defer stop()
		uris[i] = uri
	}
	fmt.Printf("protocol C, 1 peer over tcp: TLS against plaintext, fio --ioengine=nbd, %v per run, %d runs, %d MiB device, %d CPUs\n\n", r.runtime, runs, r.size>>20, runtime.NumCPU())
	for _, w := range tlsWorkloads {
		var modes [2]modeRuns
		var ratios []float64
		for run := range runs {
			var got [2]float64
			for k := range 2 {
				i := (run + k) % 2 // plaintext first in even runs, TLS first in odd ones
				res, use, err := r.fioCPU(uris[i], w, run)
				if err != nil {
					return err
				}
				got[i] = res.metric(w)
				units := res.bw * r.runtime.Seconds() / (1 << 20) // MiB written
				if w.metric == "lat" {
					units = res.iops * r.runtime.Seconds() // writes
				}
				modes[i].add(got[i], res, use, units)
			}
			ratios = append(ratios, got[1]/got[0])
			fmt.Fprintf(os.Stderr, "%s run %d: plaintext %s, TLS %s, ratio %.2f\n", w.name, run+1, show(w, got[0]), show(w, got[1]), got[1]/got[0])
		}
		goal, unit := "goal >= 0.90x", "MiB"
		if w.metric == "lat" {
			goal, unit = "goal <= 1.10x", "write"
		}
		fmt.Printf("%-20s plaintext %s, TLS %s: TLS/plaintext %.2fx (median of %d paired runs; runs: %s; %s)\n",
			w.name, show(w, median(modes[0].values)), show(w, median(modes[1].values)), median(ratios), runs, joinRatios(ratios), goal)
		var cpu [2]float64 // median CPU µs per unit, daemons and fio together
		for i, mode := range tlsModes {
			m := &modes[i]
			var each []string
			for d := range m.daemonCPU {
				each = append(each, fmt.Sprintf("%s %.0f µs, %.1f switches", r.daemons[uris[i]][d].node, median(m.daemonCPU[d]), median(m.switches[d])))
			}
			cpu[i] = median(m.totalCPU)
			fmt.Printf("%-20s   %-9s %.2f of %d cores busy; CPU per %s: %.0f µs (fio %.0f µs; %s)\n",
				"", mode, median(m.cores), runtime.NumCPU(), unit, cpu[i], median(m.fioCPU), strings.Join(each, "; "))
		}
		if w.metric == "bw" {
			if err := printCeiling(cpu); err != nil {
				return err
			}
		}
	}
	return nil
}

// modeRuns gathers one mode's runs of one workload: its metric, the cores
// busy, and per unit (MiB or write) the CPU µs of fio, of each daemon and
// of all of them, and each daemon's context switches.
type modeRuns struct {
	values, cores, fioCPU, totalCPU []float64
	daemonCPU, switches             [][]float64
}

func (m *modeRuns) add(value float64, res result, use cpuUse, units float64) {
	m.values = append(m.values, value)
	m.cores = append(m.cores, use.cores)
	m.fioCPU = append(m.fioCPU, res.cpuSec*1e6/units)
	total := res.cpuSec
	for d, sec := range use.daemons {
		if len(m.daemonCPU) <= d {
			m.daemonCPU, m.switches = append(m.daemonCPU, nil), append(m.switches, nil)
		}
		m.daemonCPU[d] = append(m.daemonCPU[d], sec*1e6/units)
		m.switches[d] = append(m.switches[d], use.switches[d]/units)
		total += sec
	}
	m.totalCPU = append(m.totalCPU, total*1e6/units)
}

// printCeiling says what the CPU allows TLS at most: when the plaintext
// run keeps the machine's cores busy, bandwidth goes as the inverse of the
// CPU each MiB costs, and TLS costs at least the record protection on top
// (sealing at the primary, opening at the secondary, both on this
// machine). cpu holds the CPU per MiB that the plaintext and the TLS runs
// measured.
func printCeiling(cpu [2]float64) error {
	seal, open, err := gcmCost()
	if err != nil {
		return fmt.Errorf("measure AES-GCM: %w", err)
	}
	crypto := seal + open
	fmt.Printf("%-20s   AES-128-GCM on this CPU: seal %.0f µs, open %.0f µs per MiB; ceiling when CPU-bound %.2fx (%.0f / (%.0f + %.0f)); TLS's CPU beyond crypto: %+.0f µs per MiB\n",
		"", seal, open, cpu[0]/(cpu[0]+crypto), cpu[0], cpu[0], crypto, cpu[1]-cpu[0]-crypto)
	return nil
}

// fioCPU runs workload w once on uri, like fio, and returns besides its
// result the CPU the machine and the cluster's daemons spent meanwhile.
func (r *rig) fioCPU(uri string, w workload, run int) (result, cpuUse, error) {
	var pids []int
	for _, d := range r.daemons[uri] {
		pids = append(pids, d.pid)
	}
	before, err := sampleCPU(pids)
	if err != nil {
		return result{}, cpuUse{}, err
	}
	stopProfiles := r.startProfiles(uri, w, run)
	res, err := r.fio(uri, w)
	stopProfiles()
	if err != nil {
		return result{}, cpuUse{}, err
	}
	after, err := sampleCPU(pids)
	if err != nil {
		return result{}, cpuUse{}, err
	}
	return res, before.until(after, runtime.NumCPU()), nil
}

func show(w workload, v float64) string {
	if w.metric == "lat" {
		return fmt.Sprintf("%.0f µs", v)
	}
	return fmt.Sprintf("%.0f MB/s", v/1e6)
}

func joinRatios(rs []float64) string {
	sorted := append([]float64(nil), rs...)
	sort.Float64s(sorted)
	parts := make([]string, len(sorted))
	for i, r := range sorted {
		parts[i] = fmt.Sprintf("%.2f", r)
	}
	return strings.Join(parts, " ")
}
