package node

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/georepl/georepl/cmd/georepl/internal/checker"
	"github.com/georepl/georepl/configs"
	"github.com/georepl/georepl/kmod/nbd"
	"github.com/georepl/georepl/transports/builtin"
)

// demoCluster runs the demo resource r0 (alpha and bravo protocol C over
// tcp, alpha and dr protocol A over quic with lz4) in this process, with
// src changed by edit, each node in the world of opts[name], and returns
// the daemons by node name, each up.
func demoCluster(t *testing.T, edit func(dir, src string) string, opts map[string]Options) map[string]*Daemon {
	t.Helper()
	builtin.Register()
	dir := t.TempDir()
	port, err := checker.FreePorts(3)
	if err != nil {
		t.Fatal(err)
	}
	src := edit(dir, string(configs.Demo(dir, port)))
	daemons := map[string]*Daemon{}
	for _, name := range []string{"alpha", "bravo", "dr"} {
		cfg, err := configs.Parse(filepath.Join(dir, "r0.hcl"), []byte(src), configs.LoadOptions{})
		if err != nil {
			t.Fatalf("%v\n%s", err, src)
		}
		daemons[name] = startNode(t, cfg, name, 8<<20, io.Discard, opts[name], nil)
	}
	return daemons
}

// waitUntil polls cond until it holds, or fails the test with what it says.
func waitUntil(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ok, why := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %s", what, why)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func peerStatus(t *testing.T, d *Daemon, peer string) PeerStatus {
	t.Helper()
	sts, err := d.StatusNow("r0")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range sts[0].Peers {
		if p.Name == peer {
			return p
		}
	}
	t.Fatalf("no peer %s", peer)
	return PeerStatus{}
}

// scrape reads a metrics endpoint into series ("name{labels}" as
// exposed) and values.
func scrape(t *testing.T, url string) map[string]float64 {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("%s: %v", line, err)
		}
		out[line[:i]] = v
	}
	return out
}

// value is the value of the one series called name whose labels include
// every label="value" of labels; it fails the test if there is not
// exactly one.
func value(t *testing.T, m map[string]float64, name string, labels ...string) float64 {
	t.Helper()
	var found []string
	var v float64
	for s, x := range m {
		if !strings.HasPrefix(s, name+"{") && s != name {
			continue
		}
		ok := true
		for _, l := range labels {
			ok = ok && strings.Contains(s, l)
		}
		if ok {
			found = append(found, s)
			v = x
		}
	}
	if len(found) != 1 {
		t.Fatalf("%s %v: %d series match: %v", name, labels, len(found), found)
	}
	return v
}

