package main

// The WAN benchmark (`make bench-wan`, -wan): two daemons in two network
// namespaces joined by a veth pair shaped by tc tbf (100 Mbit/s by
// default), as for the resync benchmark, replicating under protocol A.
// fio writes 1 MiB blocks through alpha's export at queue depth 4 for
// long enough to fill max_buffer (64 MiB, the default), after which the
// application can go no faster than the link carries its writes; what is
// measured is that steady state: the rate at which bravo writes replicated
// data to its disk, and the bytes that crossed the link for it, over eight
// seconds. Each transport (tcp, quic) runs with and without LZ4, on data
// fio makes 60 % compressible and on random data, so that the table shows
// what compression buys on each and what QUIC costs against TCP.

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

type wanVariant struct {
	transport, compression string
	data                   string // a key of wanData
}

func (v wanVariant) String() string {
	return fmt.Sprintf("%s %s %s", v.transport, v.compression, v.data)
}

// wanData are fio's buffer options for each kind of data; refill_buffers
// makes fio write new contents each time rather than one buffer over and
// over, which compression would see through.
var wanData = map[string][]string{
	"60% compressible": {"--refill_buffers", "--buffer_compress_percentage=60"},
	"random":           {"--refill_buffers"},
}

var wanVariants = func() []wanVariant {
	var vs []wanVariant
	for _, data := range []string{"60% compressible", "random"} {
		for _, tr := range []string{"tcp", "quic"} {
			for _, c := range []string{"none", "lz4"} {
				vs = append(vs, wanVariant{tr, c, data})
			}
		}
	}
	return vs
}()

// wanRun is one run's steady state, in bytes per second: the replicated
// data bravo wrote, and what crossed the link for it.
type wanRun struct {
	data, wire float64
	peakRSS    string // alpha's, with max_buffer full
}

const (
	wanDeviceSize = 64 << 20
	wanWarmup     = 4 * time.Second // max_buffer fills in under a second at this rate
	wanWindow     = 8 * time.Second
)

func runWANBench(bin string, runs, rateMbit int) error {
	dir, net, done, err := shapedLink("wan", rateMbit)
	if err != nil {
		return err
	}
	defer done()
	medians := map[wanVariant]wanRun{}
	for _, v := range wanVariants {
		var data, wire []float64
		var peaks []string
		for i := range runs {
			fmt.Fprintf(os.Stderr, "%s: run %d of %d\n", v, i+1, runs)
			m, err := wanOnce(bin, dir, net, v)
			if err != nil {
				return fmt.Errorf("%s: %w", v, err)
			}
			data, wire, peaks = append(data, m.data), append(wire, m.wire), append(peaks, m.peakRSS)
		}
		medians[v] = wanRun{median(data), median(wire), strings.Join(peaks, ", ")}
	}

	link := float64(rateMbit) * 1e6 / 8
	fmt.Printf("\nprotocol A, 1 MiB writes at QD4 through the export, max_buffer 64 MiB, between two network namespaces\n")
	fmt.Printf("over a veth shaped by tc tbf to %d Mbit/s (%.1f MB/s); steady state over %v after %v; medians of %d runs\n\n",
		rateMbit, link/1e6, wanWindow, wanWarmup, runs)
	fmt.Printf("%-18s %-5s %-5s %14s %8s %14s %10s %12s  %s\n", "data", "via", "lz4", "replicated", "of link", "on the wire", "vs none", "quic vs tcp", "primary's peak RSS")
	for _, v := range wanVariants {
		m := medians[v]
		// ratio is m's rate over other's, blank when -only left other out.
		ratio := func(other wanVariant) string {
			if o, ok := medians[other]; ok && o.data > 0 {
				return fmt.Sprintf("%.2fx", m.data/o.data)
			}
			return ""
		}
		quicVsTCP := ""
		if v.transport == "quic" {
			quicVsTCP = ratio(wanVariant{"tcp", v.compression, v.data})
		}
		fmt.Printf("%-18s %-5s %-5s %9.1f MB/s %7.2fx %9.1f MB/s %10s", v.data, v.transport, v.compression,
			m.data/1e6, m.data/link, m.wire/1e6, ratio(wanVariant{v.transport, "none", v.data}))
		fmt.Printf(" %12s  %s\n", quicVsTCP, m.peakRSS)
	}
	fmt.Println("\n\"replicated\": application data bravo wrote per second; \"on the wire\": what bravo received for it")
	fmt.Println("(frames after compression, before TCP/UDP and IP headers); \"of link\": replicated over the link rate;")
	fmt.Println("\"vs none\": against the same transport without compression; \"quic vs tcp\": against tcp, same compression;")
	fmt.Println("peak RSS: the primary daemon's VmHWM in each run, its buffer for the peer full")
	return nil
}

