package node

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/georepl/georepl/configs"
	"github.com/georepl/georepl/kmod/nbd"
)

// adjustCluster is demoCluster with the source it started from, so that a
// test can write the next version of the configuration.
func adjustCluster(t *testing.T) (map[string]*Daemon, func(edit func(string) string) *configs.Config) {
	t.Helper()
	var dir, src string
	daemons := demoCluster(t, func(d, s string) string {
		dir, src = d, s
		return s
	}, nil)
	next := func(edit func(string) string) *configs.Config {
		t.Helper()
		s := edit(src)
		cfg, err := configs.Parse(filepath.Join(dir, "r0.hcl"), []byte(s), configs.LoadOptions{})
		if err != nil {
			t.Fatalf("%v\n%s", err, s)
		}
		return cfg
	}
	return daemons, next
}

// connectionNet adds lines to the alpha-dr connection's net block.
func connectionNet(lines string) func(string) string {
	return func(s string) string {
		return strings.Replace(s, "compression = \"lz4\"\n", "compression = \"lz4\"\n"+lines+"\n", 1)
	}
}

func connected(t *testing.T, d *Daemon, peer string) {
	t.Helper()
	waitUntil(t, "connected to "+peer, func() (bool, string) {
		p := peerStatus(t, d, peer)
		return p.Conn == "Connected" && p.Repl == "Established", p.Conn + " " + p.Repl
	})
}

// TestAdjustLiveSettings changes every setting that applies at once, and
// those that wait for the next connection, on a Primary replicating to
// both peers: each is reported, in effect (the engine's and the
// driver's), the connections stay up (the same link objects), writes go
// on, and a second adjust with the same files changes nothing.
func TestAdjustLiveSettings(t *testing.T) {
	daemons, next := adjustCluster(t)
	alpha := daemons["alpha"]
	ra := alpha.resources["r0"]
	for _, p := range []string{"bravo", "dr"} {
		connected(t, alpha, p)
	}
	if err := ra.Primary(true); err != nil {
		t.Fatal(err)
	}
	dev, err := alpha.LocalDevice("r0")
	if err != nil {
		t.Fatal(err)
	}
	write := func(off uint64) {
		buf := dev.(nbd.WriteBuffers).WriteBuffer(64 << 10)
		rand.Read(buf)
		if err := dev.WriteAt(context.Background(), buf, off, false); err != nil {
			t.Fatal(err)
		}
	}
	write(0)
	links := map[string]*link{}
	ra.mu.Lock()
	for _, p := range ra.peers {
		links[p.node.Name] = p.conn
	}
	ra.mu.Unlock()

	cfg := next(func(s string) string {
		s = connectionNet(`      max_buffer = "8MiB"
      on_congestion = "pull-ahead"
      csums = "xxh64"
      resync_rate = "10MiB"
      resync_min_app_share = 0.5
      connect_retry = "2s"
      rpo_warning = "5s"
      ping_interval = "3s"
      timeout = "20s"
      compression = "none"`)(s)
		s = strings.Replace(s, "compression = \"lz4\"\n", "", 1)
		return strings.Replace(s, "  net {\n", "  handlers {\n    rpo_exceeded = \"/bin/true rpo\"\n  }\n\n  net {\n", 1)
	})
	lines, err := alpha.Adjust(cfg, "r0", false)
	if err != nil {
		t.Fatal(err)
	}
	out := strings.Join(lines, "\n")
	t.Logf("adjust:\n%s", out)
	for _, want := range []string{
		"peer dr: net.max_buffer", "peer dr: net.on_congestion", "peer dr: net.csums", "peer dr: net.resync_rate",
		"peer dr: net.resync_min_app_share", "peer dr: net.connect_retry", "peer dr: net.rpo_warning", "handlers",
	} {
		if !strings.Contains(out, want) || !strings.Contains(lineWith(out, want), ": applied") {
			t.Errorf("no line %q ending applied", want)
		}
	}
	for _, want := range []string{"peer dr: net.ping_interval", "peer dr: net.timeout", "peer dr: net.compression"} {
		if !strings.Contains(lineWith(out, want), "from the next connection") {
			t.Errorf("line %q does not say it waits for the next connection", lineWith(out, want))
		}
	}
	if strings.Contains(out, "peer bravo") {
		t.Errorf("a change reported for bravo, whose connection did not change")
	}

	dr := ra.peers[2]
	if got := dr.link().Net.MaxBuffer; got != 8<<20 {
		t.Errorf("dr's max_buffer in the driver: %d", got)
	}
	if got := ra.handlers.Load().RPOExceeded; len(got) != 2 || got[1] != "rpo" {
		t.Errorf("handlers after adjust: %q", got)
	}
	st := peerStatus(t, alpha, "dr")
	if st.MaxBuffer != 8<<20 || st.RPO == nil || st.RPO.WarningSeconds != 5 {
		t.Errorf("status of dr after adjust: max_buffer %d, rpo %+v", st.MaxBuffer, st.RPO)
	}
	ra.mu.Lock()
	for _, p := range ra.peers {
		if p.conn != links[p.node.Name] {
			t.Errorf("the connection to %s was replaced by adjust", p.node.Name)
		}
	}
	ra.mu.Unlock()
	write(64 << 10)

	again, err := alpha.Adjust(cfg, "r0", false)
	if err != nil || len(again) != 0 {
		t.Errorf("adjust with the files already applied: %q, %v; want nothing", again, err)
	}
}

