// Package host runs transport plugins for georepl: it starts a plugin's
// binary with go-plugin, checks it, configures it, and serves it as a
// transports.Transport that the registry hands out exactly like a
// built-in one. docs/plugins.md describes plugins from the author's side;
// package plugins/internal/control the protocol.
//
// Start launches one plugin process: it checks the binary's SHA-256
// against the configured one (before go-plugin checks it again at exec
// time, through SecureConfig), runs go-plugin's handshake (magic cookie,
// control protocol version, AutoMTLS: a one-time certificate on each side,
// so only this daemon can talk to the plugin), and sends the plugin its
// configuration. Each of those failing is an error naming the plugin and
// what went wrong; none can hang, as the start is bounded by StartTimeout.
//
// Connections: Dial and Accept are control calls; the plugin hands the
// connection's sockets over and the daemon reads and writes them itself
// (see Conn). A plugin that dies therefore takes no established connection
// with it, unless the connection has no sockets and its bytes go through
// the plugin: shared-memory rings, or, the fallback, gRPC streams on the
// go-plugin connection (Config.DataPlanes says which data planes the host
// accepts). The host notices the exit (or a hang: a health check
// unanswered twice, after which it kills the process), logs it, and
// restarts the plugin
// with exponential back-off (restartMin doubling up to restartMax), while
// Dial fails with an error wrapping control.ErrPluginUnavailable, which the
// daemon retries like any failed dial. A Listener survives the restart: it
// listens again on the address it was bound to in the new process.
//
// One Plugin is one process, shared by every resource that names it; Close
// stops it. A plugin also exits by itself when the daemon's process is
// gone, even after kill -9 (it reads end of file on the hand-off socket).
package host

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health/grpc_health_v1"

	"github.com/georepl/georepl/plugins/internal/control"
	"github.com/georepl/georepl/transports"
)

// Config describes one plugin.
type Config struct {
	// Name is the transport's name, as net.transport gives it.
	Name string
	// Path is the plugin's binary; Args are its arguments (none for a
	// plugin of its own; "plugin-serve tcp" for a built-in that the
	// georepl binary serves as a plugin).
	Path string
	Args []string
	// SHA256 is the binary's expected checksum; required.
	SHA256 []byte
	// Config is handed to the plugin's Configure, as JSON; nil sends null.
	Config json.RawMessage
	// Log receives the plugin's log lines and the host's messages about
	// it, tagged plugin=Name; nil discards them.
	Log *slog.Logger
	// DataPlanes are the data planes georepl accepts for the plugin's
	// connections (DataPlaneSocket, DataPlaneRing, DataPlaneStream); nil
	// accepts all three. The plugin takes the first of socket, ring, stream
	// that it offers, this list accepts and the connection allows:
	// []string{DataPlaneStream} carries every connection on gRPC streams.
	DataPlanes []string
}

// Data planes, for Config.DataPlanes (docs/plugins.md compares them).
const (
	DataPlaneSocket = control.DataPlaneSocket
	DataPlaneRing   = control.DataPlaneRing
	DataPlaneStream = control.DataPlaneStream
)

// Timeouts and back-off. Variables so that tests can shorten them.
var (
	// StartTimeout bounds a plugin's start: the process, the handshake
	// and the Configure call.
	StartTimeout = 10 * time.Second
	// callTimeout bounds control calls that have no context of their own
	// (Listen, CloseListener).
	callTimeout = 10 * time.Second
	restartMin  = 100 * time.Millisecond
	restartMax  = 30 * time.Second
	// stableAfter is how long a plugin must have run for its next crash
	// to restart it after restartMin again.
	stableAfter = time.Minute
	// A plugin whose health check goes unanswered for pingTimeout, twice
	// in a row, is hung: the host kills it, and restarts it as any that
	// exited. The check runs every pingInterval.
	pingInterval = 5 * time.Second
	pingTimeout  = 5 * time.Second
)

