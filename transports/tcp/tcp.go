package tcp

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/georepl/georepl/transports"
)

// Preamble format; see the package documentation.
const (
	preambleMagic   = "GRPL"
	preambleVersion = 2
	connIDSize      = 16
	preambleSize    = len(preambleMagic) + 1 + connIDSize + 1 + 1
	answerSize      = len(preambleMagic) + 1 + 1
)

// A preamble's mode says whether the channel continues in plaintext or
// with a TLS handshake.
const (
	modePlain byte = 0
	modeTLS   byte = 1
)

// An answer's status.
const (
	statusOK byte = 0
	// statusNoTLS: the dialer asked for TLS and the listener has none.
	statusNoTLS byte = 1
)

// Listener limits. They are variables only so that tests can shorten them.
var (
	// preambleTimeout is how long the listener waits for a new TCP
	// connection's preamble, and for its answer to be sent.
	preambleTimeout = 5 * time.Second
	// setTimeout is how long the listener keeps some channels of a
	// connection while waiting for the others.
	setTimeout = 10 * time.Second
	// dialTimeout bounds Dial (connecting and the preamble exchange) when
	// ctx has no earlier deadline. It is longer than setTimeout, so that a
	// listener that drops an incomplete set says so by closing first.
	dialTimeout = 20 * time.Second
)

// A listener holds at most maxIncomplete TCP connections that are not yet
// part of a complete set (their preamble unread, or their set waiting for
// its other channels), maxIncompletePerSource of them from one address;
// see transports.Admission. So a flood of half connections exhausts
// neither memory nor descriptors, and a dialer at another address still
// gets in: a genuine dialer opens all channels at once, and a set
// completes within a round trip.
const (
	maxIncomplete          = 512
	maxIncompletePerSource = 128
)

var (
	// ErrBadPreamble is wrapped by Dial's error when the listener's answer
	// is not georepl's: something else listens on that port.
	ErrBadPreamble = errors.New("tcp: peer is not a georepl tcp listener")
	// ErrNoTLS is wrapped by Dial's error when it asked for TLS and the
	// listener was given no TLS configuration.
	ErrNoTLS = errors.New("tcp: the listener does not offer TLS")
	// ErrDialTimeout is wrapped by Dial's error when the connection was
	// not set up within 20 seconds (and ctx set no earlier deadline):
	// something that accepts TCP connections but never answers listens
	// on that port.
	ErrDialTimeout = errors.New("tcp: connection not set up in time")
)

// connID identifies the TCP connections of one Conn to the listener.
type connID [connIDSize]byte

// Transport is the TCP transport. The zero value is ready to use and safe
// for concurrent use.
type Transport struct{}

// New returns the TCP transport.
func New() *Transport { return &Transport{} }

var _ transports.Transport = (*Transport)(nil)

// checkAddr reports a clear error for an address that is not "host:port".
func checkAddr(op, addr string) error {
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return fmt.Errorf("tcp: %s: address %q must be host:port: %w", op, addr, err)
	}
	return nil
}

// keepAliveConfig turns opts (with defaults) into TCP keep-alive probes;
// see the package documentation.
func keepAliveConfig(o transports.Options) net.KeepAliveConfig {
	return net.KeepAliveConfig{
		Enable:   true,
		Idle:     o.KeepAlive,
		Interval: o.KeepAlive,
		Count:    max(1, int(o.IdleTimeout/o.KeepAlive)),
	}
}