func lineWith(out, s string) string {
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, s) {
			return l
		}
	}
	return ""
}

// TestBufferBudgetFollowsAdjust: a daemon is told the sum of its
// connections' max_buffer at start, and again after an adjust changed one
// (the daemon bounds its memory by it).
func TestBufferBudgetFollowsAdjust(t *testing.T) {
	var dir, src string
	var budget atomic.Int64
	daemons := demoCluster(t, func(d, s string) string {
		dir, src = d, s
		return s
	}, map[string]Options{"alpha": {BufferBudget: budget.Store}})
	if got, want := budget.Load(), int64(2*64<<20); got != want {
		t.Fatalf("budget at start: %d, want %d (two connections of the default 64 MiB)", got, want)
	}
	cfg, err := configs.Parse(filepath.Join(dir, "r0.hcl"), []byte(connectionNet(`      max_buffer = "8MiB"`)(src)), configs.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := daemons["alpha"].Adjust(cfg, "r0", false); err != nil {
		t.Fatal(err)
	}
	if got, want := budget.Load(), int64(64<<20+8<<20); got != want {
		t.Errorf("budget after dr's max_buffer became 8 MiB: %d, want %d", got, want)
	}
}

// TestAdjustRefusesWhileUp: each setting that cannot change while the
// resource runs is refused, named with the file:line that sets it and
// what to do; nothing of the same adjust is applied, not even the fields
// that could have been.
func TestAdjustRefusesWhileUp(t *testing.T) {
	daemons, next := adjustCluster(t)
	alpha := daemons["alpha"]
	ra := alpha.resources["r0"]
	connected(t, alpha, "dr")
	cases := []struct {
		name, field string
		edit        func(string) string
	}{
		{"block size", "disk.block_size", func(s string) string {
			return strings.Replace(s, "  net {\n", "  disk {\n    block_size = \"8KiB\"\n  }\n\n  net {\n", 1)
		}},
		{"al extents", "disk.al_extents", func(s string) string {
			return strings.Replace(s, "  net {\n", "  disk {\n    al_extents = 100\n  }\n\n  net {\n", 1)
		}},
		{"quorum", "quorum", func(s string) string {
			return strings.Replace(s, "protocol = \"C\"\n", "protocol = \"C\"\n  quorum = \"majority\"\n", 1)
		}},
		{"own disk", "this node: disk", func(s string) string {
			return strings.Replace(s, "alpha.img", "alpha2.img", 1)
		}},
		{"own export", "this node: export", func(s string) string {
			return strings.Replace(s, "alpha.nbd.sock", "alpha2.nbd.sock", 1)
		}},
		{"peer address", "peer bravo: address", func(s string) string {
			i := strings.Index(s, "node \"bravo\"")
			j := i + strings.Index(s[i:], "127.0.0.1:")
			return s[:j] + "127.0.0.2" + s[j+len("127.0.0.1"):]
		}},
		{"transport", "peer dr: net.transport", func(s string) string {
			return strings.Replace(s, "transport   = \"quic\"", "transport   = \"tcp\"", 1)
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := next(func(s string) string { return connectionNet(`      max_buffer = "8MiB"`)(c.edit(s)) })
			lines, err := alpha.Adjust(cfg, "r0", false)
			if err == nil {
				t.Fatalf("adjust applied %q", lines)
			}
			msg := err.Error()
			t.Log(msg)
			if !strings.Contains(msg, c.field) || !strings.Contains(msg, "r0.hcl:") || !strings.Contains(msg, "georepl down r0") || !strings.Contains(msg, "nothing applied") {
				t.Errorf("the refusal does not name %s, its file:line and what to do: %v", c.field, err)
			}
			if got := ra.peers[2].link().Net.MaxBuffer; got == 8<<20 {
				t.Error("max_buffer applied although the same adjust was refused")
			}
		})
	}
	// A node added: its id and address are new.
	cfg := next(func(s string) string {
		i := strings.Index(s, "  connection ")
		return s[:i] + "  node \"extra\" {\n    id = 7\n    address = \"127.0.0.1:1\"\n    disk = \"/nonexistent\"\n  }\n\n" + s[i:]
	})
	if _, err := alpha.Adjust(cfg, "r0", false); err == nil || !strings.Contains(err.Error(), "node extra") {
		t.Errorf("a node added while up: %v", err)
	}
}

// TestAdjustProtocol: a connection's protocol does not change while the
// peer is connected (writes in flight were sent under the old one); once
// disconnected it changes, and the connection comes back under the new
// protocol and replicates.
func TestAdjustProtocol(t *testing.T) {
	daemons, next := adjustCluster(t)
	alpha := daemons["alpha"]
	ra := alpha.resources["r0"]
	connected(t, alpha, "bravo")
	if err := ra.Primary(true); err != nil {
		t.Fatal(err)
	}
	dev, err := alpha.LocalDevice("r0")
	if err != nil {
		t.Fatal(err)
	}
	written := map[uint64][]byte{}
	write := func(off uint64) {
		buf := dev.(nbd.WriteBuffers).WriteBuffer(64 << 10)
		rand.Read(buf)
		written[off] = append([]byte(nil), buf...)
		if err := dev.WriteAt(context.Background(), buf, off, false); err != nil {
			t.Fatal(err)
		}
	}
	write(0)
	cfg := next(func(s string) string {
		return strings.Replace(s, "  connection \"alpha\" \"dr\" {", "  connection \"alpha\" \"bravo\" {\n    protocol = \"B\"\n  }\n\n  connection \"alpha\" \"dr\" {", 1)
	})
	if _, err := alpha.Adjust(cfg, "r0", true); err == nil || !strings.Contains(err.Error(), "peer bravo: protocol") || !strings.Contains(err.Error(), "georepl disconnect r0 bravo") {
		t.Fatalf("dry run of a protocol change while connected: %v", err)
	}
	if _, err := alpha.Adjust(cfg, "r0", false); err == nil {
		t.Fatal("protocol changed while connected")
	}
	if got := peerStatus(t, alpha, "bravo").Protocol; got != "C" {
		t.Fatalf("after the refusal bravo's protocol is %s", got)
	}
	if err := ra.Disconnect("bravo"); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "alpha disconnects bravo", func() (bool, string) {
		p := peerStatus(t, alpha, "bravo")
		return p.Conn != "Connected", p.Conn
	})
	write(1 << 20) // bravo misses it: marked, resynchronised later
	lines, err := alpha.Adjust(cfg, "r0", false)
	if err != nil {
		t.Fatal(err)
	}
	if l := lineWith(strings.Join(lines, "\n"), "peer bravo: protocol"); !strings.Contains(l, "C -> B") {
		t.Errorf("adjust said %q", lines)
	}
	// bravo's files say the same, applied while alpha keeps away.
	waitUntil(t, "bravo sees alpha gone", func() (bool, string) {
		p := peerStatus(t, daemons["bravo"], "alpha")
		return p.Conn != "Connected", p.Conn
	})
	if _, err := daemons["bravo"].Adjust(cfg, "r0", false); err != nil {
		t.Fatal(err)
	}
	if err := ra.Connect("bravo", false); err != nil {
		t.Fatal(err)
	}
	connected(t, alpha, "bravo")
	if got := peerStatus(t, alpha, "bravo").Protocol; got != "B" {
		t.Fatalf("after reconnecting bravo's protocol is %s", got)
	}
	write(2 << 20) // under protocol B
	waitUntil(t, "bravo in sync", func() (bool, string) {
		p := peerStatus(t, alpha, "bravo")
		return p.Repl == "Established" && p.Disk == "UpToDate" && p.OutOfSync == 0 && p.Unacked == 0,
			fmt.Sprintf("%s %s, %d out of sync, %d unacknowledged", p.Repl, p.Disk, p.OutOfSync, p.Unacked)
	})
	// bravo's disk holds every write, the one it missed included.
	img, err := os.Open(daemons["bravo"].lookup("r0").self.Disk)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	for off, want := range written {
		got := make([]byte, len(want))
		if _, err := img.ReadAt(got, int64(off)); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("bravo's disk at %d differs from what alpha wrote", off)
		}
	}
}

