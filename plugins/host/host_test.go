package host_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/georepl/georepl/plugins/host"
	"github.com/georepl/georepl/plugins/internal/control"
	"github.com/georepl/georepl/plugins/plugintest"
	"github.com/georepl/georepl/transports"
	"github.com/georepl/georepl/transports/nodetls/nodetlstest"
	"github.com/georepl/georepl/transports/quic"
	"github.com/georepl/georepl/transports/tcp"
	"github.com/georepl/georepl/transports/transporttest"
)

const (
	tcpFD        = "github.com/georepl/georepl/plugins/tcp-fd"
	tcpDSCP      = "github.com/georepl/georepl/plugins/tcp-dscp"
	shmRing      = "github.com/georepl/georepl/plugins/shmring-example"
	strict       = "github.com/georepl/georepl/plugins/host/testdata/strict"
	wrongVersion = "github.com/georepl/georepl/plugins/host/testdata/wrongversion"
	streamOnly   = "github.com/georepl/georepl/plugins/host/testdata/streamonly"
	hostile      = "github.com/georepl/georepl/plugins/host/testdata/hostilestream"
)

func TestConformanceTCPFD(t *testing.T) {
	bin := plugintest.Build(t, tcpFD)
	transporttest.Run(t, func(t *testing.T) (transports.Transport, string) {
		return onPlane(t, plugintest.Start(t, "tcp-fd", bin), host.DataPlaneSocket), "127.0.0.1:0"
	})
}

func TestConformanceShmRing(t *testing.T) {
	bin := plugintest.Build(t, shmRing)
	transporttest.Run(t, func(t *testing.T) (transports.Transport, string) {
		return onPlane(t, plugintest.Start(t, "shmring", bin), host.DataPlaneRing), "127.0.0.1:0"
	})
}

// onPlane returns tr, failing t when a connection it dials or accepts is
// not on the data plane want.
func onPlane(t testing.TB, tr transports.Transport, want string) transports.Transport {
	return planeCheck{tr, t, want}
}

type planeCheck struct {
	transports.Transport
	t    testing.TB
	want string
}

func (p planeCheck) check(c transports.Conn, err error) (transports.Conn, error) {
	if err != nil {
		return c, err
	}
	plane := "(none)"
	if dp, ok := c.(interface{ DataPlane() string }); ok {
		plane = dp.DataPlane()
	}
	if plane != p.want {
		p.t.Errorf("connection %T on data plane %q, want %q", c, plane, p.want)
	}
	return c, nil
}

func (p planeCheck) Dial(ctx context.Context, addr string, opts transports.Options) (transports.Conn, error) {
	return p.check(p.Transport.Dial(ctx, addr, opts))
}

func (p planeCheck) Listen(addr string, opts transports.Options) (transports.Listener, error) {
	l, err := p.Transport.Listen(addr, opts)
	if err != nil {
		return nil, err
	}
	return planeListener{l, p}, nil
}

type planeListener struct {
	transports.Listener
	p planeCheck
}

func (l planeListener) Accept(ctx context.Context) (transports.Conn, error) {
	return l.p.check(l.Listener.Accept(ctx))
}

// TestConformanceStream: the plugin offers only the stream data plane
// (sdk.DataPlanes), so its sockets travel on gRPC streams.
func TestConformanceStream(t *testing.T) {
	bin := plugintest.Build(t, streamOnly)
	transporttest.Run(t, func(t *testing.T) (transports.Transport, string) {
		return onPlane(t, plugintest.Start(t, "streamonly", bin), host.DataPlaneStream), "127.0.0.1:0"
	})
}