// Dial opens every channel's TCP connection to addr ("host:port") and
// returns when the listener has answered on all of them. If one channel
// fails, the others are closed and Dial returns that channel's error. When
// ctx ends first, Dial returns an error wrapping ctx.Err(); without an
// answer within 20 seconds, an error wrapping ErrDialTimeout.
func (*Transport) Dial(ctx context.Context, addr string, opts transports.Options) (transports.Conn, error) {
	if err := checkAddr("dial", addr); err != nil {
		return nil, err
	}
	opts, err := opts.WithDefaults()
	if err != nil {
		return nil, fmt.Errorf("tcp: dial %s: %w", addr, err)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("tcp: dial %s: %w", addr, err)
	}
	var id connID
	rand.Read(id[:])

	parent := ctx
	ctx, cancel := context.WithTimeoutCause(parent, dialTimeout, ErrDialTimeout)
	defer cancel()
	dialer := net.Dialer{KeepAliveConfig: keepAliveConfig(opts)}
	var (
		wg    sync.WaitGroup
		socks [transports.NumChannels]channelConn
		errs  [transports.NumChannels]error
	)
	for ch := range transports.NumChannels {
		wg.Go(func() {
			socks[ch], errs[ch] = dialChannel(ctx, &dialer, addr, opts, id, transports.Channel(ch))
			if errs[ch] != nil {
				cancel() // no use waiting for the other channels
			}
		})
	}
	wg.Wait()
	if err := firstError(errs[:]); err != nil {
		for _, s := range socks {
			if s.sock != nil {
				s.sock.Close()
			}
		}
		switch {
		case parent.Err() != nil:
			return nil, fmt.Errorf("tcp: dial %s: %w", addr, parent.Err())
		case errors.Is(context.Cause(ctx), ErrDialTimeout):
			return nil, fmt.Errorf("tcp: dial %s: %w (%v)", addr, ErrDialTimeout, dialTimeout)
		default:
			return nil, fmt.Errorf("tcp: dial %s: %w", addr, err)
		}
	}
	if opts.TLS != nil {
		if err := sameCertificates(socks); err != nil {
			for _, s := range socks {
				s.sock.Close()
			}
			return nil, fmt.Errorf("tcp: dial %s: %w", addr, err)
		}
	}
	return newConn(socks), nil
}

// sameCertificates checks that the peer presented one certificate on
// every channel: the layer above checks the control channel's only.
func sameCertificates(socks [transports.NumChannels]channelConn) error {
	first := socks[0].peerLeaf()
	for ch, s := range socks[1:] {
		leaf := s.peerLeaf()
		if first == nil || leaf == nil || !first.Equal(leaf) {
			return fmt.Errorf("channel %d and channel 0 present different certificates", ch+1)
		}
	}
	return nil
}

// firstError returns the first non-nil error of errs that is not a
// consequence of cancelling the others, or else the first non-nil one.
func firstError(errs []error) error {
	var first error
	for _, err := range errs {
		if err == nil {
			continue
		}
		if first == nil {
			first = err
		}
		if !errors.Is(err, context.Canceled) {
			return err
		}
	}
	return first
}

// dialChannel opens channel ch's TCP connection, exchanges the preamble
// and, with opts.TLS, runs the TLS handshake, all within ctx.
func dialChannel(ctx context.Context, dialer *net.Dialer, addr string, opts transports.Options, id connID, ch transports.Channel) (channelConn, error) {
	c, err := dialer.DialContext(ctx, "tcp", addr)
	if err != nil {
		return channelConn{}, fmt.Errorf("channel %d: %w", ch, err)
	}
	sock := c.(*net.TCPConn)
	if err := tune(sock, opts); err != nil {
		sock.Close()
		return channelConn{}, fmt.Errorf("channel %d: %w", ch, err)
	}
	// A deadline in the past unblocks the preamble exchange when ctx ends
	// (by cancellation or deadline), and only then, so that a timeout
	// here always comes with ctx.Err().
	stop := context.AfterFunc(ctx, func() { sock.SetDeadline(time.Unix(1, 0)) })
	cc, err := exchangePreamble(sock, id, ch, opts.TLS)
	if !stop() {
		err = ctx.Err()
	}
	if err == nil {
		err = sock.SetDeadline(time.Time{})
	}
	if err != nil {
		sock.Close()
		return channelConn{}, fmt.Errorf("channel %d: %w", ch, err)
	}
	return cc, nil
}

// tune sets the socket options of every channel: TCP_NODELAY (see the
// package documentation) and, where available, TCP_USER_TIMEOUT of
// opts.IdleTimeout. Keep-alives are set by the Dialer or ListenConfig.
func tune(sock *net.TCPConn, opts transports.Options) error {
	if err := sock.SetNoDelay(true); err != nil {
		return fmt.Errorf("TCP_NODELAY: %w", err)
	}
	return setUserTimeout(sock, opts.IdleTimeout)
}

