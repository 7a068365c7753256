// Package control is the protocol between georepl (the host) and a
// transport plugin, shared by plugins/host and plugins/sdk: go-plugin's
// handshake values, the gRPC service of the control calls, its codec, and
// the hand-off of connection sockets over a Unix socket.
//
// # Control plane
//
// The control calls (Configure, Listen, Accept, CloseListener, Dial) are a
// gRPC service defined here by hand, without generated code: its few
// messages are Go structs encoded as JSON by a codec registered under the
// content subtype "georepl-json". go-plugin's own services (health,
// controller, stdio) keep protobuf; only calls made with CallOptions use
// this codec. A control call costs a round trip of a few tens of
// microseconds, paid once per connection, never per frame.
//
// # Data plane: socket hand-off
//
// The host passes the plugin one end of a SOCK_SEQPACKET socket pair as
// file descriptor HandoffFD. For every connection it dials or accepts, the
// plugin sends one packet on it: 8 bytes, the hand-off id the host chose
// for that call (big-endian), with the connection's descriptors as
// SCM_RIGHTS: NumChannels sockets in channel order, or, for a transport
// whose streams are no kernel sockets, shared-memory rings (DataPlaneRing).
// Only then does it answer the call, saying which data plane it chose. A
// third data plane, DataPlaneStream, sends no packet: the bytes travel on
// gRPC streams (stream.go), the fallback when neither descriptors nor
// shared memory can be had. The host's request lists the data planes it
// accepts; the plugin takes the first of socket, ring, stream that the
// connection, the plugin and the host allow. The host
// reads and writes those sockets itself: bulk data never crosses the
// plugin, and a plugin that dies later does not take established
// connections with it (ring connections end with their plugin). The
// plugin closes its own socket descriptors once the packet is sent (the
// kernel keeps the sockets open while the packet is in flight). The host never writes to the socket pair; when the host dies the
// plugin reads end of file on it and exits, so no plugin outlives its
// daemon, even after kill -9.
package control

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/status"

	"github.com/georepl/georepl/transports"
)

// Handshake values of go-plugin. ProtocolVersion changes whenever a
// message, a call or the hand-off changes incompatibly; a host refuses a
// plugin built for another one, naming both versions.
const (
	ProtocolVersion  = 1
	MagicCookieKey   = "GEOREPL_TRANSPORT_PLUGIN"
	MagicCookieValue = "b7e3c1d2-georepl-transport"
	// PluginName is the name of the one plugin a plugin binary serves in
	// go-plugin's plugin set.
	PluginName = "transport"
)

// HandoffFD is the descriptor number of the plugin's end of the hand-off
// socket pair; HandoffEnv names it in the plugin's environment, so that a
// plugin started by anything else than a georepl host says so.
const (
	HandoffFD  = 3
	HandoffEnv = "GEOREPL_PLUGIN_HANDOFF_FD"
)

// handoffHeader is the size of a hand-off packet's payload: the id.
const handoffHeader = 8

// CodecName is the gRPC content subtype of the control calls.
const CodecName = "georepl-json"

type jsonCodec struct{}

func (jsonCodec) Marshal(v any) ([]byte, error)      { return json.Marshal(v) }
func (jsonCodec) Unmarshal(data []byte, v any) error { return json.Unmarshal(data, v) }
func (jsonCodec) Name() string                       { return CodecName }

func init() { encoding.RegisterCodec(jsonCodec{}) }

// Options are transports.Options on the wire.
type Options struct {
	KeepAlive   time.Duration
	IdleTimeout time.Duration
}

// FromOptions and ToOptions convert between the two.
func FromOptions(o transports.Options) Options {
	return Options{KeepAlive: o.KeepAlive, IdleTimeout: o.IdleTimeout}
}

func (o Options) ToOptions() transports.Options {
	return transports.Options{KeepAlive: o.KeepAlive, IdleTimeout: o.IdleTimeout}
}

// ConfigureRequest carries the plugin block's config attribute, as JSON
// (null when the block has none).
type ConfigureRequest struct {
	Config json.RawMessage
}

// ConfigureReply describes the plugin.
type ConfigureReply struct {
	// Version is the plugin's own version, for `georepl plugins`.
	Version string
}

type ListenRequest struct {
	Addr    string
	Options Options
}

type ListenReply struct {
	Listener uint64
	Addr     Addr
}