// TestMetricsFollowTheWrites scrapes the metrics endpoints of a running
// three-node cluster while the application writes, and checks that the
// key series count exactly the writes made: writes and bytes sent to
// each peer and received by it, compression on the lz4 link, the latency
// histograms, and the RPO of the asynchronous DR peer, which tracks the
// writes made while it is disconnected (bytes, age, rpo_warning with its
// event and handler) and falls to zero once it caught up.
func TestMetricsFollowTheWrites(t *testing.T) {
	var handlerOut string
	daemons := demoCluster(t, func(dir, src string) string {
		handlerOut = filepath.Join(dir, "rpo.env")
		script := filepath.Join(dir, "rpo.sh")
		if err := os.WriteFile(script, []byte("#!/bin/sh\nenv | grep ^GEOREPL_ | sort > "+handlerOut+".tmp && mv "+handlerOut+".tmp "+handlerOut+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		src = strings.Replace(src, "  protocol = \"C\"\n", "  protocol = \"C\"\n  handlers {\n    rpo_exceeded = \"/bin/sh "+script+"\"\n  }\n", 1)
		return strings.Replace(src, "compression = \"lz4\"\n", "compression = \"lz4\"\n      rpo_warning = \"1s\"\n", 1)
	}, nil)
	alpha, bravo := daemons["alpha"], daemons["bravo"]
	ra := alpha.resources["r0"]
	events, cancel := alpha.Subscribe()
	defer cancel()
	for _, peer := range []string{"bravo", "dr"} {
		waitUntil(t, "alpha connects to "+peer, func() (bool, string) {
			p := peerStatus(t, alpha, peer)
			return p.Conn == "Connected", p.Conn
		})
	}
	// A unix export has no TLS, nor have these connections: status says
	// so and names no certificate.
	sts, err := alpha.StatusNow("r0")
	if err != nil {
		t.Fatal(err)
	}
	if e := sts[0].ExportTLS; e == nil || e.Mode != "off" {
		t.Errorf("alpha's export TLS in status: %+v, want off", e)
	}
	if p := peerStatus(t, alpha, "bravo"); p.TLS != "off" || p.TLSPeer != nil {
		t.Errorf("alpha's status of bravo: tls %q, peer certificate %+v; want off and none", p.TLS, p.TLSPeer)
	}
	start := time.Now()
	if err := ra.Primary(true); err != nil {
		t.Fatal(err)
	}
	for _, peer := range []string{"bravo", "dr"} {
		waitUntil(t, peer+" in sync", func() (bool, string) {
			p := peerStatus(t, alpha, peer)
			return p.Repl == "Established" && p.Disk == "UpToDate" && p.OutOfSync == 0, fmt.Sprintf("%s %s %d out of sync", p.Repl, p.Disk, p.OutOfSync)
		})
	}
	t.Logf("initial sync: %v", time.Since(start))
	urls := map[string]string{}
	for name, d := range map[string]*Daemon{"alpha": alpha, "bravo": bravo} {
		bound, stop, err := d.ServeMetrics("127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer stop()
		urls[name] = "http://" + bound.String() + "/metrics"
	}
	// The endpoints serve the status the resources last published (every
	// 250 ms): publish first, or a snapshot may miss what the resync did
	// last, and count it among the writes below.
	fresh := func(d *Daemon, url string) map[string]float64 {
		t.Helper()
		if _, err := d.StatusNow("r0"); err != nil {
			t.Fatal(err)
		}
		return scrape(t, url)
	}
	before, bravoBefore := fresh(alpha, urls["alpha"]), fresh(bravo, urls["bravo"])
	if v := value(t, before, "georepl_resource_role", `role="Primary"`); v != 1 {
		t.Fatalf("alpha's role Primary series is %v", v)
	}

	dev, err := alpha.LocalDevice("r0")
	if err != nil {
		t.Fatal(err)
	}
	const block = 4096
	write := func(off uint64, fill byte, size int) {
		t.Helper()
		buf := dev.(nbd.WriteBuffers).WriteBuffer(size)
		copy(buf, bytes.Repeat([]byte{fill}, size))
		if err := dev.WriteAt(context.Background(), buf, off, false); err != nil {
			t.Fatal(err)
		}
	}
	// 64 small writes, then one large enough to be compressed on its own
	// (small ones are compressed only when they queue up in a batch).
	const n, big = 64, 256 << 10
	for i := range n {
		write(uint64(i)*64<<10, byte(i+1), block)
	}
	bigAt := time.Now()
	write(4<<20, 0x77, big)
	const writes, payload = n + 1, n*block + big
	waitUntil(t, "the async peer acknowledges", func() (bool, string) {
		p := peerStatus(t, alpha, "dr")
		return p.Unacked == 0 && p.RPO != nil && p.RPO.Bytes == 0, fmt.Sprintf("%d unacked, rpo %+v", p.Unacked, p.RPO)
	})
	delta := func(before, after map[string]float64, name string, labels ...string) float64 {
		return value(t, after, name, labels...) - value(t, before, name, labels...)
	}
	var after, bravoAfter map[string]float64
	waitUntil(t, "the snapshot shows every write", func() (bool, string) {
		after, bravoAfter = fresh(alpha, urls["alpha"]), fresh(bravo, urls["bravo"])
		d := delta(bravoBefore, bravoAfter, "georepl_peer_writes_received_total", `peer="alpha"`)
		return d == writes, fmt.Sprintf("bravo received %v writes", d)
	})
	for _, peer := range []string{"bravo", "dr"} {
		p := `peer="` + peer + `"`
		if d := delta(before, after, "georepl_peer_writes_sent_total", p); d != writes {
			t.Errorf("writes sent to %s: %v, want %d", peer, d, writes)
		}
		if d := delta(before, after, "georepl_peer_data_sent_bytes_total", p); d != payload {
			t.Errorf("payload bytes sent to %s: %v, want %d", peer, d, payload)
		}
		if d := delta(before, after, "georepl_peer_write_ack_latency_seconds_count", p); d != writes {
			t.Errorf("acknowledgements timed for %s: %v, want %d", peer, d, writes)
		}
		if v := value(t, after, "georepl_peer_rpo_bytes", p); v != 0 {
			t.Errorf("%s's RPO after it acknowledged everything: %v bytes", peer, v)
		}
	}
	if d := delta(before, after, "georepl_peer_link_sent_bytes_total", `peer="bravo"`); d < payload {
		t.Errorf("bytes on the uncompressed link to bravo: %v, want at least %d", d, payload)
	}
	if d := delta(before, after, "georepl_peer_link_sent_bytes_total", `peer="dr"`); d >= payload-big/2 {
		t.Errorf("bytes on the lz4 link to dr: %v for %d payload bytes of repeated bytes; compression did not show", d, payload)
	}
	if d := delta(before, after, "georepl_app_write_latency_seconds_count"); d != writes {
		t.Errorf("application writes timed: %v, want %d", d, writes)
	}
	if d := delta(before, after, "georepl_local_write_latency_seconds_count"); d != writes {
		t.Errorf("local writes timed on alpha: %v, want %d", d, writes)
	}
	if d := delta(bravoBefore, bravoAfter, "georepl_local_write_latency_seconds_count"); d != writes {
		t.Errorf("local writes timed on bravo: %v, want %d", d, writes)
	}
	if d := delta(before, after, "georepl_disk_written_bytes_total"); d != payload {
		t.Errorf("disk bytes written on alpha: %v, want %d", d, payload)
	}
	if d := delta(before, after, "georepl_activity_log_transactions_total"); d < 1 {
		t.Errorf("activity-log transactions for writes over %d extents: %v", n, d)
	}
	if v := value(t, after, "georepl_peer_replication_state", `peer="dr"`, `state="Established"`); v != 1 {
		t.Errorf("dr's Established series: %v", v)
	}

	// The DR peer is cut off: what alpha writes now is what a loss of
	// alpha would lose, and the RPO says so.
	if err := ra.Disconnect("dr"); err != nil {
		t.Fatal(err)
	}
	cut := time.Now()
	const m = 10
	for i := range m {
		write(uint64(i)*block+(6<<20), 0xEE, block)
	}
	written := time.Now()
	var rpo map[string]float64
	waitUntil(t, "rpo_warning crossed", func() (bool, string) {
		rpo = scrape(t, urls["alpha"])
		v := value(t, rpo, "georepl_peer_rpo_exceeded", `peer="dr"`)
		return v == 1, fmt.Sprintf("rpo_exceeded %v, rpo %vs", v, value(t, rpo, "georepl_peer_rpo_seconds", `peer="dr"`))
	})
	// The last write before the cut (the large one) counts too unless
	// dr acknowledged the barrier after it in time: without that barrier
	// it may sit in dr's volatile cache, so the cut marks it.
	rpoBytes := value(t, rpo, "georepl_peer_rpo_bytes", `peer="dr"`)
	if rpoBytes != m*block && rpoBytes != m*block+big {
		t.Errorf("dr's RPO: %v bytes, want the %d written since it left (plus %d of the last write before)", rpoBytes, m*block, big)
	}
	// The scrape reads the last snapshot (every 250 ms, later on a loaded
	// machine): its age is at most a fresh status's, which the clock
	// bounds: by the cut, or, when the last write before the cut counts,
	// by that write (seconds before the cut on a loaded machine).
	scraped := value(t, rpo, "georepl_peer_rpo_seconds", `peer="dr"`)
	age := peerStatus(t, alpha, "dr").RPO.AgeSeconds
	oldest, what := cut, "since it left"
	if rpoBytes == m*block+big {
		oldest, what = bigAt, "since the last write before it left"
	}
	if hi := time.Since(oldest).Seconds() + 0.1; age < 1 || age > hi {
		t.Errorf("dr's RPO: %.3fs, want from 1s (rpo_warning) to %.3fs (%s)", age, hi, what)
	}
	if lo := time.Since(written).Seconds() - 0.3; age < lo {
		t.Errorf("dr's RPO: %.3fs, younger than the writes (%.3fs ago)", age, lo+0.3)
	}
	if scraped < 1 || scraped > age+0.05 {
		t.Errorf("dr's RPO scraped: %.3fs, want from 1s (rpo_warning) to %.3fs (now)", scraped, age)
	}
	if v := value(t, rpo, "georepl_peer_rpo_bytes", `peer="bravo"`); v != 0 {
		t.Errorf("bravo's RPO: %v bytes", v)
	}
	var text bytes.Buffer
	sts, _ = alpha.Status("r0")
	WriteStatus(&text, sts)
	if !strings.Contains(text.String(), fmt.Sprintf("%s not on the peer EXCEEDS rpo_warning 1s", HumanBytes(uint64(rpoBytes)))) {
		t.Errorf("status does not show dr's RPO:\n%s", text.String())
	}
	waitUntil(t, "the rpo_exceeded handler runs", func() (bool, string) {
		b, err := os.ReadFile(handlerOut)
		if err != nil {
			return false, err.Error()
		}
		env := string(b)
		for _, want := range []string{"GEOREPL_EVENT=rpo-exceeded", "GEOREPL_PEER=dr", "GEOREPL_RESOURCE=r0", fmt.Sprintf("GEOREPL_RPO_BYTES=%d", uint64(rpoBytes)), "GEOREPL_RPO_WARNING_SECONDS=1.000", "GEOREPL_RPO_SECONDS=1."} {
			if !strings.Contains(env, want) {
				return false, fmt.Sprintf("no %s in:\n%s", want, env)
			}
		}
		return true, ""
	})

	// Reconnected, the resync catches dr up and the RPO falls to zero.
	if err := ra.Connect("dr", false); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "dr caught up", func() (bool, string) {
		m := scrape(t, urls["alpha"])
		b, s := value(t, m, "georepl_peer_rpo_bytes", `peer="dr"`), value(t, m, "georepl_peer_rpo_seconds", `peer="dr"`)
		return b == 0 && s == 0 && value(t, m, "georepl_peer_rpo_exceeded", `peer="dr"`) == 0, fmt.Sprintf("rpo %v bytes, %vs", b, s)
	})
	seen := map[string]bool{}
	for !seen["rpo-ok"] {
		select {
		case ev := <-events:
			if ev.Peer == "dr" {
				seen[ev.What] = true
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("no rpo-ok event for dr; saw %v", seen)
		}
	}
	if !seen["rpo-exceeded"] {
		t.Errorf("no rpo-exceeded event for dr before rpo-ok; saw %v", seen)
	}
}
