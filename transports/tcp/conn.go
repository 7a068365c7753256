package tcp

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"

	"github.com/georepl/georepl/transports"
)

// conn is a set of NumChannels TCP connections that fails as a whole.
type conn struct {
	socks   [transports.NumChannels]*net.TCPConn
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
	sock *net.TCPConn
}

func newConn(socks [transports.NumChannels]*net.TCPConn) *conn {
	c := &conn{socks: socks}
	for ch, sock := range socks {
		c.streams[ch] = stream{conn: c, ch: transports.Channel(ch), sock: sock}
	}
	return c
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
	n, err := s.sock.Write(b)
	if err != nil {
		err = s.conn.fail(s.ch, err)
	}
	return n, err
}

// SyscallConn gives access to the channel's socket, so that a plugin
// serving this transport (plugins/sdk) can hand the socket to georepl.
func (s *stream) SyscallConn() (syscall.RawConn, error) { return s.sock.SyscallConn() }

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
	for _, sock := range c.socks {
		if err := sock.Close(); err != nil {
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
func (c *conn) LocalAddr() net.Addr { return c.socks[transports.ChannelControl].LocalAddr() }

// RemoteAddr returns the remote address of the control channel's TCP
// connection.
func (c *conn) RemoteAddr() net.Addr { return c.socks[transports.ChannelControl].RemoteAddr() }
