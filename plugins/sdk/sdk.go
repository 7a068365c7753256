// Package sdk turns a transports.Transport into a georepl transport plugin:
// a separate binary that georepl starts, configures and uses exactly like a
// built-in transport. docs/plugins.md is the author's guide.
//
// The author implements transports.Transport (Dial, Listen, the Listener
// and the Conn with its channels), as the built-in transports do, and
// serves it from main:
//
//	func main() { sdk.Serve(mytransport.New()) }
//
// # Data plane
//
// The plugin sets connections up; bulk data does not pay a control call
// per frame. The SDK picks one of three data planes per connection, the
// first that the connection allows, the plugin offers (all three, unless
// Serve is given DataPlanes) and georepl accepts:
//
//   - Socket hand-off: when every stream of the Conn is backed by a kernel
//     socket and says so by implementing syscall.Conn (*net.TCPConn,
//     *net.UnixConn and the streams of the built-in tcp transport do), the
//     SDK hands the sockets to georepl, which reads and writes them itself
//     at the speed of a built-in, and closes the Conn in the plugin. A
//     stream must then hold no bytes in user space (whatever the transport
//     read ahead of the replication data would be lost), and Close after
//     the hand-off must only release the plugin's descriptors, not shut
//     the sockets down (net.Conn's Close does exactly that).
//   - Shared-memory rings: otherwise (RDMA, a user-space stack, QUIC) the
//     SDK creates a ring per channel and direction in shared memory, hands
//     them to georepl, and moves the bytes between the rings and the
//     Conn's streams until either side closes.
//   - gRPC streams, the fallback: when the rings cannot be made (no memfd)
//     or are not offered or accepted, each channel's bytes travel on a
//     gRPC stream of the plugin's go-plugin connection, which the SDK
//     moves to and from the Conn's streams.
//
// Connections on rings or streams end if the plugin dies.
//
// A Conn that implements transports.ChannelBinding keeps it: the SDK sends
// the binding along with the connection.
//
// # Optional interfaces
//
// A transport that implements Configurer receives the plugin block's config
// attribute before any other call; an error refuses the configuration and
// georepl reports it against the block. A transport that implements
// Versioner reports its version to `georepl plugins`; otherwise the main
// module's version from the build information is shown.
//
// # Logging and lifetime
//
// Logger returns a logger whose lines arrive in georepl's log, tagged with
// the plugin's name. A plugin exits when georepl stops it, and by itself as
// soon as georepl's process is gone (even after kill -9).
package sdk

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"syscall"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/georepl/georepl/plugins/internal/control"
	"github.com/georepl/georepl/plugins/internal/ring"
	"github.com/georepl/georepl/transports"
)

// Configurer is implemented by transports that take configuration. config
// is the plugin block's config attribute as JSON (null without one).
type Configurer interface {
	Configure(config json.RawMessage) error
}

// Versioner is implemented by transports that report their own version.
type Versioner interface {
	Version() string
}

// stderr is the plugin's standard error as georepl started it, before
// go-plugin redirects os.Stderr: georepl reads log lines from it.
var stderr = os.Stderr

// Logger returns a logger whose records go to georepl's log, tagged with
// the plugin's name, at their level.
func Logger() *slog.Logger { return logger }

var logger = slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{
	Level: slog.LevelDebug,
	// go-plugin reads hclog's JSON: @level, @message, @timestamp.
	ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
		if len(groups) > 0 {
			return a
		}
		switch a.Key {
		case slog.TimeKey:
			return slog.String("@timestamp", a.Value.Time().Format("2006-01-02T15:04:05.000000Z07:00"))
		case slog.LevelKey:
			return slog.String("@level", hclog.LevelFromString(a.Value.String()).String())
		case slog.MessageKey:
			return slog.String("@message", a.Value.String())
		}
		return a
	},
}))

// Data planes, for DataPlanes.
const (
	DataPlaneSocket = control.DataPlaneSocket
	DataPlaneRing   = control.DataPlaneRing
	DataPlaneStream = control.DataPlaneStream
)

// Option changes how Serve serves a transport.
type Option func(*server)

