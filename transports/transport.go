package transports

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
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
// time; streams are independent of each other: a writer blocked on a full
// data channel never delays the control channel.
//
// Close closes every stream and unblocks pending reads and writes on both
// ends, which then return an error (io.EOF or net.ErrClosed on the reading
// side of a clean close). Close is not a flush: bytes written but not yet
// read by the peer may be lost, so the replication protocol confirms
// delivery with acknowledgements before it closes. Close may be called more
// than once and concurrently with reads and writes.
//
// A connection fails as a whole: once one stream returns an error, the
// other streams return errors too, soon (the transport documents how
// soon). A caller that sees an error on one stream closes the Conn.
type Conn interface {
	// Stream returns the stream of channel ch, the same value on every
	// call. It panics if ch >= NumChannels, a programming error.
	Stream(ch Channel) io.ReadWriter
	// Close closes the connection; see the type's comment.
	Close() error
	// LocalAddr and RemoteAddr name the two ends, for logs.
	LocalAddr() net.Addr
	RemoteAddr() net.Addr
}

// Listener accepts connections.
type Listener interface {
	// Accept waits for the next connection whose channels are all set up.
	// It returns ctx's error (wrapped) when ctx is done first, and an error
	// wrapping net.ErrClosed once Close was called, also to an Accept
	// already waiting.
	Accept(ctx context.Context) (Conn, error)
	// Close stops listening and discards connections not yet accepted.
	// Connections already accepted stay open.
	Close() error
	// Addr is the address the listener is bound to, with the real port
	// when Listen was given port 0.
	Addr() net.Addr
}

// Transport dials and listens. Implementations are safe for concurrent use.
type Transport interface {
	// Dial connects to the listener at addr and opens every channel. It
	// honours ctx: when ctx is done before the connection is set up, Dial
	// gives up and returns an error wrapping ctx.Err().
	Dial(ctx context.Context, addr string, opts Options) (Conn, error)
	// Listen binds addr and returns a listener. The address format is the
	// transport's ("host:port" for tcp and quic).
	Listen(addr string, opts Options) (Listener, error)
}

// Options tune a connection. The zero value is valid and means the
// defaults; transports call WithDefaults to fill in and check them.
type Options struct {
	// KeepAlive is the interval of transport-level keep-alives: QUIC
	// PINGs, TCP keep-alive probes. 0 means DefaultKeepAlive.
	KeepAlive time.Duration
	// IdleTimeout is how long a connection may receive nothing before the
	// transport declares the peer dead and fails the connection. 0 means
	// DefaultIdleTimeout.
	IdleTimeout time.Duration
	// TLS, when not nil, secures the connection with TLS 1.3 (the
	// transport sets MinVersion and its ALPN on a copy). Dial uses it as
	// the client's configuration: it must present a certificate and verify
	// the server's. A listener uses it for the dialers that ask for TLS;
	// tcp listeners also accept plaintext dialers, whose connections then
	// have no PeerCertificates: the layer above decides whether that is
	// allowed. nil: tcp is plaintext, and quic uses a self-signed
	// certificate that its dialer does not verify.
	TLS *tls.Config
	// SetupFailed, when not nil, is called by a listener, from its own
	// goroutines, for each dialer it refused because their TLS set-up
	// failed (a certificate refused by either end, TLS asked of a listener
	// without it): the listener's side of the refusal, for its log.
	SetupFailed func(remote net.Addr, err error)
}

// Defaults of Options: a dead peer is noticed within about IdleTimeout
// even when the replication protocol is silent.
const (
	DefaultKeepAlive   = 5 * time.Second
	DefaultIdleTimeout = 30 * time.Second
)

// ErrInvalidOptions is wrapped by the error of WithDefaults, and so of
// Dial and Listen, for options that cannot work.
var ErrInvalidOptions = errors.New("invalid transport options")

// WithDefaults returns o with zero fields set to their defaults, or an
// error wrapping ErrInvalidOptions if a duration is negative or KeepAlive
// is not shorter than IdleTimeout (the peer would time out between two
// keep-alives).
func (o Options) WithDefaults() (Options, error) {
	if o.KeepAlive < 0 || o.IdleTimeout < 0 {
		return o, fmt.Errorf("%w: KeepAlive %v and IdleTimeout %v must not be negative", ErrInvalidOptions, o.KeepAlive, o.IdleTimeout)
	}
	if o.KeepAlive == 0 {
		o.KeepAlive = DefaultKeepAlive
	}
	if o.IdleTimeout == 0 {
		o.IdleTimeout = DefaultIdleTimeout
	}
	if o.KeepAlive >= o.IdleTimeout {
		return o, fmt.Errorf("%w: KeepAlive %v must be shorter than IdleTimeout %v", ErrInvalidOptions, o.KeepAlive, o.IdleTimeout)
	}
	return o, nil
}

// ChannelBinding is implemented by connections that run over a secured
// channel (TLS, QUIC). ChannelBinding returns bytes that are equal on both
// ends of the same connection and unpredictable to anyone relaying it, so
// that the shared-secret handshake can be bound to this very connection
// (no man in the middle can relay the proof to another connection).
type ChannelBinding interface {
	ChannelBinding() ([]byte, error)
}

// PeerCertificates is implemented by connections that may run over TLS.
// PeerCertificates returns the certificate chain the peer presented,
// leaf first, or nil when it presented none (a plaintext connection, or
// a QUIC dialer without a certificate). The chain has been verified only
// as far as Options.TLS's callbacks did.
type PeerCertificates interface {
	PeerCertificates() []*x509.Certificate
}