// Errors of Start, for errors.Is.
var (
	ErrChecksum = errors.New("plugin binary checksum mismatch")
	ErrVersion  = errors.New("plugin speaks another control protocol version")
	ErrConfig   = errors.New("plugin rejected its configuration")
)

// State is a plugin's state, for `georepl status` and `georepl plugins`.
type State string

const (
	Running    State = "running"
	Restarting State = "restarting"
	Closed     State = "closed"
)

// Info describes a running plugin.
type Info struct {
	Name, Path, Version string
	SHA256              string
	State               State
	// LastError is why the plugin last exited or failed to restart.
	LastError string `json:",omitempty"`
	PID       int
	Restarts  int
}

// Plugin is a started plugin: a transports.Transport.
type Plugin struct {
	cfg Config
	log *slog.Logger
	// pingInterval and pingTimeout, read at Start.
	pingInterval, pingTimeout time.Duration

	mu       sync.Mutex
	gen      *generation // nil while restarting
	state    State
	lastErr  string
	restarts int
	changed  chan struct{} // closed and replaced when gen changes
	stop     chan struct{} // closed by Close
	done     chan struct{} // closed when supervise returns
}

var _ transports.Transport = (*Plugin)(nil)

// generation is one process of the plugin.
type generation struct {
	client  *plugin.Client
	ctl     *control.Client
	health  grpc_health_v1.HealthClient
	handoff *handoff
	pid     int
	version string
	started time.Time
}

// Start starts the plugin and returns it once it is configured.
func Start(cfg Config) (*Plugin, error) {
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("plugin", cfg.Name)
	if err := checkBinary(cfg); err != nil {
		return nil, err
	}
	if cfg.DataPlanes == nil {
		cfg.DataPlanes = control.DataPlanes
	}
	if err := control.CheckDataPlanes(cfg.DataPlanes); err != nil || len(cfg.DataPlanes) == 0 {
		return nil, fmt.Errorf("plugin %q: data planes %q: %v", cfg.Name, cfg.DataPlanes, err)
	}
	p := &Plugin{cfg: cfg, log: log, pingInterval: pingInterval, pingTimeout: pingTimeout, changed: make(chan struct{}), stop: make(chan struct{}), done: make(chan struct{})}
	g, err := p.launch()
	if err != nil {
		return nil, err
	}
	p.gen, p.state = g, Running
	// Both goroutines start before Start returns, so that a caller that
	// counts goroutines sees them as part of the plugin from the start.
	hung := make(chan string, 1)
	go p.watch(g, hung)
	go p.supervise(g, hung)
	log.Info("transport plugin started", "path", cfg.Path, "version", g.version, "pid", g.pid)
	return p, nil
}

// checkBinary checks that the binary exists and has the expected checksum.
func checkBinary(cfg Config) error {
	if len(cfg.SHA256) != sha256.Size {
		return fmt.Errorf("plugin %q: sha256 must be the %d-byte SHA-256 of %s, got %d bytes", cfg.Name, sha256.Size, cfg.Path, len(cfg.SHA256))
	}
	f, err := os.Open(cfg.Path)
	if err != nil {
		return fmt.Errorf("plugin %q: %w", cfg.Name, err)
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil {
		return fmt.Errorf("plugin %q: %w", cfg.Name, err)
	} else if !st.Mode().IsRegular() || st.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("plugin %q: %s is not an executable file (mode %v)", cfg.Name, cfg.Path, st.Mode())
	}
	sum, err := FileSHA256(f)
	if err != nil {
		return fmt.Errorf("plugin %q: %w", cfg.Name, err)
	}
	if !bytes.Equal(sum, cfg.SHA256) {
		return fmt.Errorf("plugin %q: %w: %s has sha256 %x, the configuration says %x", cfg.Name, ErrChecksum, cfg.Path, sum, cfg.SHA256)
	}
	return nil
}

// FileSHA256 returns the SHA-256 of r's contents.
func FileSHA256(r io.Reader) ([]byte, error) {
	h := sha256.New()
	if _, err := io.Copy(h, r); err != nil {
		return nil, err
	}
	return h.Sum(nil), nil
}