// DataPlanes limits the data planes the SDK offers georepl for this
// plugin's connections; without it, all three. DataPlanes(DataPlaneStream)
// carries every connection over gRPC streams: the portable choice, where
// descriptors cannot be passed or shared memory is not allowed, at a cost
// in speed (docs/plugins.md has the numbers).
func DataPlanes(planes ...string) Option {
	return func(s *server) { s.planes = planes }
}

// Serve serves t as a transport plugin until georepl stops the plugin,
// then returns. It exits the process when the plugin was not started by
// georepl, and when georepl's process ends.
func Serve(t transports.Transport, opts ...Option) {
	if os.Getenv(control.MagicCookieKey) != control.MagicCookieValue || os.Getenv(control.HandoffEnv) == "" {
		fmt.Fprintln(stderr, "This is a georepl transport plugin: georepl starts it when a configuration's plugin block names it. It is not meant to be run by hand.")
		os.Exit(1)
	}
	s := &server{t: t, planes: control.DataPlanes, listeners: map[uint64]transports.Listener{}, streams: map[uint64]*streamConn{}}
	for _, o := range opts {
		o(s)
	}
	if err := control.CheckDataPlanes(s.planes); err != nil || len(s.planes) == 0 {
		fmt.Fprintf(stderr, "georepl transport plugin: sdk.DataPlanes%q: %v\n", s.planes, err)
		os.Exit(1)
	}
	handoff, err := handoffConn()
	if err != nil {
		fmt.Fprintln(stderr, "georepl transport plugin:", err)
		os.Exit(1)
	}
	s.handoff = handoff
	go exitWithHost(handoff)
	defer s.closeListeners()
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig: control.Handshake,
		Plugins:         plugin.PluginSet{control.PluginName: &control.GRPCPlugin{Impl: s}},
		GRPCServer: func(opts []grpc.ServerOption) *grpc.Server {
			return plugin.DefaultGRPCServer(append(opts,
				grpc.InitialWindowSize(control.StreamWindow), grpc.InitialConnWindowSize(control.ConnWindow)))
		},
		Logger: hclog.New(&hclog.LoggerOptions{
			Name: "go-plugin", Output: stderr, JSONFormat: true, Level: hclog.Info,
		}),
	})
}

// handoffConn opens the hand-off socket georepl passed.
func handoffConn() (*net.UnixConn, error) {
	f := os.NewFile(control.HandoffFD, "georepl-handoff")
	if f == nil {
		return nil, fmt.Errorf("descriptor %d, the hand-off socket, is not open", control.HandoffFD)
	}
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("descriptor %d is not the hand-off socket: %w", control.HandoffFD, err)
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		return nil, fmt.Errorf("descriptor %d is a %T, not the hand-off Unix socket", control.HandoffFD, c)
	}
	return uc, nil
}

// exitWithHost exits the process once georepl's end of the hand-off
// socket is closed: georepl never writes to it, so a read returns only
// when georepl's process is gone.
func exitWithHost(handoff *net.UnixConn) {
	_, err := handoff.Read(make([]byte, 1))
	logger.Error("georepl is gone; exiting", "err", err)
	os.Exit(3)
}

// server serves the control calls.
type server struct {
	t       transports.Transport
	handoff *net.UnixConn
	planes  []string // the data planes the plugin offers

	mu        sync.Mutex
	nextID    uint64
	listeners map[uint64]transports.Listener
	streams   map[uint64]*streamConn // by hand-off id, until every channel's Data call came
}

var _ control.Server = (*server)(nil)

func (s *server) Configure(_ context.Context, req *control.ConfigureRequest) (*control.ConfigureReply, error) {
	if c, ok := s.t.(Configurer); ok {
		if err := c.Configure(req.Config); err != nil {
			return nil, status.Error(codes.FailedPrecondition, err.Error())
		}
	}
	return &control.ConfigureReply{Version: version(s.t)}, nil
}

func version(t transports.Transport) string {
	if v, ok := t.(Versioner); ok {
		return v.Version()
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		return bi.Main.Version
	}
	return "unknown"
}

