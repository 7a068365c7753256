// Package transports defines how georepl nodes reach each other: the
// Transport interface, a registry of transports by name, and (in
// transporttest) the conformance suite every transport must pass.
//
// A transport moves bytes on ordered channels; it knows nothing about
// replication, frames or nodes. A connection carries NumChannels
// independent, ordered, reliable byte streams, so that acknowledgements on
// the control channel are never stuck behind bulk data on the data channel.
//
// Built-in transports live in subpackages (tcp, quic, mem) and are listed
// in one place, builtin.Register. Optional abilities are separate
// interfaces found by type assertion (see ChannelBinding).
package transports

import (
	"context"
	"io"
	"net"
	"time"
)

// Channel indexes a connection's streams.
type Channel uint8

const (
	// ChannelData carries bulk replication data.
	ChannelData Channel = 0
	// ChannelControl carries handshake, acks and pings.
	ChannelControl Channel = 1
	// NumChannels is the number of streams every connection carries.
	NumChannels = 2
)

// Conn is an established connection between two nodes.
//
// Each stream may be used by one reader and one writer goroutine at the same
// time; streams are independent of each other. Close closes every stream
// and unblocks pending reads and writes on both ends, which then return an
// error (io.EOF or net.ErrClosed on the reading side of a clean close).
type Conn interface {
	Stream(ch Channel) io.ReadWriter
	Close() error
	LocalAddr() net.Addr
	RemoteAddr() net.Addr
}

// Listener accepts connections. Accept returns net.ErrClosed after Close.
type Listener interface {
	Accept(ctx context.Context) (Conn, error)
	Close() error
	Addr() net.Addr
}

// Transport dials and listens. Implementations are safe for concurrent use.
type Transport interface {
	Dial(ctx context.Context, addr string, opts Options) (Conn, error)
	Listen(addr string, opts Options) (Listener, error)
}

// Options tune a connection. The zero value is valid.
type Options struct {
	// KeepAlive is the interval of transport-level keep-alives where the
	// transport has them (QUIC); 0 means the transport's default.
	KeepAlive time.Duration
	// IdleTimeout closes a connection that received nothing for this long
	// where the transport has such a timer; 0 means the transport's default.
	IdleTimeout time.Duration
}

// ChannelBinding is implemented by connections that run over a secured
// channel (TLS, QUIC). ChannelBinding returns bytes that are equal on both
// ends of the same connection and unpredictable to anyone relaying it, so
// that the shared-secret handshake can be bound to this very connection
// (no man in the middle can relay the proof to another connection).
type ChannelBinding interface {
	ChannelBinding() ([]byte, error)
}