// exchangePreamble sends the dialer's preamble, runs the TLS handshake
// when tlsConf is not nil, and reads the listener's answer.
func exchangePreamble(sock *net.TCPConn, id connID, ch transports.Channel, tlsConf *tls.Config) (channelConn, error) {
	preamble := makePreamble(id, ch, tlsConf != nil)
	if _, err := sock.Write(preamble[:]); err != nil {
		return channelConn{}, fmt.Errorf("send preamble: %w", err)
	}
	cc := channelConn{sock: sock, rw: sock}
	if tlsConf != nil {
		cc = newTLSChannel(sock, func(c net.Conn) *tls.Conn { return tls.Client(c, clientConfig(tlsConf)) })
		if err := cc.tls.Handshake(); err != nil {
			var plain tls.RecordHeaderError
			if errors.As(err, &plain) && string(plain.RecordHeader[:]) == string(answerPrefix()) {
				// The listener answered in plaintext: it has no TLS.
				return channelConn{}, fmt.Errorf("%w (no tls block for this resource on that node?)", ErrNoTLS)
			}
			return channelConn{}, fmt.Errorf("TLS handshake: %w", err)
		}
	}
	var answer [answerSize]byte
	prefix := len(answerPrefix())
	if _, err := io.ReadFull(cc.rw, answer[:prefix]); err != nil {
		return channelConn{}, fmt.Errorf("read the listener's answer: %w", err)
	}
	if !bytes.Equal(answer[:prefix], answerPrefix()) {
		return channelConn{}, fmt.Errorf("%w: answered %q", ErrBadPreamble, answer[:prefix])
	}
	if _, err := io.ReadFull(cc.rw, answer[prefix:]); err != nil {
		return channelConn{}, fmt.Errorf("read the listener's answer: %w", err)
	}
	if status := answer[answerSize-1]; status != statusOK {
		return channelConn{}, fmt.Errorf("%w: answered status %d", ErrBadPreamble, status)
	}
	return cc, nil
}

// serverConfig is the listener's copy of conf, nil or at TLS 1.3 at
// least, also when conf picks a configuration per client.
func serverConfig(conf *tls.Config) *tls.Config {
	if conf == nil {
		return nil
	}
	c := conf.Clone()
	c.MinVersion = max(c.MinVersion, tls.VersionTLS13)
	if pick := c.GetConfigForClient; pick != nil {
		c.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			picked, err := pick(hello)
			if picked == nil || err != nil {
				return picked, err
			}
			picked = picked.Clone()
			picked.MinVersion = max(picked.MinVersion, tls.VersionTLS13)
			return picked, nil
		}
	}
	return c
}

// clientConfig is the dialer's copy of conf, at TLS 1.3 at least.
func clientConfig(conf *tls.Config) *tls.Config {
	c := conf.Clone()
	c.MinVersion = max(c.MinVersion, tls.VersionTLS13)
	return c
}

// makePreamble encodes the dialer's preamble of channel ch.
func makePreamble(id connID, ch transports.Channel, withTLS bool) [preambleSize]byte {
	var p [preambleSize]byte
	n := copy(p[:], preambleMagic)
	p[n] = preambleVersion
	copy(p[n+1:], id[:])
	p[preambleSize-2] = byte(ch)
	if withTLS {
		p[preambleSize-1] = modeTLS
	}
	return p
}

// parsePreamble decodes a preamble; ok is false for anything a georepl
// dialer of this version does not send.
func parsePreamble(p [preambleSize]byte) (id connID, ch transports.Channel, withTLS bool, ok bool) {
	n := len(preambleMagic)
	if string(p[:n]) != preambleMagic || p[n] != preambleVersion || int(p[preambleSize-2]) >= transports.NumChannels || p[preambleSize-1] > modeTLS {
		return connID{}, 0, false, false
	}
	copy(id[:], p[n+1:])
	return id, transports.Channel(p[preambleSize-2]), p[preambleSize-1] == modeTLS, true
}

// answerPrefix starts every answer of the listener: magic and version.
func answerPrefix() []byte {
	return append([]byte(preambleMagic), preambleVersion)
}

// answerBytes is the listener's answer of status.
func answerBytes(status byte) []byte {
	return append(answerPrefix(), status)
}

// Listen listens on addr ("host:port"; port 0 picks a free port, which
// Addr reports).
func (*Transport) Listen(addr string, opts transports.Options) (transports.Listener, error) {
	if err := checkAddr("listen", addr); err != nil {
		return nil, err
	}
	opts, err := opts.WithDefaults()
	if err != nil {
		return nil, fmt.Errorf("tcp: listen %s: %w", addr, err)
	}
	lc := net.ListenConfig{KeepAliveConfig: keepAliveConfig(opts)}
	ln, err := lc.Listen(context.Background(), "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("tcp: listen %s: %w", addr, err)
	}
	l := &listener{
		ln:         ln.(*net.TCPListener),
		opts:       opts,
		tls:        serverConfig(opts.TLS),
		ready:      make(chan transports.Conn),
		closed:     make(chan struct{}),
		incomplete: transports.NewAdmission(maxIncomplete, maxIncompletePerSource),
		reading:    map[*net.TCPConn]struct{}{},
		pending:    map[connID]*pendingSet{},
	}
	l.workers.Go(l.acceptLoop)
	return l, nil
}