// launch starts one process of the plugin and configures it.
func (p *Plugin) launch() (*generation, error) {
	h, theirs, err := newHandoffPair(p.log)
	if err != nil {
		return nil, fmt.Errorf("plugin %q: %w", p.cfg.Name, err)
	}
	cmd := exec.Command(p.cfg.Path, p.cfg.Args...)
	cmd.ExtraFiles = []*os.File{theirs} // descriptor 3 = control.HandoffFD
	cmd.Env = []string{fmt.Sprintf("%s=%d", control.HandoffEnv, control.HandoffFD)}
	lines := lineLogger(p.log)
	client := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  control.Handshake,
		Plugins:          plugin.PluginSet{control.PluginName: &control.GRPCPlugin{}},
		Cmd:              cmd,
		SecureConfig:     &plugin.SecureConfig{Checksum: p.cfg.SHA256, Hash: sha256.New()},
		AutoMTLS:         true,
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		Logger:           newSlogger(p.log),
		StartTimeout:     StartTimeout,
		SyncStdout:       lines,
		SyncStderr:       lines,
		// Fixed windows bound what a Data stream buffers (package control).
		GRPCDialOptions: []grpc.DialOption{
			grpc.WithInitialWindowSize(control.StreamWindow), grpc.WithInitialConnWindowSize(control.ConnWindow),
		},
	})
	g, err := p.connect(client, h)
	theirs.Close()
	if err != nil {
		client.Kill()
		h.close()
		return nil, err
	}
	return g, nil
}

func (p *Plugin) connect(client *plugin.Client, h *handoff) (*generation, error) {
	rpc, err := client.Client()
	if err != nil {
		if strings.Contains(err.Error(), "incompatible API version") {
			return nil, fmt.Errorf("plugin %q (%s): %w: %v; this georepl speaks version %d: rebuild the plugin with this georepl's plugins/sdk",
				p.cfg.Name, p.cfg.Path, ErrVersion, err, control.ProtocolVersion)
		}
		return nil, fmt.Errorf("plugin %q (%s): start: %w", p.cfg.Name, p.cfg.Path, err)
	}
	raw, err := rpc.Dispense(control.PluginName)
	if err != nil {
		return nil, fmt.Errorf("plugin %q (%s): %w", p.cfg.Name, p.cfg.Path, err)
	}
	ctl := raw.(*control.Client)
	grpcClient, ok := rpc.(*plugin.GRPCClient)
	if !ok {
		return nil, fmt.Errorf("plugin %q (%s): go-plugin gave a %T, not a gRPC client", p.cfg.Name, p.cfg.Path, rpc)
	}
	ctx, cancel := context.WithTimeout(context.Background(), StartTimeout)
	defer cancel()
	cfg := p.cfg.Config
	if cfg == nil {
		cfg = json.RawMessage("null")
	}
	reply, err := ctl.Configure(ctx, &control.ConfigureRequest{Config: cfg})
	if err != nil {
		return nil, fmt.Errorf("plugin %q: %w: %w", p.cfg.Name, ErrConfig, control.FromStatus(ctx, err))
	}
	g := &generation{client: client, ctl: ctl, health: grpc_health_v1.NewHealthClient(grpcClient.Conn), handoff: h, version: reply.Version, started: time.Now()}
	if rc := client.ReattachConfig(); rc != nil {
		g.pid = rc.Pid
	}
	return g, nil
}

// lineLogger logs what the plugin writes to its standard output and error
// after go-plugin took them over.
func lineLogger(log *slog.Logger) io.Writer {
	return writerFunc(func(b []byte) (int, error) {
		for _, line := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
			log.Info(line, "stream", "stdio")
		}
		return len(b), nil
	})
}