// TestAdjustDownResource: a resource that is down on this node takes
// every change, refused ones included, at its next up.
func TestAdjustDownResource(t *testing.T) {
	daemons, next := adjustCluster(t)
	dr := daemons["dr"]
	if err := dr.resources["r0"].Down(); err != nil {
		t.Fatal(err)
	}
	cfg := next(func(s string) string {
		return strings.Replace(s, "  net {\n", "  disk {\n    flushes = true\n  }\n\n  net {\n", 1)
	})
	lines, err := dr.Adjust(cfg, "all", false)
	if err != nil {
		t.Fatal(err)
	}
	if l := lineWith(strings.Join(lines, "\n"), "disk.flushes"); !strings.Contains(l, "next up") {
		t.Errorf("adjust of a down resource said %q", lines)
	}
	r := dr.lookup("r0")
	if !r.cfg.Disk.Flushes {
		t.Fatal("the resource was not replaced")
	}
	if err := r.Up(); err != nil {
		t.Fatal(err)
	}
	connected(t, dr, "alpha")
}

// TestAdjustRotatesTLS: adjust reads the node's TLS files again (as SIGHUP
// does): new connections get the new certificate, the established
// connection stays up.
func TestAdjustRotatesTLS(t *testing.T) {
	c := newTLSCluster(t, "tcp")
	for _, n := range tlsNodes {
		c.start(t, n, nil)
	}
	c.waitConnected(t, "alpha", "bravo")
	bravo := c.daemons["bravo"]
	before := bravo.identity("r0").Leaf
	c.writeFiles(t, "bravo", c.pki, "bravo", 365*24*time.Hour)
	lines, err := bravo.Adjust(c.config(t, "bravo"), "all", false)
	if err != nil {
		t.Fatal(err)
	}
	if l := lineWith(strings.Join(lines, "\n"), "TLS files read again"); l == "" {
		t.Errorf("adjust said %q", lines)
	}
	c.checkRotated(t, before, "adjust")
}

