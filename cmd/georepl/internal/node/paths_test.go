package node

import (
	"bytes"
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
	"github.com/georepl/georepl/transports"
	"github.com/georepl/georepl/transports/builtin"
)

// pathCluster is resource r0 on alpha (0, the Primary) and dr (1) under
// protocol C over tcp, with two paths on loopback: path 0 between the
// nodes' own addresses, path 1 between two more ports.
type pathCluster struct {
	dir     string
	port    int
	logs    map[string]*syncBuffer
	daemons map[string]*Daemon
}

func (c *pathCluster) addr(i int) string { return fmt.Sprintf("127.0.0.1:%d", c.port+i) }

func newPathCluster(t *testing.T, opts map[string]Options) *pathCluster {
	t.Helper()
	builtin.Register()
	port, err := checker.FreePorts(4)
	if err != nil {
		t.Fatal(err)
	}
	c := &pathCluster{dir: t.TempDir(), port: port, logs: map[string]*syncBuffer{}, daemons: map[string]*Daemon{}}
	src := fmt.Sprintf(`resource "r0" {
  protocol = "C"
  net {
    transport = "tcp"
    insecure = true
    connect_retry = "100ms"
    ping_interval = "200ms"
    timeout = "1s"
  }
  node "alpha" {
    id = 0
    address = %q
    disk = %q
  }
  node "dr" {
    id = 1
    address = %q
    disk = %q
  }
  connection "alpha" "dr" {
    path {
      alpha = %q
      dr    = %q
    }
    path {
      alpha = %q
      dr    = %q
    }
  }
}
`, c.addr(0), filepath.Join(c.dir, "alpha.img"), c.addr(1), filepath.Join(c.dir, "dr.img"),
		c.addr(0), c.addr(1), c.addr(2), c.addr(3))
	for _, name := range []string{"alpha", "dr"} {
		cfg, err := configs.Parse(filepath.Join(c.dir, "r0.hcl"), []byte(src), configs.LoadOptions{})
		if err != nil {
			t.Fatalf("%v\n%s", err, src)
		}
		rc, _ := cfg.Resource("r0")
		self, _ := rc.Node(name)
		if err := os.WriteFile(self.Disk, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(self.Disk, 16<<20); err != nil {
			t.Fatal(err)
		}
		if _, err := CreateMetadata(rc, self, false); err != nil {
			t.Fatal(err)
		}
		logs := &syncBuffer{}
		d, err := NewDaemon(cfg, name, slog.New(slog.NewTextHandler(logs, nil)), opts[name])
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { d.Close() })
		if err := d.UpAll(); err != nil {
			t.Fatal(err)
		}
		c.logs[name], c.daemons[name] = logs, d
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
	l, ok := d.listeners["tcp "+addr]
	if !ok {
		t.Fatalf("%s does not listen on %s", node, addr)
	}
	l.Close()
	delete(d.listeners, "tcp "+addr)
}

// TestPathFailoverKeepsState kills the active path's connection under a
// stream of protocol C writes, twice, with the first path's listener
// closed in between so that the second path must carry on: every write
// completes, the connection never drops (no resync), and dr's disk equals
// alpha's.
func TestPathFailoverKeepsState(t *testing.T) {
	c := newPathCluster(t, nil)
	alpha, dr := c.daemons["alpha"], c.daemons["dr"]
	waitUntil(t, "alpha connects to dr", func() (bool, string) {
		p := peerStatus(t, alpha, "dr")
		return p.Conn == "Connected", p.Conn
	})
	if err := alpha.resources["r0"].Primary(true); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "dr in sync", func() (bool, string) {
		p := peerStatus(t, alpha, "dr")
		return p.Repl == "Established" && p.Disk == "UpToDate" && p.OutOfSync == 0,
			fmt.Sprintf("%s %s %d\nalpha:\n%s\ndr:\n%s", p.Repl, p.Disk, p.OutOfSync, c.logs["alpha"], c.logs["dr"])
	})
	var events []Event
	var evMu sync.Mutex
	for _, d := range []*Daemon{alpha, dr} {
		ch, cancel := d.Subscribe()
		defer cancel()
		go func() {
			for ev := range ch {
				evMu.Lock()
				events = append(events, ev)
				evMu.Unlock()
			}
		}()
	}
	logMark := map[string]int{"alpha": len(c.logs["alpha"].String()), "dr": len(c.logs["dr"].String())}

	dev, err := alpha.LocalDevice("r0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		writes  atomic.Int64
		stop    = make(chan struct{})
		done    = make(chan struct{})
		failure error
	)
	go func() {
		defer close(done)
		rng := rand.New(rand.NewPCG(1, 2))
		for {
			select {
			case <-stop:
				return
			default:
			}
			size := uint64(4<<10) << rng.IntN(5)
			off := rng.Uint64N(dev.Size()/size) * size
			buf := make([]byte, size)
			for i := range buf {
				buf[i] = byte(rng.Uint32())
			}
			if err := dev.WriteAt(context.Background(), buf, off, false); err != nil {
				failure = fmt.Errorf("write %d of %d bytes at %d: %w", writes.Load(), size, off, err)
				return
			}
			writes.Add(1)
		}
	}()
	waitWrites := func(n int64) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for target := writes.Load() + n; writes.Load() < target; {
			select {
			case <-done:
				t.Fatalf("the writer stopped: %v", failure)
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("writes stalled at %d; alpha's log:\n%s", writes.Load(), c.logs["alpha"].String()[logMark["alpha"]:])
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitWrites(50)
	// Path 0 fails for good: its connection dies mid-write and dr no
	// longer answers on it.
	c.closeListener(t, "dr", c.addr(1))
	c.killActivePath(t, "alpha")
	waitWrites(200)
	// Path 1 fails while path 0 is back.
	if err := dr.ensureListener("tcp", c.addr(1)); err != nil {
		t.Fatal(err)
	}
	c.killActivePath(t, "dr")
	waitWrites(200)
	close(stop)
	<-done
	if failure != nil {
		t.Fatal(failure)
	}
	t.Logf("%d protocol C writes completed", writes.Load())

	p := peerStatus(t, alpha, "dr")
	if p.Conn != "Connected" || p.Repl != "Established" || p.Disk != "UpToDate" || p.OutOfSync != 0 {
		t.Errorf("dr on alpha after the failovers: %s %s %s, %d bytes out of sync; want Connected Established UpToDate, 0", p.Conn, p.Repl, p.Disk, p.OutOfSync)
	}
	// Every write completed under protocol C: dr has them all, now.
	size := dev.Size()
	a, err := os.ReadFile(filepath.Join(c.dir, "alpha.img"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(c.dir, "dr.img"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a[:size], b[:size]) {
		for i := uint64(0); i < size; i += 4096 {
			if !bytes.Equal(a[i:i+4096], b[i:i+4096]) {
				t.Fatalf("dr's data differs from alpha's, first at block %d", i/4096)
			}
		}
	}
	for node, mark := range logMark {
		if lost := strings.Count(c.logs[node].String()[mark:], "connection lost"); lost > 0 {
			t.Errorf("%s lost the connection %d times; its log:\n%s", node, lost, c.logs[node].String()[mark:])
		}
	}
	evMu.Lock()
	defer evMu.Unlock()
	var alphaPaths []string
	for _, ev := range events {
		switch ev.What {
		case "repl", "resync", "conn":
			t.Errorf("%s: %s %s -> %s (%s): the failover cost the connection's state", ev.Node, ev.What, ev.Old, ev.New, ev.Detail)
		case "path":
			t.Logf("%s: %s -> %s: %s", ev.Node, ev.Old, ev.New, ev.Detail)
			if ev.Node == "alpha" {
				alphaPaths = append(alphaPaths, ev.New)
			}
		}
	}
	// Path 0 was down at the first failover, path 1 at the second.
	if len(alphaPaths) != 2 || !strings.HasPrefix(alphaPaths[0], "path 1 ") || !strings.HasPrefix(alphaPaths[1], "path 0 ") {
		t.Errorf("alpha's path events lead to %q; want path 1, then path 0", alphaPaths)
	}
	// The status shows the paths; the probes find path 1 back.
	waitUntil(t, "alpha's status shows path 0 active, path 1 standby", func() (bool, string) {
		p := peerStatus(t, alpha, "dr")
		return len(p.Paths) == 2 && p.Paths[0].State == "active" && p.Paths[1].State == "standby", fmt.Sprintf("%+v", p.Paths)
	})
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
	c := newPathCluster(t, map[string]Options{"alpha": {Transports: func(name string) (transports.Transport, error) {
		if name != "tcp" {
			return transports.Lookup(name)
		}
		return hole, nil
	}}})
	alpha, dr := c.daemons["alpha"], c.daemons["dr"]
	waitUntil(t, "alpha connects to dr", func() (bool, string) {
		p := peerStatus(t, alpha, "dr")
		return p.Conn == "Connected", p.Conn
	})
	if err := alpha.resources["r0"].Primary(true); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "dr in sync", func() (bool, string) {
		p := peerStatus(t, alpha, "dr")
		return p.Repl == "Established" && p.Disk == "UpToDate" && p.OutOfSync == 0,
			fmt.Sprintf("%s %s %d\nalpha:\n%s\ndr:\n%s", p.Repl, p.Disk, p.OutOfSync, c.logs["alpha"], c.logs["dr"])
	})
	events, cancel := alpha.Subscribe()
	defer cancel()
	drEvents, drCancel := dr.Subscribe()
	defer drCancel()
	dev, err := alpha.LocalDevice("r0")
	if err != nil {
		t.Fatal(err)
	}
	// Writes from several goroutines, so that many are in flight when
	// the link goes down; each its own blocks.
	const writers, size = 8, 16 << 10
	var wg sync.WaitGroup
	var completed atomic.Int64
	stop := make(chan struct{})
	errs := make(chan error, writers)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			region := dev.Size() / writers
			for {
				select {
				case <-stop:
					return
				default:
				}
				buf := make([]byte, size)
				for i := range buf {
					buf[i] = byte(rng.Uint32())
				}
				off := uint64(w)*region + rng.Uint64N(region/size)*size
				if err := dev.WriteAt(context.Background(), buf, off, false); err != nil {
					errs <- err
					return
				}
				completed.Add(1)
			}
		}()
	}
	time.Sleep(300 * time.Millisecond)
	c.closeListener(t, "dr", c.addr(1)) // path 0 stays down
	before := completed.Load()
	hole.swallowAll()
	t.Logf("link down after %d writes", before)
	time.Sleep(4 * time.Second) // the timeout (1 s), the failover, and writes on path 1
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("a write failed: %v", err)
	}
	if completed.Load() < before+100 {
		t.Errorf("only %d writes completed after the link went down", completed.Load()-before)
	}
	t.Logf("%d writes completed, %d after the link went down", completed.Load(), completed.Load()-before)
	p := peerStatus(t, alpha, "dr")
	if p.Conn != "Connected" || p.Repl != "Established" || p.Disk != "UpToDate" || p.OutOfSync != 0 {
		t.Errorf("dr on alpha after the failover: %s %s %s, %d bytes out of sync", p.Conn, p.Repl, p.Disk, p.OutOfSync)
	}
	sz := dev.Size()
	a, _ := os.ReadFile(filepath.Join(c.dir, "alpha.img"))
	b, _ := os.ReadFile(filepath.Join(c.dir, "dr.img"))
	if !bytes.Equal(a[:sz], b[:sz]) {
		t.Errorf("dr's data differs from alpha's")
	}
	moved := false
	for _, ch := range []<-chan Event{events, drEvents} {
	drain:
		for {
			select {
			case ev := <-ch:
				switch ev.What {
				case "repl", "resync", "conn":
					t.Errorf("%s: %s %s -> %s (%s): the failover cost the connection's state", ev.Node, ev.What, ev.Old, ev.New, ev.Detail)
				case "path":
					t.Logf("%s: %s -> %s: %s", ev.Node, ev.Old, ev.New, ev.Detail)
					moved = moved || ev.Node == "alpha" && strings.HasPrefix(ev.New, "path 1 ")
				}
			default:
				break drain
			}
		}
	}
	if !moved {
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
	pc := l.newPathConn(conn, [2]*wire.Reader{wire.NewReader(conn.ours[0]), wire.NewReader(conn.ours[1])}, 1)
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
		pc := l.newPathConn(conn, [2]*wire.Reader{wire.NewReader(conn.ours[0]), wire.NewReader(conn.ours[1])}, 1)
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