// supervise restarts the plugin whenever its process exits, until Close;
// hung says why watch killed the current process, if it did.
func (p *Plugin) supervise(g *generation, hung chan string) {
	defer close(p.done)
	backoff := restartMin
	for {
		select {
		case <-p.stop:
			return
		case <-g.ctl.Done():
		}
		g.stop() // returns at once: the process is gone; frees go-plugin's client
		exit := fmt.Sprintf("plugin process %d exited", g.pid)
		select {
		case why := <-hung:
			exit = why
		default:
		}
		if time.Since(g.started) >= stableAfter {
			backoff = restartMin
		}
		if !p.setGen(nil, exit) {
			return
		}
		p.log.Error("transport plugin exited; restarting it", "pid", g.pid, "in", backoff)
		for {
			select {
			case <-p.stop:
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, restartMax)
			next, err := p.launch()
			if err == nil {
				g = next
				break
			}
			if !p.setGen(nil, err.Error()) {
				return
			}
			p.log.Error("transport plugin failed to restart", "err", err, "retry in", backoff)
		}
		hung = make(chan string, 1)
		go p.watch(g, hung)
		if !p.setGen(g, "") {
			g.stop() // Close came while it started
			return
		}
		p.log.Info("transport plugin restarted", "pid", g.pid, "version", g.version)
	}
}

// watch checks that g answers, and kills it (saying why on hung) when its
// health check goes unanswered twice in a row. It returns when g exits or
// the plugin is closed.
func (p *Plugin) watch(g *generation, hung chan<- string) {
	tick := time.NewTicker(p.pingInterval)
	defer tick.Stop()
	missed := 0
	for {
		select {
		case <-p.stop:
			return
		case <-g.ctl.Done():
			return
		case <-tick.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), p.pingTimeout)
		_, err := g.health.Check(ctx, &grpc_health_v1.HealthCheckRequest{Service: plugin.GRPCServiceName})
		cancel()
		if err == nil {
			missed = 0
			continue
		}
		if missed++; missed < 2 {
			continue
		}
		why := fmt.Sprintf("plugin process %d did not answer its health check for %v, twice: killed it", g.pid, p.pingTimeout)
		p.log.Error("transport plugin hangs; killing it", "pid", g.pid, "err", err)
		hung <- why
		syscall.Kill(g.pid, syscall.SIGKILL)
		return
	}
}

// setGen installs g (nil while restarting; a new g counts as a restart)
// and wakes whoever waits for a change; lastErr, if not empty, becomes the
// plugin's last error. It returns false, installing nothing, once Close
// was called.
func (p *Plugin) setGen(g *generation, lastErr string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state == Closed {
		return false
	}
	p.gen = g
	p.state = Running
	if g == nil {
		p.state = Restarting
	} else {
		p.restarts++
	}
	if lastErr != "" {
		p.lastErr = lastErr
	}
	close(p.changed)
	p.changed = make(chan struct{})
	return true
}

// running returns the current process, or an error wrapping
// control.ErrPluginUnavailable while there is none, and changed, closed
// at the next change.
func (p *Plugin) running() (*generation, <-chan struct{}, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case p.state == Closed:
		return nil, p.changed, fmt.Errorf("plugin %q is closed: %w", p.cfg.Name, control.ErrPluginUnavailable)
	case p.gen == nil:
		return nil, p.changed, fmt.Errorf("plugin %q is restarting (%s): %w", p.cfg.Name, p.lastErr, control.ErrPluginUnavailable)
	}
	return p.gen, p.changed, nil
}

// Dial asks the plugin to dial addr and takes the connection's sockets.
func (p *Plugin) Dial(ctx context.Context, addr string, opts transports.Options) (transports.Conn, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("plugin %q: dial %s: %w", p.cfg.Name, addr, err)
	}
	g, _, err := p.running()
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	id, ch := g.handoff.reserve()
	reply, err := g.ctl.Dial(ctx, &control.DialRequest{Addr: addr, Options: control.FromOptions(opts), Handoff: id, DataPlanes: p.cfg.DataPlanes})
	if err != nil {
		g.handoff.cancel(id, ch)
		return nil, fmt.Errorf("plugin %q: dial %s: %w", p.cfg.Name, addr, control.FromStatus(ctx, err))
	}
	c, err := p.takeConn(g, id, ch, reply)
	if err != nil {
		return nil, fmt.Errorf("plugin %q: dial %s: %w", p.cfg.Name, addr, err)
	}
	return c, nil
}