func (s *server) Listen(_ context.Context, req *control.ListenRequest) (*control.ListenReply, error) {
	ln, err := s.t.Listen(req.Addr, req.Options.ToOptions())
	if err != nil {
		return nil, control.ToStatus(err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.nextID++
	s.listeners[s.nextID] = ln
	return &control.ListenReply{Listener: s.nextID, Addr: control.FromAddr(ln.Addr())}, nil
}

func (s *server) listener(id uint64) transports.Listener {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.listeners[id]
}

func (s *server) Accept(ctx context.Context, req *control.AcceptRequest) (*control.ConnReply, error) {
	ln := s.listener(req.Listener)
	if ln == nil {
		return nil, status.Errorf(codes.Aborted, "listener %d is closed", req.Listener)
	}
	c, err := ln.Accept(ctx)
	if err != nil {
		return nil, control.ToStatus(err)
	}
	return s.handOff(req.Handoff, req.DataPlanes, c)
}

func (s *server) CloseListener(_ context.Context, req *control.CloseListenerRequest) (*control.Empty, error) {
	s.mu.Lock()
	ln := s.listeners[req.Listener]
	delete(s.listeners, req.Listener)
	s.mu.Unlock()
	if ln != nil {
		if err := ln.Close(); err != nil {
			return nil, control.ToStatus(err)
		}
	}
	return &control.Empty{}, nil
}

func (s *server) closeListeners() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, ln := range s.listeners {
		ln.Close()
		delete(s.listeners, id)
	}
}

func (s *server) Dial(ctx context.Context, req *control.DialRequest) (*control.ConnReply, error) {
	c, err := s.t.Dial(ctx, req.Addr, req.Options.ToOptions())
	if err != nil {
		return nil, control.ToStatus(err)
	}
	return s.handOff(req.Handoff, req.DataPlanes, c)
}

// handOff gives georepl the connection c on the first data plane, of
// socket, ring and stream, that georepl accepts (accepted), the plugin
// offers and c allows: c's sockets (closing c, whose sockets georepl now
// owns), or rings or gRPC streams whose bytes the SDK moves to and from c.
// id names the connection in the hand-off packet or the Data calls.
func (s *server) handOff(id uint64, accepted []string, c transports.Conn) (*control.ConnReply, error) {
	reply := &control.ConnReply{Local: control.FromAddr(c.LocalAddr()), Remote: control.FromAddr(c.RemoteAddr())}
	if cb, ok := c.(transports.ChannelBinding); ok {
		b, err := cb.ChannelBinding()
		if err != nil {
			c.Close()
			return nil, status.Errorf(codes.Internal, "channel binding: %v", err)
		}
		reply.HasBinding, reply.Binding = true, b
	}
	if len(accepted) == 0 {
		accepted = control.LegacyDataPlanes
	}
	var tried []string
	for _, plane := range control.DataPlanes {
		if !slices.Contains(accepted, plane) || !slices.Contains(s.planes, plane) {
			continue
		}
		reply.DataPlane = plane
		switch plane {
		case control.DataPlaneSocket:
			fds, ok, err := sockets(c)
			if err != nil {
				c.Close()
				return nil, status.Errorf(codes.Internal, "%v", err)
			}
			if ok {
				return reply, s.handOffSockets(id, c, fds)
			}
			tried = append(tried, "socket: the streams are no kernel sockets")
		case control.DataPlaneRing:
			err := s.handOffRings(id, c)
			if err == nil {
				return reply, nil
			}
			if !errors.Is(err, errNoRing) {
				return nil, status.Errorf(codes.Internal, "%v", err)
			}
			logger.Warn("no shared-memory rings for a connection; trying the next data plane", "err", err)
			tried = append(tried, err.Error())
		case control.DataPlaneStream:
			s.awaitStreams(id, c)
			return reply, nil
		}
	}
	c.Close()
	why := ""
	if len(tried) > 0 {
		why = " (" + strings.Join(tried, "; ") + ")"
	}
	return nil, status.Errorf(codes.FailedPrecondition, "no data plane for the connection: georepl accepts %v, the plugin offers %v%s",
		accepted, s.planes, why)
}

// handOffSockets sends fds to georepl under id and closes them and c.
func (s *server) handOffSockets(id uint64, c transports.Conn, fds []int) error {
	defer c.Close()
	defer func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}()
	if _, _, err := s.handoff.WriteMsgUnix(control.EncodeHandoff(id), unix.UnixRights(fds...), nil); err != nil {
		return status.Errorf(codes.Internal, "hand the sockets to georepl: %v", err)
	}
	return nil
}

