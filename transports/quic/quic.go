package quic

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"time"

	quicgo "github.com/quic-go/quic-go"

	"github.com/georepl/georepl/transports"
)

// ALPN is the TLS application protocol both ends must agree on.
const ALPN = "georepl/1"

// ChannelBindingLabel is the TLS exporter label of ChannelBinding.
const ChannelBindingLabel = "EXPORTER-georepl-channel-binding"

// channelBindingSize is the length of ChannelBinding's result.
const channelBindingSize = 32

// Flow-control limits; see the package documentation. They bound the
// stream data a connection holds that georepl has not read yet:
// maxConnectionWindow in all, which leaves the control stream a third of
// it when the data stream's window is full (quic-go grows a connection's
// window to 1.5 times the largest stream window it grants, this ratio).
const (
	maxStreamWindow     = 16 << 20
	maxConnectionWindow = maxStreamWindow * 3 / 2
)

// streamSetupTimeout is how long the listener waits for a new
// connection's streams and their index bytes. A variable only so that
// tests can shorten it.
var streamSetupTimeout = 5 * time.Second

// Application error codes sent with CONNECTION_CLOSE.
const (
	// codeClosed: Close was called; the peer reads io.EOF.
	codeClosed quicgo.ApplicationErrorCode = 0
	// codeBadSetup: the dialer's streams did not follow the set-up rules.
	codeBadSetup quicgo.ApplicationErrorCode = 1
	// codeListenerClosed: the listener closed before Accept took it.
	codeListenerClosed quicgo.ApplicationErrorCode = 2
)

// Transport is the QUIC transport. The zero value is ready to use and safe
// for concurrent use.
type Transport struct{}

// New returns the QUIC transport.
func New() *Transport { return &Transport{} }

var _ transports.Transport = (*Transport)(nil)

// checkAddr reports a clear error for an address that is not "host:port".
func checkAddr(op, addr string) error {
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return fmt.Errorf("quic: %s: address %q must be host:port: %w", op, addr, err)
	}
	return nil
}

// config returns the quic-go configuration for opts (already defaulted).
// Only the listener accepts streams, and only NumChannels of them.
func config(opts transports.Options, listener bool) *quicgo.Config {
	incoming := int64(-1)
	if listener {
		incoming = transports.NumChannels
	}
	return &quicgo.Config{
		KeepAlivePeriod:            opts.KeepAlive,
		MaxIdleTimeout:             opts.IdleTimeout,
		MaxStreamReceiveWindow:     maxStreamWindow,
		MaxConnectionReceiveWindow: maxConnectionWindow,
		MaxIncomingStreams:         incoming,
		MaxIncomingUniStreams:      -1,
	}
}

// Dial opens a QUIC connection to addr ("host:port") and its streams. When
// ctx ends first, Dial returns an error wrapping ctx.Err().
func (*Transport) Dial(ctx context.Context, addr string, opts transports.Options) (transports.Conn, error) {
	if err := checkAddr("dial", addr); err != nil {
		return nil, err
	}
	opts, err := opts.WithDefaults()
	if err != nil {
		return nil, fmt.Errorf("quic: dial %s: %w", addr, err)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("quic: dial %s: %w", addr, err)
	}
	tlsConf := &tls.Config{
		MinVersion: tls.VersionTLS13,
		NextProtos: []string{ALPN},
		// Without opts.TLS the listener's certificate is self-signed:
		// peers authenticate each other with the shared-secret handshake
		// bound to ChannelBinding.
		InsecureSkipVerify: true,
	}
	if opts.TLS != nil {
		tlsConf = withALPN(opts.TLS)
	}
	qc, err := quicgo.DialAddr(ctx, addr, tlsConf, config(opts, false))
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("quic: dial %s: %w", addr, ctx.Err())
		}
		return nil, fmt.Errorf("quic: dial %s: %w", addr, err)
	}
	c := &conn{qc: qc}
	for ch := range transports.NumChannels {
		s, err := qc.OpenStream()
		if err == nil {
			_, err = s.Write([]byte{byte(ch)})
		}
		if err != nil {
			qc.CloseWithError(codeBadSetup, "stream set-up failed")
			return nil, fmt.Errorf("quic: dial %s: open channel %d: %w", addr, ch, err)
		}
		c.streams[ch] = stream{ch: transports.Channel(ch), s: s}
	}
	return c, nil
}

// Listen listens on the UDP address addr ("host:port"; port 0 picks a free
// port, which Addr reports) with a new self-signed certificate.
func (*Transport) Listen(addr string, opts transports.Options) (transports.Listener, error) {
	if err := checkAddr("listen", addr); err != nil {
		return nil, err
	}
	opts, err := opts.WithDefaults()
	if err != nil {
		return nil, fmt.Errorf("quic: listen %s: %w", addr, err)
	}
	tlsConf, err := listenerConfig(opts.TLS, opts.SetupFailed)
	if err != nil {
		return nil, fmt.Errorf("quic: listen %s: %w", addr, err)
	}
	udpAddr, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, fmt.Errorf("quic: listen %s: %w", addr, err)
	}
	udp, err := net.ListenUDP("udp", udpAddr)
	if err != nil {
		return nil, fmt.Errorf("quic: listen %s: %w", addr, err)
	}
	ep := &endpoint{tr: &quicgo.Transport{Conn: udp}, udp: udp, refs: 1}
	ql, err := ep.tr.Listen(tlsConf, config(opts, true))
	if err != nil {
		ep.release()
		return nil, fmt.Errorf("quic: listen %s: %w", addr, err)
	}
	return newListener(ep, ql), nil
}