type AcceptRequest struct {
	Listener uint64
	Handoff  uint64
	// DataPlanes are the data planes the host accepts for the connection;
	// empty means LegacyDataPlanes.
	DataPlanes []string `json:",omitempty"`
}

type CloseListenerRequest struct {
	Listener uint64
}

type DialRequest struct {
	Addr    string
	Options Options
	Handoff uint64
	// DataPlanes: as in AcceptRequest.
	DataPlanes []string `json:",omitempty"`
}

// Data planes of a connection: how its bytes travel between the host and
// the plugin's medium.
const (
	// DataPlaneSocket: the hand-off packet carries NumChannels sockets, in
	// channel order, which the host reads and writes itself.
	DataPlaneSocket = "socket"
	// DataPlaneRing: the packet carries RingFDs descriptors: per channel,
	// the ring from host to plugin, then the one from plugin to host, each
	// as a memfd and two eventfds (package ring). The plugin moves the
	// bytes between the rings and its medium.
	DataPlaneRing = "ring"
)

// RingFDs is the number of descriptors of a ring connection's hand-off.
const RingFDs = transports.NumChannels * 2 * 3

// ConnReply answers Dial and Accept, once the connection's descriptors
// are sent under the request's hand-off id.
type ConnReply struct {
	// DataPlane is DataPlaneSocket, DataPlaneRing or DataPlaneStream, one
	// the request accepts.
	DataPlane     string
	Local, Remote Addr
	// Binding is the connection's transports.ChannelBinding, when it has
	// one (HasBinding).
	HasBinding bool
	Binding    []byte
}

type Empty struct{}

// Addr is a net.Addr on the wire, and a net.Addr on the host.
type Addr struct {
	Net, Str string
}

func FromAddr(a net.Addr) Addr {
	if a == nil {
		return Addr{}
	}
	return Addr{Net: a.Network(), Str: a.String()}
}

func (a Addr) Network() string { return a.Net }
func (a Addr) String() string  { return a.Str }

// Server is what the plugin side implements.
type Server interface {
	Configure(context.Context, *ConfigureRequest) (*ConfigureReply, error)
	Listen(context.Context, *ListenRequest) (*ListenReply, error)
	Accept(context.Context, *AcceptRequest) (*ConnReply, error)
	CloseListener(context.Context, *CloseListenerRequest) (*Empty, error)
	Dial(context.Context, *DialRequest) (*ConnReply, error)
	// Data carries one channel of a DataPlaneStream connection (see
	// stream.go).
	Data(grpc.ServerStream) error
}

const serviceName = "georepl.transport.v1.Transport"

func unary[Req, Rep any](name string, call func(Server, context.Context, *Req) (*Rep, error)) grpc.MethodDesc {
	return grpc.MethodDesc{
		MethodName: name,
		Handler: func(srv any, ctx context.Context, dec func(any) error, icpt grpc.UnaryServerInterceptor) (any, error) {
			req := new(Req)
			if err := dec(req); err != nil {
				return nil, err
			}
			if icpt == nil {
				return call(srv.(Server), ctx, req)
			}
			info := &grpc.UnaryServerInfo{Server: srv, FullMethod: "/" + serviceName + "/" + name}
			return icpt(ctx, req, info, func(ctx context.Context, req any) (any, error) {
				return call(srv.(Server), ctx, req.(*Req))
			})
		},
	}
}

var serviceDesc = grpc.ServiceDesc{
	ServiceName: serviceName,
	HandlerType: (*Server)(nil),
	Methods: []grpc.MethodDesc{
		unary("Configure", Server.Configure),
		unary("Listen", Server.Listen),
		unary("Accept", Server.Accept),
		unary("CloseListener", Server.CloseListener),
		unary("Dial", Server.Dial),
	},
	Streams: []grpc.StreamDesc{dataStreamDesc},
}

// Register serves s on g.
func Register(g *grpc.Server, s Server) { g.RegisterService(&serviceDesc, s) }

// Client makes the control calls.
type Client struct {
	conn *grpc.ClientConn
	done <-chan struct{}
}

// NewClient makes calls on conn; done is closed when the plugin process
// has exited.
func NewClient(conn *grpc.ClientConn, done <-chan struct{}) *Client {
	return &Client{conn: conn, done: done}
}

// Done is closed once the plugin process has exited.
func (c *Client) Done() <-chan struct{} { return c.done }