// takeConn makes the connection the plugin set up under hand-off id
// (whose descriptors arrive on ch, unless it is carried on streams) and
// described in reply.
func (p *Plugin) takeConn(g *generation, id uint64, ch chan []*os.File, reply *control.ConnReply) (transports.Conn, error) {
	if !slices.Contains(p.cfg.DataPlanes, reply.DataPlane) {
		g.handoff.cancel(id, ch)
		return nil, fmt.Errorf("plugin broke the protocol: it chose the data plane %q, this georepl accepts %q", reply.DataPlane, p.cfg.DataPlanes)
	}
	if reply.DataPlane == control.DataPlaneStream {
		g.handoff.cancel(id, ch)
		return openStreamConn(p.cfg.Name, g.ctl, id, reply)
	}
	files, err := g.handoff.take(id, ch)
	if err != nil {
		return nil, err
	}
	return newConn(p.cfg.Name, files, reply, g.ctl.Done())
}

// Listen asks the plugin to listen on addr.
func (p *Plugin) Listen(addr string, opts transports.Options) (transports.Listener, error) {
	g, _, err := p.running()
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", addr, err)
	}
	reply, err := p.listenOn(g, addr, opts)
	if err != nil {
		return nil, err
	}
	l := &listener{p: p, opts: opts, addr: reply.Addr, gen: g, id: reply.Listener, closed: make(chan struct{})}
	return l, nil
}

func (p *Plugin) listenOn(g *generation, addr string, opts transports.Options) (*control.ListenReply, error) {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	reply, err := g.ctl.Listen(ctx, &control.ListenRequest{Addr: addr, Options: control.FromOptions(opts)})
	if err != nil {
		return nil, fmt.Errorf("plugin %q: listen %s: %w", p.cfg.Name, addr, control.FromStatus(ctx, err))
	}
	return reply, nil
}

// Info describes the plugin.
func (p *Plugin) Info() Info {
	p.mu.Lock()
	defer p.mu.Unlock()
	info := Info{Name: p.cfg.Name, Path: p.cfg.Path, SHA256: hex.EncodeToString(p.cfg.SHA256),
		State: p.state, LastError: p.lastErr, Restarts: p.restarts}
	if p.gen != nil {
		info.PID, info.Version = p.gen.pid, p.gen.version
	}
	return info
}

// TransportState returns the plugin's state and why it last exited or
// failed to restart, for the daemon's status.
func (p *Plugin) TransportState() (state, lastErr string) {
	info := p.Info()
	return string(info.State), info.LastError
}

// Close stops the plugin process (asking it to exit, killing it after two
// seconds) and its restarts. Connections already set up stay open: their
// sockets are the daemon's. Listeners stop accepting.
func (p *Plugin) Close() error {
	p.mu.Lock()
	if p.state == Closed {
		p.mu.Unlock()
		return nil
	}
	p.state = Closed
	close(p.stop)
	close(p.changed)
	p.changed = make(chan struct{})
	g := p.gen
	p.gen = nil
	p.mu.Unlock()
	<-p.done
	if g != nil {
		g.stop()
	}
	p.log.Info("transport plugin stopped")
	return nil
}

// killTimeout bounds go-plugin's Kill: its graceful shutdown call waits
// for the process to exit, which a hung (stopped) plugin never does.
var killTimeout = 5 * time.Second

// stop stops the process: gracefully if it answers, with SIGKILL if it
// has not exited killTimeout later.
func (g *generation) stop() {
	killed := make(chan struct{})
	go func() {
		g.client.Kill()
		close(killed)
	}()
	select {
	case <-killed:
	case <-time.After(killTimeout):
		syscall.Kill(g.pid, syscall.SIGKILL)
		<-killed
	}
	g.handoff.close()
}
