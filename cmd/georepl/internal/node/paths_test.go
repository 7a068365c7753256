package node

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/georepl/georepl/cmd/georepl/internal/checker"
	"github.com/georepl/georepl/configs"
	"github.com/georepl/georepl/core"
	"github.com/georepl/georepl/core/wire"
	"github.com/georepl/georepl/kmod/nbd"
	"github.com/georepl/georepl/transports"
	"github.com/georepl/georepl/transports/builtin"
	"github.com/georepl/georepl/transports/nodetls/nodetlstest"
)

// pathSetup is how a test's two nodes alpha (0) and dr (1) connect: over
// transport ("tcp" if empty), with TLS (certificates of one CA, required
// on the connection) or without (insecure), each node in the world of
// opts[name].
type pathSetup struct {
	transport string
	tls       bool
	opts      map[string]Options
	// single leaves the path blocks out: one path, the nodes' own
	// addresses.
	single bool
	// timeout is the connection's timeout ("1s" if empty).
	timeout string
}

// pathConfig is resource r0 under protocol C between alpha and dr, with
// two paths: addrs are alpha's and dr's addresses on path 0, then on
// path 1; path 0's are the nodes' own. The TLS files, if any, are in dir.
func pathConfig(t *testing.T, dir string, s pathSetup, addrs [4]string) string {
	t.Helper()
	transport := cmp.Or(s.transport, "tcp")
	security := "insecure = true"
	tlsBlock := map[string]string{}
	if s.tls {
		security = `tls = "required"`
		pki := nodetlstest.New(t)
		for _, name := range []string{"alpha", "dr"} {
			issued, err := pki.CA.Issue(name, time.Hour, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			files := map[string][]byte{"ca.crt": pki.CA.CertPEM, name + ".crt": issued.CertPEM, name + ".key": issued.KeyPEM}
			for file, b := range files {
				if err := os.WriteFile(filepath.Join(dir, file), b, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			tlsBlock[name] = fmt.Sprintf("tls {\n      ca = %q\n      cert = %q\n      key = %q\n    }",
				filepath.Join(dir, "ca.crt"), filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key"))
		}
	}
	paths := fmt.Sprintf(`  connection "alpha" "dr" {
    path {
      alpha = %q
      dr    = %q
    }
    path {
      alpha = %q
      dr    = %q
    }
  }
`, addrs[0], addrs[1], addrs[2], addrs[3])
	if s.single {
		paths = ""
	}
	return fmt.Sprintf(`resource "r0" {
  protocol = "C"
  net {
    transport = %q
    %s
    connect_retry = "100ms"
    ping_interval = "200ms"
    timeout = %q
  }
  node "alpha" {
    id = 0
    address = %q
    disk = %q
    %s
  }
  node "dr" {
    id = 1
    address = %q
    disk = %q
    %s
  }
%s}
`, transport, security, cmp.Or(s.timeout, "1s"), addrs[0], filepath.Join(dir, "alpha.img"), tlsBlock["alpha"], addrs[1], filepath.Join(dir, "dr.img"), tlsBlock["dr"], paths)
}

// pathCluster is pathConfig's resource in this process, on loopback:
// path 0 between the nodes' own addresses, path 1 between two more ports.
type pathCluster struct {
	dir       string
	transport string
	port      int
	logs      map[string]*syncBuffer
	daemons   map[string]*Daemon
}

func (c *pathCluster) addr(i int) string { return fmt.Sprintf("127.0.0.1:%d", c.port+i) }

func newPathCluster(t *testing.T, s pathSetup) *pathCluster {
	t.Helper()
	return newPathClusterAdjusted(t, s, nil)
}

// newPathClusterAdjusted is newPathCluster with adjust[node], if set,
// changing that node's daemon before it comes up.
func newPathClusterAdjusted(t *testing.T, s pathSetup, adjust map[string]func(*Daemon)) *pathCluster {
	t.Helper()
	builtin.Register()
	port, err := checker.FreePorts(4)
	if err != nil {
		t.Fatal(err)
	}
	c := &pathCluster{dir: t.TempDir(), transport: cmp.Or(s.transport, "tcp"), port: port, logs: map[string]*syncBuffer{}, daemons: map[string]*Daemon{}}
	src := pathConfig(t, c.dir, s, [4]string{c.addr(0), c.addr(1), c.addr(2), c.addr(3)})
	for _, name := range []string{"alpha", "dr"} {
		cfg, err := configs.Parse(filepath.Join(c.dir, "r0.hcl"), []byte(src), configs.LoadOptions{})
		if err != nil {
			t.Fatalf("%v\n%s", err, src)
		}
		c.logs[name] = &syncBuffer{}
		c.daemons[name] = startNode(t, cfg, name, 16<<20, c.logs[name], s.opts[name], adjust[name])
	}
	return c
}

// killActivePath closes the transport connection of node's active path
// to its peer, as a failed link would end it: whatever was in flight on
// it is lost.
func (c *pathCluster) killActivePath(t *testing.T, node string) {
	t.Helper()
	r := c.daemons[node].resources["r0"]
	r.mu.Lock()
	var l *link
	for _, p := range r.peers {
		l = p.conn
	}
	r.mu.Unlock()
	if l == nil {
		t.Errorf("%s has no connection to kill", node)
		return
	}
	l.current().conn.Close()
}

// closeListener stops node listening on addr, so that the path to addr
// cannot be dialled.
func (c *pathCluster) closeListener(t *testing.T, node, addr string) {
	t.Helper()
	d := c.daemons[node]
	d.mu.Lock()
	defer d.mu.Unlock()
	key := c.transport + " " + addr
	l, ok := d.listeners[key]
	if !ok {
		t.Fatalf("%s does not listen on %s", node, key)
	}
	l.Close()
	delete(d.listeners, key)
}

// TestPathFailoverKeepsState kills the active path's connection under a
// stream of protocol C writes, twice, with the first path's listener
// closed in between so that the second path must carry on: every write
// completes, the connection never drops (no resync), and dr's disk equals
// alpha's.
func TestPathFailoverKeepsState(t *testing.T) {
	c := newPathCluster(t, pathSetup{})
	alpha, dr := c.daemons["alpha"], c.daemons["dr"]
	logs := func() string { return "alpha:\n" + c.logs["alpha"].String() + "\ndr:\n" + c.logs["dr"].String() }
	waitInSync(t, alpha, logs)
	events := watchPaths(t, alpha, dr)
	logMark := map[string]int{"alpha": len(c.logs["alpha"].String()), "dr": len(c.logs["dr"].String())}

	dev, err := alpha.LocalDevice("r0")
	if err != nil {
		t.Fatal(err)
	}
	load := startWrites(dev, 1, 16<<10)
	load.wait(t, 50, logs)
	// Path 0 fails for good: its connection dies mid-write and dr no
	// longer answers on it.
	c.closeListener(t, "dr", c.addr(1))
	c.killActivePath(t, "alpha")
	load.wait(t, 200, logs)
	// Path 1 fails while path 0 is back.
	if err := dr.ensureListener(c.transport, c.addr(1)); err != nil {
		t.Fatal(err)
	}
	c.killActivePath(t, "dr")
	load.wait(t, 200, logs)
	load.stop(t)
	t.Logf("%d protocol C writes completed", load.completed.Load())
	// Every write completed under protocol C: dr has them all, now.
	checkSameData(t, alpha, c.dir, dev.Size())
	c.checkNotLost(t, logMark)
	// Path 0 was down at the first failover, path 1 at the second (or
	// path 0 answered the probes before, and the connection moved back to
	// it).
	paths, details := events.moves("alpha")
	t.Logf("alpha moved to %q: %q", paths, details)
	if len(paths) != 2 || !strings.HasPrefix(paths[0], "path 1 ") || !strings.HasPrefix(paths[1], "path 0 ") {
		t.Errorf("alpha's path events lead to %q; want path 1, then path 0", paths)
	}
	// The status shows the paths; the probes find path 1 back.
	waitUntil(t, "alpha's status shows path 0 active, path 1 standby", func() (bool, string) {
		p := peerStatus(t, alpha, "dr")
		return len(p.Paths) == 2 && p.Paths[0].State == "active" && p.Paths[1].State == "standby", fmt.Sprintf("%+v", p.Paths)
	})
}

// checkNotLost fails the test if a node's log, from its mark in
// logMark on, says it lost the connection.
func (c *pathCluster) checkNotLost(t *testing.T, logMark map[string]int) {
	t.Helper()
	for node, mark := range logMark {
		if lost := strings.Count(c.logs[node].String()[mark:], "connection lost"); lost > 0 {
			t.Errorf("%s lost the connection %d times; its log:\n%s", node, lost, c.logs[node].String()[mark:])
		}
	}
}

// holeTransport is a transport whose dialled connections can be made a
// black hole, as a link that goes down is: writes succeed and go nowhere,
// nothing more is read, and only a timeout tells.
type holeTransport struct {
	transports.Transport
	mu    sync.Mutex
	conns []*holeConn
}

func (h *holeTransport) Dial(ctx context.Context, addr string, opts transports.Options) (transports.Conn, error) {
	c, err := h.Transport.Dial(ctx, addr, opts)
	if err != nil {
		return nil, err
	}
	hc := &holeConn{Conn: c, closed: make(chan struct{})}
	h.mu.Lock()
	h.conns = append(h.conns, hc)
	h.mu.Unlock()
	return hc, nil
}

// swallowAll makes every connection dialled so far a black hole.
func (h *holeTransport) swallowAll() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, c := range h.conns {
		c.hole.Store(true)
	}
}

type holeConn struct {
	transports.Conn
	hole      atomic.Bool
	closed    chan struct{}
	closeOnce sync.Once
}

func (c *holeConn) ChannelBinding() ([]byte, error) {
	if cb, ok := c.Conn.(transports.ChannelBinding); ok {
		return cb.ChannelBinding()
	}
	return nil, nil
}

func (c *holeConn) Close() error {
	c.closeOnce.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

func (c *holeConn) Stream(ch transports.Channel) io.ReadWriter {
	return holeStream{c, c.Conn.Stream(ch)}
}

type holeStream struct {
	c *holeConn
	s io.ReadWriter
}

func (s holeStream) Write(p []byte) (int, error) {
	if s.c.hole.Load() {
		return len(p), nil
	}
	return s.s.Write(p)
}

func (s holeStream) Read(p []byte) (int, error) {
	if s.c.hole.Load() {
		<-s.c.closed
		return 0, errors.New("black hole closed")
	}
	n, err := s.s.Read(p)
	if s.c.hole.Load() {
		// Arrived as the link went down: lost.
		<-s.c.closed
		return 0, errors.New("black hole closed")
	}
	return n, err
}

// TestPathFailoverBlackHole makes alpha's connection a black hole under
// protocol C writes, as a link that goes down does: everything in flight
// both ways is lost, and only alpha's timeout notices. The connection
// continues on the other path with what was lost re-sent: every write
// completes, no resync, dr's data equals alpha's.
func TestPathFailoverBlackHole(t *testing.T) {
	builtin.Register()
	tcp, err := transports.Lookup("tcp")
	if err != nil {
		t.Fatal(err)
	}
	hole := &holeTransport{Transport: tcp}
	c := newPathCluster(t, pathSetup{opts: map[string]Options{"alpha": {Transports: func(name string) (transports.Transport, error) {
		if name != "tcp" {
			return transports.Lookup(name)
		}
		return hole, nil
	}}}})
	alpha, dr := c.daemons["alpha"], c.daemons["dr"]
	logs := func() string { return "alpha:\n" + c.logs["alpha"].String() + "\ndr:\n" + c.logs["dr"].String() }
	waitInSync(t, alpha, logs)
	events := watchPaths(t, alpha, dr)
	dev, err := alpha.LocalDevice("r0")
	if err != nil {
		t.Fatal(err)
	}
	// Writes from several goroutines, so that many are in flight when
	// the link goes down; each its own blocks.
	load := startWrites(dev, 8, 16<<10)
	time.Sleep(300 * time.Millisecond)
	c.closeListener(t, "dr", c.addr(1)) // path 0 stays down
	before := load.completed.Load()
	hole.swallowAll()
	t.Logf("link down after %d writes", before)
	time.Sleep(4 * time.Second) // the timeout (1 s), the failover, and writes on path 1
	load.stop(t)
	if load.completed.Load() < before+100 {
		t.Errorf("only %d writes completed after the link went down", load.completed.Load()-before)
	}
	t.Logf("%d writes completed, %d after the link went down", load.completed.Load(), load.completed.Load()-before)
	checkSameData(t, alpha, c.dir, dev.Size())
	paths, details := events.moves("alpha")
	t.Logf("alpha moved to %q: %q", paths, details)
	if len(paths) == 0 || !strings.HasPrefix(paths[0], "path 1 ") {
		t.Errorf("alpha did not move to path 1; its log:\n%s", c.logs["alpha"])
	}
}

// TestResumeCounts checks the numbering a resumption relies on: what the
// peer confirmed is forgotten, what it lacks is re-sent first and in
// order, before what was queued meanwhile, and counts that do not fit
// what was kept end the connection instead of continuing it.
func TestResumeCounts(t *testing.T) {
	newTestLink := func() *link {
		conn := newPipeConn()
		res := &resource{log: slog.New(slog.NewTextHandler(io.Discard, nil)), peers: map[core.NodeID]*peer{1: {
			id: 1, node: &configs.Node{Name: "peer"}, paths: []configs.Path{{"a:1", "b:1"}, {"a:2", "b:2"}}, pathStates: make([]pathState, 2),
		}}}
		l := newLink(res, 1, "peer", "test", conn, [2]*wire.Reader{wire.NewReader(conn.ours[0]), wire.NewReader(conn.ours[1])},
			wire.CompressionNone, time.Hour, time.Hour, false)
		l.rt = &retransmit{}
		close(l.started)
		return l
	}
	data := func(seq uint64) queued { return queued{f: &wire.Frame{Type: wire.TypeData, Seq: seq}} }
	l := newTestLink()
	l.pmu.Lock()
	l.rt.keep(wire.ChannelData, []queued{data(1), data(2), data(3), {f: &wire.Frame{Type: wire.TypePing}}, data(4), data(5)})
	if err := l.rt.confirm(l.res, wire.ChannelData, 2); err != nil {
		t.Fatal(err)
	}
	if err := l.rt.confirm(l.res, wire.ChannelData, 1); err != nil {
		t.Fatalf("an older confirmation: %v", err)
	}
	if err := l.rt.confirm(l.res, wire.ChannelData, 6); err == nil {
		t.Error("a confirmation of more frames than were sent was taken")
	}
	l.pmu.Unlock()
	if n := len(l.rt.kept[wire.ChannelData]); n != 3 {
		t.Fatalf("%d data frames kept after the peer confirmed 2 of 5 (the ping is not counted); want 3", n)
	}
	l.queues[wire.ChannelData].push(data(6)) // queued while suspended
	l.pathFailed(l.current(), errors.New("test"))
	if !l.isSuspended() {
		t.Fatal("a failed transport connection did not suspend the link")
	}
	conn := newPipeConn()
	pc := l.newPathConn(conn, [2]*wire.Reader{wire.NewReader(conn.ours[0]), wire.NewReader(conn.ours[1])}, 1, nil)
	resent, err := l.resume(pc, [2]uint64{3, 0})
	if err != nil {
		t.Fatal(err)
	}
	if resent != 2 {
		t.Errorf("%d frames re-sent to a peer that received 3 of 5; want 2", resent)
	}
	q := l.queues[wire.ChannelData]
	q.mu.Lock()
	var seqs []uint64
	for _, it := range q.frames {
		seqs = append(seqs, it.f.Seq)
	}
	q.mu.Unlock()
	if fmt.Sprint(seqs) != "[4 5 6]" {
		t.Errorf("queued after the resumption: data %v; want [4 5 6]", seqs)
	}
	if l.rt.sent[wire.ChannelData] != 3 || len(l.rt.kept[wire.ChannelData]) != 0 {
		t.Errorf("after the resumption %d sent, %d kept; want 3 and none (the re-sent frames are numbered again when written)",
			l.rt.sent[wire.ChannelData], len(l.rt.kept[wire.ChannelData]))
	}
	l.close(errors.New("done"))

	for _, got := range []uint64{1, 6} {
		l := newTestLink()
		l.pmu.Lock()
		l.rt.keep(wire.ChannelData, []queued{data(1), data(2), data(3), data(4), data(5)})
		l.rt.confirm(l.res, wire.ChannelData, 2)
		l.pmu.Unlock()
		l.pathFailed(l.current(), errors.New("test"))
		conn := newPipeConn()
		pc := l.newPathConn(conn, [2]*wire.Reader{wire.NewReader(conn.ours[0]), wire.NewReader(conn.ours[1])}, 1, nil)
		if _, err := l.resume(pc, [2]uint64{got, 0}); err == nil {
			t.Errorf("a peer that received %d frames, with 3 to 5 kept, was resumed", got)
		} else {
			t.Logf("received %d: %v", got, err)
		}
		l.close(errors.New("done"))
	}
}

// TestPathAckBoundsKeptBytes: a reader confirms after pathAckBytes of
// payload as well as after pathAckEvery frames, so that what the writer
// keeps for a resumption is bounded in memory with large frames too.
func TestPathAckBoundsKeptBytes(t *testing.T) {
	var rt retransmit
	for i := 1; i < pathAckBytes/(1<<20); i++ {
		if rt.received(wire.ChannelData, 1<<20) {
			t.Fatalf("confirmation due after %d MiB in %d frames", i, i)
		}
	}
	if !rt.received(wire.ChannelData, 1<<20) {
		t.Fatalf("no confirmation due after %d MiB", pathAckBytes>>20)
	}
	for i := 1; i < pathAckEvery; i++ {
		if rt.received(wire.ChannelControl, 16) {
			t.Fatalf("confirmation due after %d small frames", i)
		}
	}
	if !rt.received(wire.ChannelControl, 16) {
		t.Fatalf("no confirmation due after %d frames", pathAckEvery)
	}
}

// writeLoad is protocol C writes from several goroutines, each to its
// own region of the device, until stop.
type writeLoad struct {
	completed atomic.Int64
	stopped   chan struct{}
	wg        sync.WaitGroup
	errs      chan error
}

func startWrites(dev nbd.Device, writers int, size uint64) *writeLoad {
	w := &writeLoad{stopped: make(chan struct{}), errs: make(chan error, writers)}
	region := dev.Size() / uint64(writers)
	for i := range writers {
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			rng := rand.New(rand.NewPCG(uint64(i), 11))
			for {
				select {
				case <-w.stopped:
					return
				default:
				}
				buf := make([]byte, size)
				for j := range buf {
					buf[j] = byte(rng.Uint32())
				}
				off := uint64(i)*region + rng.Uint64N(region/size)*size
				if err := dev.WriteAt(context.Background(), buf, off, false); err != nil {
					w.errs <- fmt.Errorf("writer %d at %d: %w", i, off, err)
					return
				}
				w.completed.Add(1)
			}
		}()
	}
	return w
}

// wait waits until n more writes completed, failing the test if they do
// not within 20 s or a write fails.
func (w *writeLoad) wait(t *testing.T, n int64, why func() string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for target := w.completed.Load() + n; w.completed.Load() < target; {
		select {
		case err := <-w.errs:
			t.Fatalf("a write failed: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("writes stalled at %d: %s", w.completed.Load(), why())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// stop ends the writes and fails the test if any failed.
func (w *writeLoad) stop(t *testing.T) {
	t.Helper()
	close(w.stopped)
	w.wg.Wait()
	close(w.errs)
	for err := range w.errs {
		t.Errorf("a write failed: %v", err)
	}
}

// waitInSync makes alpha the Primary once connected to dr and waits
// until dr is in sync.
func waitInSync(t *testing.T, alpha *Daemon, logs func() string) {
	t.Helper()
	waitUntil(t, "alpha connects to dr", func() (bool, string) {
		p := peerStatus(t, alpha, "dr")
		return p.Conn == "Connected", p.Conn + "\n" + logs()
	})
	if err := alpha.resources["r0"].Primary(true); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "dr in sync", func() (bool, string) {
		p := peerStatus(t, alpha, "dr")
		return p.Repl == "Established" && p.Disk == "UpToDate" && p.OutOfSync == 0,
			fmt.Sprintf("%s %s %d\n%s", p.Repl, p.Disk, p.OutOfSync, logs())
	})
}

// checkSameData fails the test unless dr is connected, in sync, and has
// the same first size bytes as alpha (disk images in dir).
func checkSameData(t *testing.T, alpha *Daemon, dir string, size uint64) {
	t.Helper()
	p := peerStatus(t, alpha, "dr")
	if p.Conn != "Connected" || p.Repl != "Established" || p.Disk != "UpToDate" || p.OutOfSync != 0 {
		t.Errorf("dr on alpha: %s %s %s, %d bytes out of sync; want Connected Established UpToDate, 0", p.Conn, p.Repl, p.Disk, p.OutOfSync)
	}
	a, err := os.ReadFile(filepath.Join(dir, "alpha.img"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "dr.img"))
	if err != nil {
		t.Fatal(err)
	}
	for i := uint64(0); i < size; i += 4096 {
		if !bytes.Equal(a[i:i+4096], b[i:i+4096]) {
			t.Fatalf("dr's data differs from alpha's, first at block %d", i/4096)
		}
	}
}

// pathEvents gathers the path events of the daemons it watches and fails
// the test on any event that says the connection lost its state.
type pathEvents struct {
	mu     sync.Mutex
	events []Event
	rekeys []Event
}

func watchPaths(t *testing.T, daemons ...*Daemon) *pathEvents {
	pe := &pathEvents{}
	for _, d := range daemons {
		ch, cancel := d.Subscribe()
		t.Cleanup(cancel)
		go func() {
			for ev := range ch {
				switch ev.What {
				case "repl", "resync", "conn":
					t.Errorf("%s: %s %s -> %s (%s): the connection lost its state", ev.Node, ev.What, ev.Old, ev.New, ev.Detail)
				case "path":
					pe.mu.Lock()
					pe.events = append(pe.events, ev)
					pe.mu.Unlock()
				case "rekey":
					pe.mu.Lock()
					pe.rekeys = append(pe.rekeys, ev)
					pe.mu.Unlock()
				}
			}
		}()
	}
	return pe
}

// moves are the paths node's events said it moved to, and why.
func (pe *pathEvents) moves(node string) (paths []string, details []string) {
	pe.mu.Lock()
	defer pe.mu.Unlock()
	for _, ev := range pe.events {
		if ev.Node == node {
			paths = append(paths, ev.New)
			details = append(details, ev.Detail)
		}
	}
	return paths, details
}

// TestPathSwitchBack: under protocol C writes, path 0 (the preferred
// one) fails and the connection moves to path 1; once path 0 answers
// again, the connection moves back to it without being told, with
// nothing lost: no resync, no write failing, dr's data equal to alpha's.
// Over tcp and quic, each with and without TLS.
func TestPathSwitchBack(t *testing.T) {
	for _, s := range []pathSetup{{transport: "tcp"}, {transport: "tcp", tls: true}, {transport: "quic"}, {transport: "quic", tls: true}} {
		name := s.transport
		if s.tls {
			name += "-tls"
		}
		t.Run(name, func(t *testing.T) {
			c := newPathCluster(t, s)
			alpha, dr := c.daemons["alpha"], c.daemons["dr"]
			logs := func() string { return "alpha:\n" + c.logs["alpha"].String() + "\ndr:\n" + c.logs["dr"].String() }
			waitInSync(t, alpha, logs)
			checkTLSPeer := func() {
				t.Helper()
				p := peerStatus(t, alpha, "dr")
				if s.tls != (p.TLS == "required") || s.tls != (p.TLSPeer != nil && p.TLSPeer.Node == "dr") {
					t.Errorf("alpha's status shows TLS %q towards dr, peer certificate %+v", p.TLS, p.TLSPeer)
				}
			}
			checkTLSPeer()
			events := watchPaths(t, alpha, dr)
			dev, err := alpha.LocalDevice("r0")
			if err != nil {
				t.Fatal(err)
			}
			load := startWrites(dev, 4, 16<<10)
			load.wait(t, 50, logs)

			// Path 0 fails: dr no longer answers on it, and its connection
			// dies mid-write.
			c.closeListener(t, "dr", c.addr(1))
			c.killActivePath(t, "alpha")
			waitUntil(t, "alpha on path 1", func() (bool, string) {
				p := peerStatus(t, alpha, "dr")
				return len(p.Paths) == 2 && p.Paths[1].State == "active", fmt.Sprintf("%+v", p.Paths)
			})
			load.wait(t, 100, logs)

			// Path 0 is back: the connection returns to it by itself.
			if err := dr.ensureListener(c.transport, c.addr(1)); err != nil {
				t.Fatal(err)
			}
			waitUntil(t, "alpha back on path 0", func() (bool, string) {
				p := peerStatus(t, alpha, "dr")
				return len(p.Paths) == 2 && p.Paths[0].State == "active" && p.Paths[1].State == "standby", fmt.Sprintf("%+v\n%s", p.Paths, logs())
			})
			checkTLSPeer()
			load.wait(t, 100, logs)
			load.stop(t)
			t.Logf("%d protocol C writes completed", load.completed.Load())
			checkSameData(t, alpha, c.dir, dev.Size())

			paths, details := events.moves("alpha")
			t.Logf("alpha moved to %q: %q", paths, details)
			if len(paths) != 2 || !strings.HasPrefix(paths[0], "path 1 ") || !strings.HasPrefix(paths[1], "path 0 ") {
				t.Fatalf("alpha's path events lead to %q; want path 1, then path 0", paths)
			}
			if !strings.Contains(details[1], "preferred") {
				t.Errorf("the move back to path 0 says %q; want it to name the preferred path", details[1])
			}
			if drPaths, _ := events.moves("dr"); len(drPaths) != 2 {
				t.Errorf("dr's path events lead to %q; want two", drPaths)
			}
		})
	}
}