// sockets returns duplicates of the kernel sockets behind c's streams, or
// ok false if they have none.
func sockets(c transports.Conn) (fds []int, ok bool, err error) {
	for ch := range transports.Channel(transports.NumChannels) {
		fd, ok, err := socketOf(c.Stream(ch))
		if err != nil || !ok {
			for _, fd := range fds {
				unix.Close(fd)
			}
			if err != nil {
				err = fmt.Errorf("channel %d: %w", ch, err)
			}
			return nil, false, err
		}
		fds = append(fds, fd)
	}
	return fds, true, nil
}

// ringSize is the size of each ring: per connection, one per channel and
// direction. pumpBuffer is what one copy between a ring and a stream
// moves at most: larger than io.Copy's 32 KiB, so that 1 MiB frames take
// few wake-ups.
const (
	ringSize   = 1 << 20
	pumpBuffer = 256 << 10
)

// errNoRing is wrapped by errors of handOffRings that leave c open: the
// rings could not be made (no memfd on this platform, say), and the next
// data plane may carry c.
var errNoRing = errors.New("shared-memory rings unavailable")

// handOffRings creates c's rings, sends them to georepl under id, and
// starts moving bytes between them and c. c is closed when any direction
// of any channel ends (georepl fails the connection as a whole anyway), and
// when the hand-off fails, unless the error wraps errNoRing.
func (s *server) handOffRings(id uint64, c transports.Conn) error {
	var files []*os.File
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	var rings []*ring.Ring // per channel: to the plugin, to georepl
	abort := func() {
		for _, r := range rings {
			r.Abort()
		}
	}
	for range 2 * transports.NumChannels {
		f, err := ring.Create(ringSize)
		if err != nil {
			abort()
			return fmt.Errorf("%w: %w", errNoRing, err)
		}
		files = append(files, f.List()...)
		r, err := ring.Open(f)
		if err != nil {
			abort()
			return fmt.Errorf("%w: %w", errNoRing, err)
		}
		rings = append(rings, r)
	}
	fds := make([]int, len(files))
	for i, f := range files {
		fds[i] = int(f.Fd())
	}
	if _, _, err := s.handoff.WriteMsgUnix(control.EncodeHandoff(id), unix.UnixRights(fds...), nil); err != nil {
		abort()
		c.Close()
		return fmt.Errorf("hand the rings to georepl: %w", err)
	}
	stop := sync.OnceFunc(func() {
		c.Close()
		abort()
	})
	for ch := range transports.Channel(transports.NumChannels) {
		stream, toPlugin, toHost := c.Stream(ch), rings[2*ch], rings[2*ch+1]
		go func() {
			defer stop()
			io.CopyBuffer(stream, toPlugin, make([]byte, pumpBuffer))
		}()
		go func() {
			defer stop()
			io.CopyBuffer(toHost, stream, make([]byte, pumpBuffer))
			toHost.CloseWrite()
		}()
	}
	return nil
}

// socketOf returns a duplicate of the kernel socket behind stream, or ok
// false if it has none.
func socketOf(stream io.ReadWriter) (fd int, ok bool, err error) {
	sc, isConn := stream.(syscall.Conn)
	if !isConn {
		return -1, false, nil
	}
	raw, err := sc.SyscallConn()
	if errors.Is(err, errors.ErrUnsupported) {
		return -1, false, nil // no socket to hand over (TLS in the plugin, say): the rings carry it
	}
	if err != nil {
		return -1, false, err
	}
	dup, isSocket, dupErr := -1, false, error(nil)
	if err := raw.Control(func(fd uintptr) {
		if _, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TYPE); err != nil {
			return // not a socket: a pipe, say
		}
		isSocket = true
		dup, dupErr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return -1, false, err
	}
	return dup, isSocket, dupErr
}
