package main

import (
	"fmt"
	"os"
	"sort"
	"strings"
)

// The TLS benchmark (-tls, `make bench-tls`): protocol C with one peer
// over tcp, in plaintext and with TLS, each run of one right after a run
// of the other (the order alternating), so that a slow moment of a shared
// machine falls on both alike. Each workload's figure is the median of
// the runs' ratios TLS / plaintext: bandwidth for 1 MiB QD8 (the goal is
// at least 0.9x), mean latency for 4 KiB QD1 (at most 1.1x).

var tlsWorkloads = []workload{workloads[0], workloads[2]}

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
	fmt.Printf("protocol C, 1 peer over tcp: TLS against plaintext, fio --ioengine=nbd, %v per run, %d runs, %d MiB device\n\n", r.runtime, runs, r.size>>20)
	for _, w := range tlsWorkloads {
		var plain, secure, ratios []float64
		for run := range runs {
			var got [2]float64
			for k := range 2 {
				i := (run + k) % 2 // plaintext first in even runs, TLS first in odd ones
				res, err := r.fio(uris[i], w)
				if err != nil {
					return err
				}
				got[i] = res.metric(w)
			}
			plain, secure = append(plain, got[0]), append(secure, got[1])
			ratios = append(ratios, got[1]/got[0])
			fmt.Fprintf(os.Stderr, "%s run %d: plaintext %s, TLS %s, ratio %.2f\n", w.name, run+1, show(w, got[0]), show(w, got[1]), got[1]/got[0])
		}
		goal := "goal >= 0.90x"
		if w.metric == "lat" {
			goal = "goal <= 1.10x"
		}
		fmt.Printf("%-20s plaintext %s, TLS %s: TLS/plaintext %.2fx (median of %d paired runs; runs: %s; %s)\n",
			w.name, show(w, median(plain)), show(w, median(secure)), median(ratios), runs, joinRatios(ratios), goal)
	}
	return nil
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