// TestAdjustAddsAndRemovesResources: with all, a resource new in the files
// is added down (and comes up), and one gone from them is removed once
// down; while up its removal is refused.
func TestAdjustAddsAndRemovesResources(t *testing.T) {
	daemons, next := adjustCluster(t)
	alpha := daemons["alpha"]
	var r1 string
	withR1 := next(func(s string) string {
		r1 = strings.NewReplacer(`resource "r0"`, `resource "r1"`, ".img", "-r1.img", ".nbd.sock", "-r1.nbd.sock").Replace(s)
		for id, n := range []string{"alpha", "bravo", "dr"} {
			i := strings.Index(r1, "node \""+n+"\"")
			j := i + strings.Index(r1[i:], "127.0.0.1:") + len("127.0.0.1:")
			k := j + strings.Index(r1[j:], "\"")
			r1 = r1[:j] + fmt.Sprint(id+1) + r1[k:] // r1 stays down: it never listens
		}
		return s + "\n" + r1
	})
	lines, err := alpha.Adjust(withR1, "all", false)
	if err != nil {
		t.Fatal(err)
	}
	if l := lineWith(strings.Join(lines, "\n"), "r1: new resource"); l == "" {
		t.Fatalf("adjust all said %q", lines)
	}
	st, err := alpha.Status("r1")
	if err != nil || st[0].Up {
		t.Fatalf("r1 after adjust: %+v, %v; want it down", st, err)
	}

	without := next(func(s string) string { return s + "\n" + strings.Replace(r1, `resource "r1"`, `resource "r2"`, 1) })
	// r1 is down and goes, r2 comes: nothing is refused.
	if _, err := alpha.Adjust(without, "all", false); err != nil {
		t.Fatal(err)
	}
	if _, err := alpha.resource("r1"); err == nil {
		t.Error("r1 is still there after it left the files")
	}
	if _, err := alpha.resource("r2"); err != nil {
		t.Errorf("r2 was not added: %v", err)
	}
	// r0 is up: removing it is refused, and nothing else of that adjust
	// happens (r2 stays).
	onlyR1 := next(func(string) string { return r1 })
	if _, err := alpha.Adjust(onlyR1, "all", false); err == nil || !strings.Contains(err.Error(), "georepl down r0") {
		t.Errorf("removing r0 while up: %v", err)
	}
	if _, err := alpha.resource("r2"); err != nil {
		t.Errorf("a refused adjust removed r2: %v", err)
	}
}

// TestAdjustRefusesFieldsItDoesNotKnow: a configuration field that no
// table of adjust names (one added later, such as a connection's paths)
// is refused while up, never ignored.
func TestAdjustRefusesFieldsItDoesNotKnow(t *testing.T) {
	type block struct {
		Known, Skipped int
		Added          []string
	}
	a, b := block{1, 1, nil}, block{2, 2, []string{"10.0.0.1:7789"}}
	got := map[string]liveness{}
	diffFields(&a, &b, map[string]setting{"Known": {"known", live}}, []string{"Skipped"}, func(s setting, _, _ any) {
		got[s.hcl] = s.how
	})
	if len(got) != 2 || got["known"] != live || got["Added"] != refused {
		t.Errorf("diffFields found %v; want known live, Added refused, Skipped skipped", got)
	}
}
