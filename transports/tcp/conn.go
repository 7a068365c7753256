package tcp

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"

	"github.com/georepl/georepl/transports"
)

// channelConn is one channel's TCP connection: the socket, and what
// reads and writes it (the socket itself, or TLS over it).
type channelConn struct {
	sock *net.TCPConn
	rw   net.Conn
	tls  *tls.Conn  // nil in plaintext
	out  *tlsSocket // what tls writes to; nil in plaintext
}

// newTLSChannel is the channel of sock with TLS over it, made by
// tls.Client or tls.Server.
func newTLSChannel(sock *net.TCPConn, newTLS func(net.Conn) *tls.Conn) channelConn {
	out := &tlsSocket{TCPConn: sock, in: bufio.NewReaderSize(sock, readAheadSize)}
	tc := newTLS(out)
	return channelConn{sock: sock, rw: tc, tls: tc, out: out}
}

// coalesceSize is the most TLS record bytes a tlsSocket gathers before
// it sends them; readAheadSize, the most it reads at once.
const (
	coalesceSize  = 256 << 10
	readAheadSize = 256 << 10
)

// tlsSocket is the socket as a channel's TLS sees it: while a stream
// Write is under way, the records TLS writes are gathered and sent
// together, coalesceSize bytes at a time, by another goroutine while TLS
// encrypts the next ones, and the rest when the Write ends. Go's TLS
// encrypts and writes each record, 16 KiB at most, in turn, with a system
// call of its own: a 1 MiB frame took 64, each a TCP push, with no
// encryption while the kernel copied, and a frame's header went out alone
// before its payload. Outside a stream Write (the handshake, an alert)
// records go out at once.
//
// Reading, Go's TLS asks the socket for about one record at a time: in
// reads as much as has arrived, up to readAheadSize, in one system call.
type tlsSocket struct {
	*net.TCPConn
	in *bufio.Reader

	mu        sync.Mutex
	gathering int // stream Writes under way
	buf       []byte
	// spare is the other buffer, which a goroutine sends while busy,
	// reporting to sent.
	spare []byte
	busy  bool
	sent  chan error
	err   error // the first failed send: every later one fails
}

func (r *tlsSocket) Read(p []byte) (int, error) { return r.in.Read(p) }

func (r *tlsSocket) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err != nil {
		return 0, r.err
	}
	if r.gathering == 0 {
		if err := r.waitLocked(); err != nil {
			return 0, err
		}
		return r.TCPConn.Write(p)
	}
	if len(r.buf) > 0 && len(r.buf)+len(p) > coalesceSize {
		if err := r.handOffLocked(); err != nil {
			return 0, err
		}
	}
	r.buf = append(r.buf, p...)
	return len(p), nil
}

// waitLocked waits until the buffer being sent is out.
func (r *tlsSocket) waitLocked() error {
	if r.busy {
		r.busy = false
		if err := <-r.sent; err != nil && r.err == nil {
			r.err = err
		}
	}
	return r.err
}

// handOffLocked has the gathered records sent by another goroutine, once
// those it sends now are out.
func (r *tlsSocket) handOffLocked() error {
	if err := r.waitLocked(); err != nil {
		return err
	}
	if r.sent == nil {
		r.sent = make(chan error, 1)
	}
	out := r.buf
	r.buf, r.spare, r.busy = r.spare[:0], out, true
	go func() {
		_, err := r.TCPConn.Write(out)
		r.sent <- err
	}()
	return nil
}

// begin starts gathering records; end sends what was gathered and
// returns once it is out.
func (r *tlsSocket) begin() {
	r.mu.Lock()
	r.gathering++
	r.mu.Unlock()
}

func (r *tlsSocket) end() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.gathering--
	if err := r.waitLocked(); err != nil || len(r.buf) == 0 {
		return err
	}
	_, err := r.TCPConn.Write(r.buf)
	r.buf = r.buf[:0]
	if err != nil {
		r.err = err
	}
	return err
}

// peerLeaf is the certificate the peer presented on the channel, or nil.
func (c channelConn) peerLeaf() *x509.Certificate {
	if c.tls == nil {
		return nil
	}
	if certs := c.tls.ConnectionState().PeerCertificates; len(certs) > 0 {
		return certs[0]
	}
	return nil
}

// conn is a set of NumChannels TCP connections that fails as a whole.
type conn struct {
	socks   [transports.NumChannels]channelConn
	streams [transports.NumChannels]stream

	mu            sync.Mutex
	closedLocally bool
	failed        bool
	failedChannel transports.Channel
	failure       error // the first read or write error, which closed the rest
	closeErr      error // what closing the sockets returned
	socksClosed   bool
}

// stream is one channel's TCP connection inside a conn.
type stream struct {
	conn *conn
	ch   transports.Channel
	sock net.Conn
	out  *tlsSocket // nil in plaintext
}

// newConn makes the Conn of socks: a *tlsConn when they run TLS.
func newConn(socks [transports.NumChannels]channelConn) transports.Conn {
	c := &conn{socks: socks}
	for ch, s := range socks {
		c.streams[ch] = stream{conn: c, ch: transports.Channel(ch), sock: s.rw, out: s.out}
	}
	if socks[0].tls != nil {
		return &tlsConn{c}
	}
	return c
}