// TestConformanceStreamChosenByHost: georepl accepts only the stream data
// plane (Config.DataPlanes), so shmring-example's connections, which would
// take the rings, travel on gRPC streams.
func TestConformanceStreamChosenByHost(t *testing.T) {
	bin := plugintest.Build(t, shmRing)
	transporttest.Run(t, func(t *testing.T) (transports.Transport, string) {
		p := plugintest.StartConfig(t, host.Config{Name: "shmring", Path: bin, DataPlanes: []string{host.DataPlaneStream}})
		return onPlane(t, p, host.DataPlaneStream), "127.0.0.1:0"
	})
}

// alive reports whether process pid exists and is not a zombie.
func alive(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the command name in parentheses.
	s := string(stat)
	return !strings.HasPrefix(s[strings.LastIndexByte(s, ')')+1:], " Z")
}

func waitGone(t *testing.T, pid int, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for alive(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("plugin process %d still runs %v later", pid, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestCloseStopsThePlugin(t *testing.T) {
	bin := plugintest.Build(t, tcpFD)
	p := plugintest.Start(t, "tcp-fd", bin)
	info := p.Info()
	if info.State != host.Running || info.PID == 0 || !alive(info.PID) {
		t.Fatalf("after Start: %+v, want a running process", info)
	}
	p.Close()
	waitGone(t, info.PID, 5*time.Second)
	if _, err := p.Dial(context.Background(), "127.0.0.1:1", transports.Options{}); err == nil {
		t.Fatal("Dial on a closed plugin succeeded")
	}
}

// TestHelperHost is not a test: TestPluginExitsWithItsHost runs the test
// binary again as a host process that starts a plugin, prints its pid and
// waits to be killed.
func TestHelperHost(t *testing.T) {
	bin := os.Getenv("GEOREPL_TEST_HELPER_HOST")
	if bin == "" {
		t.Skip("helper process of TestPluginExitsWithItsHost")
	}
	p := plugintest.Start(t, "tcp-fd", bin)
	fmt.Printf("pid %d\n", p.Info().PID)
	time.Sleep(time.Minute)
}

func TestPluginExitsWithItsHost(t *testing.T) {
	bin := plugintest.Build(t, tcpFD)
	helper := exec.Command(os.Args[0], "-test.run=^TestHelperHost$", "-test.v")
	helper.Env = append(os.Environ(), "GEOREPL_TEST_HELPER_HOST="+bin)
	out, err := helper.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := helper.Start(); err != nil {
		t.Fatal(err)
	}
	defer helper.Process.Kill()
	pid := 0
	for sc := bufio.NewScanner(out); pid == 0 && sc.Scan(); {
		if s, ok := strings.CutPrefix(sc.Text(), "pid "); ok {
			pid, _ = strconv.Atoi(s)
		}
	}
	if pid == 0 || !alive(pid) {
		t.Fatalf("the helper host did not report a running plugin (pid %d)", pid)
	}
	go io.Copy(io.Discard, out)
	helper.Process.Signal(syscall.SIGKILL)
	helper.Wait()
	waitGone(t, pid, 5*time.Second)
}

func TestStartErrors(t *testing.T) {
	tcpBin := plugintest.Build(t, tcpFD)
	strictBin := plugintest.Build(t, strict)
	wrongBin := plugintest.Build(t, wrongVersion)
	notExec := filepath.Join(t.TempDir(), "not-executable")
	os.WriteFile(notExec, []byte("#!/bin/sh\n"), 0o644)
	cases := []struct {
		name   string
		cfg    host.Config
		is     error
		expect string
	}{
		{"missing binary", host.Config{Path: "/nonexistent/plugin", SHA256: make([]byte, 32)}, fs.ErrNotExist, "/nonexistent/plugin"},
		{"not executable", host.Config{Path: notExec, SHA256: plugintest.Checksum(t, notExec)}, nil, "not an executable file"},
		{"no checksum", host.Config{Path: tcpBin}, nil, "sha256 must be"},
		{"checksum mismatch", host.Config{Path: tcpBin, SHA256: plugintest.Checksum(t, strictBin)}, host.ErrChecksum, "the configuration says"},
		{"other protocol version", host.Config{Path: wrongBin, SHA256: plugintest.Checksum(t, wrongBin)}, host.ErrVersion, "Plugin version: 2"},
		{"config rejected", host.Config{Path: strictBin, SHA256: plugintest.Checksum(t, strictBin), Config: json.RawMessage(`{"colour": "red"}`)},
			host.ErrConfig, `unknown field "colour"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.Name = "x"
			start := time.Now()
			p, err := host.Start(tc.cfg)
			if err == nil {
				p.Close()
				t.Fatal("Start succeeded")
			}
			t.Logf("error (after %v): %v", time.Since(start), err)
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("error does not wrap %v", tc.is)
			}
			if !strings.Contains(err.Error(), tc.expect) || !strings.Contains(err.Error(), `plugin "x"`) {
				t.Errorf("error does not name the plugin and say %q", tc.expect)
			}
		})
	}
}

// syncBuffer is a log sink safe for the plugin's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestPluginLogsAndVersion(t *testing.T) {
	bin := plugintest.Build(t, strict)
	var logs syncBuffer
	p, err := host.Start(host.Config{Name: "strict", Path: bin, SHA256: plugintest.Checksum(t, bin),
		Config: json.RawMessage(`{"greeting": "hello from the plugin"}`),
		Log:    slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if v := p.Info().Version; v != "strict-1.2.3" {
		t.Errorf("version %q, want strict-1.2.3", v)
	}
	deadline := time.Now().Add(5 * time.Second)
	for l := logs.String(); !strings.Contains(l, "msg=configured plugin=strict") || !strings.Contains(l, `greeting="hello from the plugin"`); l = logs.String() {
		if time.Now().After(deadline) {
			t.Fatalf("the plugin's log line did not arrive tagged with its name; log:\n%s", logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestPluginRestartKeepsConnections kills the plugin process: the
// connection it set up keeps working (its sockets are the host's), the
// host restarts the plugin, and the listener accepts again on the same
// address from the new process.
func TestPluginRestartKeepsConnections(t *testing.T) {
	bin := plugintest.Build(t, tcpFD)
	p := plugintest.Start(t, "tcp-fd", bin)
	ln, err := p.Listen("127.0.0.1:0", transports.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan transports.Conn, 2)
	go func() {
		for {
			c, err := ln.Accept(context.Background())
			if err != nil {
				close(accepted)
				return
			}
			accepted <- c
		}
	}()
	dial := func() (transports.Conn, transports.Conn) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		// Right after a restart the listener may not listen again yet:
		// retry, as the daemon's dial loop does.
		d, err := p.Dial(ctx, ln.Addr().String(), transports.Options{})
		for err != nil && ctx.Err() == nil {
			time.Sleep(50 * time.Millisecond)
			d, err = p.Dial(ctx, ln.Addr().String(), transports.Options{})
		}
		if err != nil {
			t.Fatalf("Dial: %v", err)
		}
		select {
		case a := <-accepted:
			return d, a
		case <-time.After(10 * time.Second):
			t.Fatal("no connection accepted")
			return nil, nil
		}
	}
	roundTrip := func(a, b transports.Conn, msg string) {
		t.Helper()
		for _, dir := range [][2]transports.Conn{{a, b}, {b, a}} {
			if _, err := dir[0].Stream(transports.ChannelData).Write([]byte(msg)); err != nil {
				t.Fatalf("write %q: %v", msg, err)
			}
			got := make([]byte, len(msg))
			if _, err := io.ReadFull(dir[1].Stream(transports.ChannelData), got); err != nil || string(got) != msg {
				t.Fatalf("read %q: %q, %v", msg, got, err)
			}
		}
	}
	d1, a1 := dial()
	defer d1.Close()
	defer a1.Close()
	roundTrip(d1, a1, "before the kill")

	first := p.Info().PID
	syscall.Kill(first, syscall.SIGKILL)
	waitGone(t, first, 5*time.Second)
	roundTrip(d1, a1, "after the kill, on the old connection")

	deadline := time.Now().Add(10 * time.Second)
	for info := p.Info(); info.State != host.Running || info.Restarts != 1; info = p.Info() {
		if time.Now().After(deadline) {
			t.Fatalf("plugin not restarted: %+v", info)
		}
		time.Sleep(20 * time.Millisecond)
	}
	info := p.Info()
	if info.PID == first || !strings.Contains(info.LastError, "exited") {
		t.Errorf("after the restart: %+v; want a new pid and the exit as last error", info)
	}
	d2, a2 := dial()
	defer d2.Close()
	defer a2.Close()
	roundTrip(d2, a2, "on a connection from the restarted plugin")
}

// TestCloseKillsAHungPlugin: Close of a plugin that does not answer (it
// is stopped) kills it within seconds instead of waiting forever.
func TestCloseKillsAHungPlugin(t *testing.T) {
	bin := plugintest.Build(t, tcpFD)
	p := plugintest.Start(t, "tcp-fd", bin)
	pid := p.Info().PID
	syscall.Kill(pid, syscall.SIGSTOP)
	defer syscall.Kill(pid, syscall.SIGKILL)
	closed := make(chan struct{})
	go func() {
		p.Close()
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(20 * time.Second):
		t.Fatal("Close of a hung plugin still waits after 20 s")
	}
	waitGone(t, pid, 5*time.Second)
}

// TestHungPluginIsRestarted: a plugin that stops answering (SIGSTOP) is
// killed and restarted; status gives the reason.
func TestHungPluginIsRestarted(t *testing.T) {
	defer host.SetPingForTest(200*time.Millisecond, 200*time.Millisecond)()
	bin := plugintest.Build(t, tcpFD)
	p := plugintest.Start(t, "tcp-fd", bin)
	pid := p.Info().PID
	syscall.Kill(pid, syscall.SIGSTOP)
	defer syscall.Kill(pid, syscall.SIGKILL)
	deadline := time.Now().Add(10 * time.Second)
	for info := p.Info(); info.State != host.Running || info.Restarts != 1; info = p.Info() {
		if time.Now().After(deadline) {
			t.Fatalf("hung plugin not restarted: %+v", info)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if info := p.Info(); !strings.Contains(info.LastError, "did not answer") || info.PID == pid {
		t.Errorf("after the restart: %+v", info)
	}
	waitGone(t, pid, 5*time.Second)
}

// BenchmarkTransports compares the built-in tcp with the other built-ins
// (tcp with TLS, node certificates as georepl makes them; quic) and with
// the same tcp served through the plugin path (testdata/strict wraps it),
// with the tcp-fd plugin (both hand their sockets over: once set up, a
// connection is the daemon's own sockets), with shmring-example (tcp
// again, its bytes through the shared-memory rings) and with
// testdata/streamonly (tcp, its bytes on gRPC streams, the fallback). make
// bench-plugins prints medians and ratios.
func BenchmarkTransports(b *testing.B) {
	b.Run("builtin-tcp", func(b *testing.B) { transporttest.Bench(b, tcp.New(), "127.0.0.1:0") })
	b.Run("builtin-tcp-tls", func(b *testing.B) {
		pki := nodetlstest.New(b)
		alpha, bravo := pki.Identity(b, "alpha", time.Hour), pki.Identity(b, "bravo", time.Hour)
		transporttest.Bench(b, &nodetlstest.Transport{Transport: tcp.New(), Client: alpha.ClientConfig("r0", nil), Server: bravo.ServerConfig(nil)}, "127.0.0.1:0")
	})
	b.Run("builtin-quic", func(b *testing.B) { transporttest.Bench(b, quic.New(), "127.0.0.1:0") })
	b.Run("tcp-as-plugin", func(b *testing.B) {
		transporttest.Bench(b, plugintest.Start(b, "tcp", plugintest.Build(b, strict)), "127.0.0.1:0")
	})
	b.Run("tcp-fd-plugin", func(b *testing.B) {
		transporttest.Bench(b, plugintest.Start(b, "tcp-fd", plugintest.Build(b, tcpFD)), "127.0.0.1:0")
	})
	b.Run("shmring-plugin", func(b *testing.B) {
		transporttest.Bench(b, plugintest.Start(b, "shmring", plugintest.Build(b, shmRing)), "127.0.0.1:0")
	})
	b.Run("stream-plugin", func(b *testing.B) {
		transporttest.Bench(b, plugintest.Start(b, "streamonly", plugintest.Build(b, streamOnly)), "127.0.0.1:0")
	})
}

// TestGuideShowsTCPDSCP: docs/plugins.md lists plugins/tcp-dscp/main.go
// verbatim, so the guide's complete plugin is one that builds and passes
// the conformance suite (TestConformanceTCPDSCP), within the guide's 65
// lines.
func TestGuideShowsTCPDSCP(t *testing.T) {
	guide, err := os.ReadFile("../../docs/plugins.md")
	if err != nil {
		t.Fatal(err)
	}
	src, err := os.ReadFile("../tcp-dscp/main.go")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(guide), "```go\n"+string(src)+"```") {
		t.Error("docs/plugins.md does not show plugins/tcp-dscp/main.go verbatim in a go code block")
	}
	if n := bytes.Count(src, []byte("\n")); n > 65 {
		t.Errorf("plugins/tcp-dscp/main.go has %d lines; the guide promises a complete plugin in about 60", n)
	}
}

func TestConformanceTCPDSCP(t *testing.T) {
	bin := plugintest.Build(t, tcpDSCP)
	transporttest.Run(t, func(t *testing.T) (transports.Transport, string) {
		p := plugintest.StartConfig(t, host.Config{Name: "tcp-dscp", Path: bin, Config: json.RawMessage(`{"dscp": 10}`)})
		return onPlane(t, p, host.DataPlaneSocket), "127.0.0.1:0"
	})
}

// TestTCPDSCPMarks: both ends' sockets carry the configured class (the
// dialer's set by the plugin, the acceptor's inherited from its
// listener), and a class out of range is refused at start.
func TestTCPDSCPMarks(t *testing.T) {
	bin := plugintest.Build(t, tcpDSCP)
	if p, err := host.Start(host.Config{Name: "tcp-dscp", Path: bin, SHA256: plugintest.Checksum(t, bin), Config: json.RawMessage(`{"dscp": 64}`)}); err == nil {
		p.Close()
		t.Error("dscp 64 accepted")
	} else if !errors.Is(err, host.ErrConfig) || !strings.Contains(err.Error(), "dscp 64 is no DSCP class") {
		t.Errorf("dscp 64: %v; want the plugin's refusal", err)
	}
	p := plugintest.StartConfig(t, host.Config{Name: "tcp-dscp", Path: bin, Config: json.RawMessage(`{"dscp": 46}`)})
	ln, err := p.Listen("127.0.0.1:0", transports.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	accepted := make(chan transports.Conn, 1)
	go func() {
		c, _ := ln.Accept(ctx)
		accepted <- c
	}()
	d, err := p.Dial(ctx, ln.Addr().String(), transports.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	a := <-accepted
	if a == nil {
		t.Fatal("no connection accepted")
	}
	defer a.Close()
	for _, c := range []transports.Conn{d, a} {
		for _, ch := range []transports.Channel{transports.ChannelData, transports.ChannelControl} {
			sc, ok := host.SocketForTest(c, ch)
			if !ok {
				t.Fatalf("channel %d: no socket", ch)
			}
			raw, err := sc.SyscallConn()
			if err != nil {
				t.Fatal(err)
			}
			tos, serr := 0, error(nil)
			raw.Control(func(fd uintptr) { tos, serr = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_IP, syscall.IP_TOS) })
			if serr != nil || tos != 46<<2 {
				t.Errorf("%s, channel %d: IP_TOS %#x (%v), want DSCP 46 (%#x)", c.LocalAddr(), ch, tos, serr, 46<<2)
			}
		}
	}
}

// TestRingConnectionEndsWithPlugin: a connection whose bytes go through
// the plugin's rings fails when the plugin dies (on both ends, within
// seconds, not hanging); the plugin is restarted and new connections work.
func TestRingConnectionEndsWithPlugin(t *testing.T) {
	bin := plugintest.Build(t, shmRing)
	p := plugintest.Start(t, "shmring", bin)
	ln, err := p.Listen("127.0.0.1:0", transports.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	connect := func() (transports.Conn, transports.Conn) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		accepted := make(chan transports.Conn, 1)
		go func() {
			c, _ := ln.Accept(ctx)
			accepted <- c
		}()
		d, err := p.Dial(ctx, ln.Addr().String(), transports.Options{})
		for err != nil && ctx.Err() == nil {
			time.Sleep(50 * time.Millisecond)
			d, err = p.Dial(ctx, ln.Addr().String(), transports.Options{})
		}
		a := <-accepted
		if err != nil || a == nil {
			t.Fatalf("connect: %v", err)
		}
		return d, a
	}
	d, a := connect()
	defer d.Close()
	defer a.Close()
	if _, err := d.Stream(transports.ChannelData).Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(a.Stream(transports.ChannelData), make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	reads := make(chan error, 2)
	for _, c := range []transports.Conn{d, a} {
		go func() {
			_, err := c.Stream(transports.ChannelControl).Read(make([]byte, 1))
			reads <- err
		}()
	}
	pid := p.Info().PID
	syscall.Kill(pid, syscall.SIGKILL)
	for range 2 {
		select {
		case err := <-reads:
			if err == nil {
				t.Fatal("read succeeded after the plugin died")
			}
			t.Logf("read after the plugin died: %v", err)
		case <-time.After(10 * time.Second):
			t.Fatal("a read on a ring connection still blocks 10 s after its plugin died")
		}
	}
	d2, a2 := connect()
	defer d2.Close()
	defer a2.Close()
	if _, err := a2.Stream(transports.ChannelControl).Write([]byte("y")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(d2.Stream(transports.ChannelControl), make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
}

// TestNoCommonDataPlane: a plugin that offers only the stream data plane,
// to a georepl that accepts only sockets, fails each dial with an error
// naming both sides' data planes.
func TestNoCommonDataPlane(t *testing.T) {
	bin := plugintest.Build(t, streamOnly)
	p := plugintest.StartConfig(t, host.Config{Name: "streamonly", Path: bin, DataPlanes: []string{host.DataPlaneSocket}})
	ln, err := tcp.New().Listen("127.0.0.1:0", transports.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	go func() {
		if c, err := ln.Accept(ctx); err == nil {
			c.Close()
		}
	}()
	c, err := p.Dial(ctx, ln.Addr().String(), transports.Options{})
	if err == nil {
		c.Close()
		t.Fatal("Dial succeeded with no data plane both sides accept")
	}
	t.Log(err)
	if !strings.Contains(err.Error(), "georepl accepts [socket], the plugin offers [stream]") {
		t.Errorf("the error does not name both sides' data planes")
	}
}

// TestHostileStreamPlugin: what a plugin sends on the stream data plane is
// checked and bounded. A message larger than control.MaxChunk or without
// bytes fails that connection only (both channels), the plugin keeps
// running; a plugin that sends without end is stopped by flow control
// after about a window of bytes, and resumes as georepl reads.
func TestHostileStreamPlugin(t *testing.T) {
	bin := plugintest.Build(t, hostile)
	start := func(t *testing.T, send string, log *slog.Logger) *host.Plugin {
		return plugintest.StartConfig(t, host.Config{Name: "hostile", Path: bin, Log: log,
			Config: json.RawMessage(`{"send": "` + send + `"}`)})
	}
	dial := func(t *testing.T, p *host.Plugin) transports.Conn {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := p.Dial(ctx, "anywhere", transports.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	read := func(c transports.Conn, ch transports.Channel) <-chan error {
		done := make(chan error, 1)
		go func() {
			_, err := c.Stream(ch).Read(make([]byte, 1<<20))
			done <- err
		}()
		return done
	}
	for _, tc := range []struct{ send, expect string }{
		{"oversize", "ResourceExhausted"},
		{"empty", control.ErrEmptyChunk.Error()},
	} {
		t.Run(tc.send, func(t *testing.T) {
			p := start(t, tc.send, nil)
			c := dial(t, p)
			for _, ch := range []transports.Channel{transports.ChannelData, transports.ChannelControl} {
				select {
				case err := <-read(c, ch):
					t.Logf("channel %d: %v", ch, err)
					if err == nil || !strings.Contains(err.Error(), tc.expect) {
						t.Errorf("channel %d: read error %v, want one saying %s", ch, err, tc.expect)
					}
				case <-time.After(10 * time.Second):
					t.Fatalf("channel %d: read still blocks", ch)
				}
			}
			info := p.Info()
			dial(t, p) // the plugin still serves
			if after := p.Info(); after.State != host.Running || after.PID != info.PID {
				t.Errorf("the plugin changed: %+v, then %+v", info, after)
			}
		})
	}
	t.Run("flood", func(t *testing.T) {
		var logs syncBuffer
		p := start(t, "flood", slog.New(slog.NewTextHandler(&logs, nil)))
		c := dial(t, p)
		// The plugin's numbers come as JSON numbers: float64, which the
		// log shows as 1.048576e+06.
		sentRE := regexp.MustCompile(`sent=([0-9.e+]+)`)
		sent := func() int {
			m := sentRE.FindAllStringSubmatch(logs.String(), -1)
			if len(m) == 0 {
				return 0
			}
			n, err := strconv.ParseFloat(m[len(m)-1][1], 64)
			if err != nil {
				t.Fatalf("log line with sent=%s: %v", m[len(m)-1][1], err)
			}
			return int(n)
		}
		stalled := func() int {
			t.Helper()
			deadline := time.Now().Add(20 * time.Second)
			last, since := sent(), time.Now()
			for last == 0 || time.Since(since) < 500*time.Millisecond {
				if time.Now().After(deadline) {
					t.Fatalf("the plugin still sends after 20 s: %d bytes, nothing read", last)
				}
				time.Sleep(20 * time.Millisecond)
				if now := sent(); now != last {
					last, since = now, time.Now()
				}
			}
			return last
		}
		first := stalled()
		t.Logf("the plugin sent %d bytes before flow control stopped it", first)
		if bound := control.StreamWindow + 2*control.MaxChunk; first > bound {
			t.Errorf("the plugin sent %d bytes, nothing read: more than %d, the bound georepl promises", first, bound)
		}
		if _, err := io.ReadFull(c.Stream(transports.ChannelData), make([]byte, 4<<20)); err != nil {
			t.Fatal(err)
		}
		// Reading lets the plugin send again, and as much again only: the
		// window does not grow with the traffic.
		second := stalled()
		t.Logf("after georepl read 4 MiB, the plugin had sent %d bytes", second)
		if second < first+4<<20 {
			t.Errorf("after georepl read 4 MiB, the plugin had sent %d bytes in all, not %d more than %d", second, 4<<20, first)
		}
		if bound := 4<<20 + control.StreamWindow + 2*control.MaxChunk; second > bound {
			t.Errorf("after georepl read 4 MiB, the plugin had sent %d bytes: more than %d, the bound georepl promises", second, bound)
		}
	})
}