// wanOnce runs variant v once on fresh disks and metadata.
func wanOnce(bin, scratch string, net *benchNet, v wanVariant) (wanRun, error) {
	dir, err := os.MkdirTemp(scratch, "run-")
	if err != nil {
		return wanRun{}, err
	}
	defer os.RemoveAll(dir)
	var disks [2]string
	for i, name := range []string{"alpha", "bravo"} {
		disks[i] = filepath.Join(dir, name+".img")
		if err := makeFile(disks[i], wanDeviceSize); err != nil {
			return wanRun{}, err
		}
	}
	settings := fmt.Sprintf("  protocol = \"A\"\n  net {\n    shared_secret = \"bench\"\n    transport = %q\n    compression = %q\n  }\n",
		v.transport, v.compression)
	pair, err := startPair(bin, dir, net, settings, disks)
	if err != nil {
		return wanRun{}, err
	}
	defer pair.stop()
	cli, procs := pair.cli, pair.procs
	if _, err := cli("alpha", "primary", "--force", "r0"); err != nil {
		return wanRun{}, err
	}
	if _, err := cli("alpha", "wait-sync", "--timeout", "5m", "r0"); err != nil {
		return wanRun{}, err
	}

	// bravo's disk writes and received bytes, from its status.
	sample := func() (written, received uint64, err error) {
		out, err := cli("bravo", "status", "--json", "r0")
		if err != nil {
			return 0, 0, err
		}
		var sts []struct {
			DiskWritten uint64 `json:"disk_written_bytes"`
			Peers       []struct {
				BytesRecv uint64 `json:"bytes_received"`
			} `json:"peers"`
		}
		if err := json.Unmarshal(out, &sts); err != nil || len(sts) == 0 || len(sts[0].Peers) == 0 {
			return 0, 0, fmt.Errorf("bravo's status: %v: %s", err, out)
		}
		return sts[0].DiskWritten, sts[0].Peers[0].BytesRecv, nil
	}
	runtime := wanWarmup + wanWindow + 2*time.Second
	fio := exec.Command("fio", append([]string{"--name=wan", "--ioengine=nbd",
		"--uri=nbd+unix:///r0?socket=" + filepath.Join(dir, "alpha.nbd"),
		"--rw=write", "--bs=1M", "--iodepth=4", "--size=" + fmt.Sprint(wanDeviceSize/2),
		"--time_based", "--runtime=" + fmt.Sprint(int(runtime.Seconds())), "--output-format=json"}, wanData[v.data]...)...)
	fio.Dir = dir
	var fioOut strings.Builder
	fio.Stdout, fio.Stderr = &fioOut, &fioOut
	if err := fio.Start(); err != nil {
		return wanRun{}, err
	}
	fioDone := make(chan error, 1)
	go func() { fioDone <- fio.Wait() }()
	measure := func() (wanRun, error) {
		select {
		case err := <-fioDone:
			return wanRun{}, fmt.Errorf("fio ended early: %v: %s", err, fioOut.String())
		case <-time.After(wanWarmup):
		}
		w0, r0, err := sample()
		if err != nil {
			return wanRun{}, err
		}
		t0 := time.Now()
		time.Sleep(wanWindow)
		w1, r1, err := sample()
		if err != nil {
			return wanRun{}, err
		}
		secs := time.Since(t0).Seconds()
		return wanRun{float64(w1-w0) / secs, float64(r1-r0) / secs, peakRSS(procs[0].Process.Pid)}, nil
	}
	m, err := measure()
	if err != nil {
		fio.Process.Kill()
		<-fioDone
		return wanRun{}, err
	}
	if err := <-fioDone; err != nil {
		return wanRun{}, fmt.Errorf("fio: %v: %s", err, fioOut.String())
	}
	return m, nil
}