func invoke[Rep any](ctx context.Context, c *Client, method string, req any) (*Rep, error) {
	rep := new(Rep)
	if err := c.conn.Invoke(ctx, "/"+serviceName+"/"+method, req, rep, grpc.CallContentSubtype(CodecName)); err != nil {
		return nil, err
	}
	return rep, nil
}

func (c *Client) Configure(ctx context.Context, req *ConfigureRequest) (*ConfigureReply, error) {
	return invoke[ConfigureReply](ctx, c, "Configure", req)
}

func (c *Client) Listen(ctx context.Context, req *ListenRequest) (*ListenReply, error) {
	return invoke[ListenReply](ctx, c, "Listen", req)
}

func (c *Client) Accept(ctx context.Context, req *AcceptRequest) (*ConnReply, error) {
	return invoke[ConnReply](ctx, c, "Accept", req)
}

func (c *Client) CloseListener(ctx context.Context, req *CloseListenerRequest) (*Empty, error) {
	return invoke[Empty](ctx, c, "CloseListener", req)
}

func (c *Client) Dial(ctx context.Context, req *DialRequest) (*ConnReply, error) {
	return invoke[ConnReply](ctx, c, "Dial", req)
}

// ToStatus turns a transport's error into a gRPC status that keeps the
// kinds of error the transports package promises (a closed listener,
// invalid options, a context that ended) across the process boundary.
func ToStatus(err error) error {
	code := codes.Unknown
	switch {
	case errors.Is(err, net.ErrClosed):
		code = codes.Aborted
	case errors.Is(err, transports.ErrInvalidOptions):
		code = codes.InvalidArgument
	case errors.Is(err, context.DeadlineExceeded):
		code = codes.DeadlineExceeded
	case errors.Is(err, context.Canceled):
		code = codes.Canceled
	}
	return status.Error(code, err.Error())
}

// ErrPluginUnavailable is wrapped by errors of calls that did not reach a
// running plugin: it exited, or is being restarted.
var ErrPluginUnavailable = errors.New("transport plugin unavailable")

// FromStatus turns a control call's error back into one that wraps what
// the plugin's transport returned: net.ErrClosed,
// transports.ErrInvalidOptions, or ctx's error when ctx ended (the call's
// own context, so that errors.Is works as for a built-in transport).
func FromStatus(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%w (%v)", ctx.Err(), status.Convert(err).Message())
	}
	st := status.Convert(err)
	switch st.Code() {
	case codes.Aborted:
		return fmt.Errorf("%s: %w", st.Message(), net.ErrClosed)
	case codes.InvalidArgument:
		return fmt.Errorf("%s: %w", st.Message(), transports.ErrInvalidOptions)
	case codes.DeadlineExceeded:
		return fmt.Errorf("%s: %w", st.Message(), context.DeadlineExceeded)
	case codes.Canceled:
		return fmt.Errorf("%s: %w", st.Message(), context.Canceled)
	case codes.Unavailable:
		return fmt.Errorf("%w: %s", ErrPluginUnavailable, st.Message())
	}
	return errors.New(st.Message())
}

// EncodeHandoff is the payload of a hand-off packet.
func EncodeHandoff(id uint64) []byte {
	return binary.BigEndian.AppendUint64(nil, id)
}

// DecodeHandoff reads a hand-off packet's payload.
func DecodeHandoff(b []byte) (uint64, error) {
	if len(b) != handoffHeader {
		return 0, fmt.Errorf("hand-off packet of %d bytes, want %d", len(b), handoffHeader)
	}
	return binary.BigEndian.Uint64(b), nil
}

// Handshake is go-plugin's handshake configuration, the same on both
// sides.
var Handshake = plugin.HandshakeConfig{
	ProtocolVersion:  ProtocolVersion,
	MagicCookieKey:   MagicCookieKey,
	MagicCookieValue: MagicCookieValue,
}

// GRPCPlugin is the go-plugin plugin of a transport: the plugin serves
// Server, the host gets a *Client.
type GRPCPlugin struct {
	plugin.NetRPCUnsupportedPlugin
	// Impl is set on the plugin side only.
	Impl Server
}

func (p *GRPCPlugin) GRPCServer(_ *plugin.GRPCBroker, g *grpc.Server) error {
	Register(g, p.Impl)
	return nil
}

// GRPCClient returns the *Client; go-plugin cancels ctx when the plugin
// process exits.
func (p *GRPCPlugin) GRPCClient(ctx context.Context, _ *plugin.GRPCBroker, conn *grpc.ClientConn) (any, error) {
	return NewClient(conn, ctx.Done()), nil
}
