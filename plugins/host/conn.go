package host

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"

	"github.com/georepl/georepl/plugins/internal/control"
	"github.com/georepl/georepl/transports"
)

// conn is a connection whose sockets the plugin handed over: the daemon
// reads and writes them directly. Like the built-in tcp transport's, it
// fails as a whole: the first error on any stream closes every socket.
type conn struct {
	name          string // the plugin's, for errors
	streams       [transports.NumChannels]stream
	local, remote net.Addr

	mu            sync.Mutex
	closedLocally bool
	failed        bool
	failedChannel transports.Channel
	failure       error
	closeErr      error
	socksClosed   bool
}

// boundConn is a conn over a secured channel: it has a channel binding.
type boundConn struct {
	*conn
	binding []byte
}

func (c *boundConn) ChannelBinding() ([]byte, error) { return c.binding, nil }

type stream struct {
	conn *conn
	ch   transports.Channel
	sock io.ReadWriteCloser
}

// newConn makes a Conn of the sockets received for one connection, and
// reply's addresses and binding. It takes ownership of files.
func newConn(name string, files []*os.File, reply *control.ConnReply) (transports.Conn, error) {
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	if len(files) != transports.NumChannels {
		return nil, fmt.Errorf("plugin %q handed over %d sockets for a connection, want %d", name, len(files), transports.NumChannels)
	}
	c := &conn{name: name, local: reply.Local, remote: reply.Remote}
	for ch, f := range files {
		sock, err := socketStream(f)
		if err != nil {
			for _, s := range c.streams[:ch] {
				s.sock.Close()
			}
			return nil, fmt.Errorf("plugin %q: channel %d: %w", name, ch, err)
		}
		c.streams[ch] = stream{conn: c, ch: transports.Channel(ch), sock: sock}
	}
	if reply.HasBinding {
		return &boundConn{conn: c, binding: reply.Binding}, nil
	}
	return c, nil
}

// socketStream wraps a received socket: as a net.Conn for the families
// package net knows (inet, unix), otherwise (vsock, say) as a non-blocking
// os.File, which the runtime's poller serves as well.
func socketStream(f *os.File) (io.ReadWriteCloser, error) {
	if nc, err := net.FileConn(f); err == nil {
		return nc, nil
	}
	fd, err := dupNonblocking(f)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), f.Name()), nil
}

func (s *stream) Read(b []byte) (int, error) {
	n, err := s.sock.Read(b)
	if err != nil {
		err = s.conn.fail(s.ch, err)
	}
	return n, err
}

func (s *stream) Write(b []byte) (int, error) {
	n, err := s.sock.Write(b)
	if err != nil {
		err = s.conn.fail(s.ch, err)
	}
	return n, err
}

// fail records err, seen on ch, as the connection's failure if it is the
// first, closes every socket, and returns what the caller on ch sees: err
// itself (io.EOF unwrapped, as io.Reader requires), or an error saying ch
// closed because another channel failed, wrapping that failure.
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
		return fmt.Errorf("plugin %q: channel %d: %w", c.name, ch, err)
	default:
		return fmt.Errorf("plugin %q: channel %d closed because channel %d failed: %w", c.name, ch, c.failedChannel, c.failure)
	}
}

func (c *conn) closeSocksLocked() {
	if c.socksClosed {
		return
	}
	c.socksClosed = true
	var errs []error
	for _, s := range c.streams {
		if err := s.sock.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	c.closeErr = errors.Join(errs...)
}

func (c *conn) Stream(ch transports.Channel) io.ReadWriter {
	if int(ch) >= transports.NumChannels {
		panic(fmt.Sprintf("plugin %q: Stream(%d): only %d channels", c.name, ch, transports.NumChannels))
	}
	return &c.streams[ch]
}

// Close closes every socket; pending reads and writes return errors
// wrapping net.ErrClosed (os.ErrClosed for sockets of other families).
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
		return fmt.Errorf("plugin %q: close: %w", c.name, c.closeErr)
	}
	return nil
}

func (c *conn) LocalAddr() net.Addr  { return c.local }
func (c *conn) RemoteAddr() net.Addr { return c.remote }