// tlsConn is a conn whose channels run TLS.
type tlsConn struct {
	*conn
}

var (
	_ transports.ChannelBinding   = (*tlsConn)(nil)
	_ transports.PeerCertificates = (*tlsConn)(nil)
)

// ChannelBindingLabel is the TLS exporter label of ChannelBinding.
const ChannelBindingLabel = "EXPORTER-georepl-channel-binding"

// ChannelBinding returns 32 bytes of keying material exported from the
// control channel's TLS session (label ChannelBindingLabel, no context).
// The data channel carries the same peer certificate (Dial and the
// listener check it), so binding the control channel binds the peer.
func (c *tlsConn) ChannelBinding() ([]byte, error) {
	state := c.socks[transports.ChannelControl].tls.ConnectionState()
	ekm, err := state.ExportKeyingMaterial(ChannelBindingLabel, nil, 32)
	if err != nil {
		return nil, fmt.Errorf("tcp: channel binding: %w", err)
	}
	return ekm, nil
}

// PeerCertificates returns the chain the peer presented on the control
// channel.
func (c *tlsConn) PeerCertificates() []*x509.Certificate {
	return c.socks[transports.ChannelControl].tls.ConnectionState().PeerCertificates
}

// Read reads from the channel's TCP connection. Its first error fails the
// whole Conn.
func (s *stream) Read(b []byte) (int, error) {
	n, err := s.sock.Read(b)
	if err != nil {
		err = s.conn.fail(s.ch, err)
	}
	return n, err
}

// Write writes to the channel's TCP connection. Its first error fails the
// whole Conn.
func (s *stream) Write(b []byte) (int, error) {
	if s.out != nil {
		s.out.begin()
	}
	n, err := s.sock.Write(b)
	if s.out != nil {
		if sendErr := s.out.end(); err == nil && sendErr != nil {
			n, err = 0, sendErr
		}
	}
	if err != nil {
		err = s.conn.fail(s.ch, err)
	}
	return n, err
}

// SyscallConn gives access to the channel's socket, so that a plugin
// serving this transport (plugins/sdk) can hand the socket to georepl.
// A channel with TLS has none to give (its socket carries ciphertext that
// only this process can read): the error wraps errors.ErrUnsupported.
func (s *stream) SyscallConn() (syscall.RawConn, error) {
	tc, ok := s.sock.(*net.TCPConn)
	if !ok {
		return nil, fmt.Errorf("tcp: channel %d runs TLS in this process, so its socket cannot be handed over: %w", s.ch, errors.ErrUnsupported)
	}
	return tc.SyscallConn()
}

// fail records err, seen on channel ch, as the Conn's failure if it is
// the first, closes every channel, and returns the error the caller on ch
// should see: err itself (io.EOF unwrapped, as io.Reader requires), or,
// when ch only failed because another channel had, an error saying so that
// wraps that channel's failure.
func (c *conn) fail(ch transports.Channel, err error) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.closedLocally && !c.failed {
		c.failed, c.failedChannel, c.failure = true, ch, err
		c.closeSocksLocked()
	}
	switch {
	case err == io.EOF && (c.closedLocally || c.failedChannel == ch):
		return io.EOF
	case c.closedLocally || c.failedChannel == ch:
		return fmt.Errorf("tcp: channel %d: %w", ch, err)
	default:
		return fmt.Errorf("tcp: channel %d closed because channel %d failed: %w", ch, c.failedChannel, c.failure)
	}
}

func (c *conn) closeSocksLocked() {
	if c.socksClosed {
		return
	}
	c.socksClosed = true
	var errs []error
	// The sockets, not TLS: a close_notify could block on a peer that
	// does not read, and the peer reads io.EOF either way.
	for _, s := range c.socks {
		if err := s.sock.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	c.closeErr = errors.Join(errs...)
}

// Stream returns channel ch's stream. It panics if ch >= NumChannels.
func (c *conn) Stream(ch transports.Channel) io.ReadWriter {
	if int(ch) >= transports.NumChannels {
		panic(fmt.Sprintf("tcp: Stream(%d): only %d channels", ch, transports.NumChannels))
	}
	return &c.streams[ch]
}

// Close closes every channel's TCP connection. Pending reads and writes
// return errors wrapping net.ErrClosed. Only the first call can return an
// error, and only if the connection had not failed before.
func (c *conn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closedLocally {
		return nil
	}
	c.closedLocally = true
	if c.socksClosed {
		return nil
	}
	c.closeSocksLocked()
	if c.closeErr != nil {
		return fmt.Errorf("tcp: close: %w", c.closeErr)
	}
	return nil
}

// LocalAddr returns the local address of the control channel's TCP
// connection.
func (c *conn) LocalAddr() net.Addr { return c.socks[transports.ChannelControl].sock.LocalAddr() }

// RemoteAddr returns the remote address of the control channel's TCP
// connection.
func (c *conn) RemoteAddr() net.Addr { return c.socks[transports.ChannelControl].sock.RemoteAddr() }