// withALPN returns a copy of conf with georepl's ALPN, at TLS 1.3 at
// least.
func withALPN(conf *tls.Config) *tls.Config {
	c := conf.Clone()
	c.MinVersion = max(c.MinVersion, tls.VersionTLS13)
	c.NextProtos = []string{ALPN}
	return c
}

// listenerConfig is the listener's TLS configuration: conf's, with a
// self-signed certificate when conf has none (or is nil) for the dialers
// it does not pick another configuration for. The dialers that a picked
// configuration refuses are reported to failed, if not nil: quic-go does
// not tell the listener of a failed handshake.
func listenerConfig(conf *tls.Config, failed func(net.Addr, error)) (*tls.Config, error) {
	if conf == nil {
		conf = &tls.Config{}
	}
	c := withALPN(conf)
	if len(c.Certificates) == 0 && c.GetCertificate == nil {
		cert, err := selfSignedCertificate()
		if err != nil {
			return nil, err
		}
		c.Certificates = []tls.Certificate{cert}
	}
	if pick := c.GetConfigForClient; pick != nil {
		c.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			var remote net.Addr
			if hello.Conn != nil {
				remote = hello.Conn.RemoteAddr()
			}
			picked, err := pick(hello)
			if err != nil && failed != nil {
				failed(remote, err)
			}
			if picked == nil || err != nil {
				return picked, err
			}
			picked = withALPN(picked)
			if verify := picked.VerifyConnection; verify != nil && failed != nil {
				picked.VerifyConnection = func(cs tls.ConnectionState) error {
					err := verify(cs)
					if err != nil {
						failed(remote, err)
					}
					return err
				}
			}
			return picked, nil
		}
	}
	return c, nil
}

// selfSignedCertificate makes the listener's certificate: a fresh ECDSA
// P-256 key, valid from an hour ago (clock skew) for ten years.
func selfSignedCertificate() (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("generate key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("generate serial number: %w", err)
	}
	now := time.Now()
	template := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "georepl"},
		DNSNames:     []string{"georepl"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.AddDate(10, 0, 0),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, template, template, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("create certificate: %w", err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

// conn is a QUIC connection with one stream per channel.
type conn struct {
	qc      *quicgo.Conn
	streams [transports.NumChannels]stream
}

var (
	_ transports.ChannelBinding   = (*conn)(nil)
	_ transports.PeerCertificates = (*conn)(nil)
)

// stream is one channel's QUIC stream.
type stream struct {
	ch transports.Channel
	s  *quicgo.Stream
}

// Read reads from the stream. After the peer's Close it returns io.EOF;
// after the local Close, an error wrapping net.ErrClosed.
func (s *stream) Read(b []byte) (int, error) {
	n, err := s.s.Read(b)
	var appErr *quicgo.ApplicationError
	switch {
	case err == nil:
	case errors.As(err, &appErr) && appErr.Remote && appErr.ErrorCode == codeClosed:
		err = io.EOF
	default:
		err = fmt.Errorf("quic: channel %d: %w", s.ch, err)
	}
	return n, err
}

// Write writes to the stream; it blocks while flow control allows no more.
// Once the connection is closed, by either end, its errors wrap
// net.ErrClosed.
func (s *stream) Write(b []byte) (int, error) {
	n, err := s.s.Write(b)
	if err != nil {
		err = fmt.Errorf("quic: channel %d: %w", s.ch, err)
	}
	return n, err
}

// Stream returns channel ch's stream. It panics if ch >= NumChannels.
func (c *conn) Stream(ch transports.Channel) io.ReadWriter {
	if int(ch) >= transports.NumChannels {
		panic(fmt.Sprintf("quic: Stream(%d): only %d channels", ch, transports.NumChannels))
	}
	return &c.streams[ch]
}

// Close closes the QUIC connection with application error code 0. Data
// not yet acknowledged by the peer is dropped.
func (c *conn) Close() error {
	return c.qc.CloseWithError(codeClosed, "closed")
}

func (c *conn) LocalAddr() net.Addr  { return c.qc.LocalAddr() }
func (c *conn) RemoteAddr() net.Addr { return c.qc.RemoteAddr() }

// PeerCertificates returns the chain the peer presented, leaf first: a
// listener's, which is self-signed unless its Options.TLS gave one, and a
// dialer's only if its Options.TLS gave one (nil otherwise).
func (c *conn) PeerCertificates() []*x509.Certificate {
	return c.qc.ConnectionState().TLS.PeerCertificates
}

// ChannelBinding returns 32 bytes of TLS exported keying material with
// label ChannelBindingLabel and no context: the same on both ends of this
// connection, unknown to anyone else, different on every connection.
func (c *conn) ChannelBinding() ([]byte, error) {
	state := c.qc.ConnectionState().TLS
	ekm, err := state.ExportKeyingMaterial(ChannelBindingLabel, nil, channelBindingSize)
	if err != nil {
		return nil, fmt.Errorf("quic: channel binding: %w", err)
	}
	return ekm, nil
}
