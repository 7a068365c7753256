package host

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"

	"github.com/georepl/georepl/plugins/internal/control"
	"github.com/georepl/georepl/plugins/internal/ring"
	"github.com/georepl/georepl/transports"
)

// conn is a connection whose sockets (or shared-memory rings, or gRPC
// streams) the plugin handed over: the daemon reads and writes them
// directly. Like the built-in tcp transport's, it
// fails as a whole: the first error on any stream closes every socket.
type conn struct {
	name          string // the plugin's, for errors
	plane         string // its data plane
	streams       [transports.NumChannels]stream
	local, remote net.Addr

	mu            sync.Mutex
	closedLocally bool
	failed        bool
	failedChannel transports.Channel
	failure       error
	closeErr      error
	socksClosed   bool
	done          chan struct{} // closed with the streams
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

// newConn makes a Conn of the descriptors received for one connection,
// and reply's addresses and binding. It takes ownership of files. gone is
// closed when the plugin process exits: a ring connection, whose bytes go
// through the plugin, fails then.
func newConn(name string, files []*os.File, reply *control.ConnReply, gone <-chan struct{}) (transports.Conn, error) {
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	c := &conn{name: name, plane: reply.DataPlane, local: reply.Local, remote: reply.Remote, done: make(chan struct{})}
	var err error
	switch reply.DataPlane {
	case control.DataPlaneSocket:
		err = c.openSockets(files)
	case control.DataPlaneRing:
		if err = c.openRings(files); err == nil {
			go c.failWhenGone(gone)
		}
	default:
		err = fmt.Errorf("unknown data plane %q", reply.DataPlane)
	}
	if err != nil {
		return nil, fmt.Errorf("plugin %q: %w", name, err)
	}
	return withBinding(c, reply), nil
}

// withBinding returns c with reply's channel binding, if it has one.
func withBinding(c *conn, reply *control.ConnReply) transports.Conn {
	if reply.HasBinding {
		return &boundConn{conn: c, binding: reply.Binding}
	}
	return c
}

func (c *conn) openSockets(files []*os.File) error {
	if len(files) != transports.NumChannels {
		return fmt.Errorf("%d sockets handed over for a connection, want %d", len(files), transports.NumChannels)
	}
	for ch, f := range files {
		sock, err := socketStream(f)
		if err != nil {
			c.closeOpened(ch)
			return fmt.Errorf("channel %d: %w", ch, err)
		}
		c.streams[ch] = stream{conn: c, ch: transports.Channel(ch), sock: sock}
	}
	return nil
}

// openRings maps the rings of every channel: per channel, host to plugin
// (the host produces) then plugin to host (the host consumes).
func (c *conn) openRings(files []*os.File) error {
	if len(files) != control.RingFDs {
		return fmt.Errorf("%d descriptors handed over for a ring connection, want %d", len(files), control.RingFDs)
	}
	for ch := range transports.NumChannels {
		var rs [2]*ring.Ring
		for i := range rs {
			at := (2*ch + i) * 3
			r, err := ring.Open(ring.FilesFrom(files[at : at+3]))
			if err != nil {
				if rs[0] != nil {
					rs[0].Abort()
				}
				c.closeOpened(ch)
				return fmt.Errorf("channel %d: %w", ch, err)
			}
			rs[i] = r
		}
		c.streams[ch] = stream{conn: c, ch: transports.Channel(ch), sock: ringStream{out: rs[0], in: rs[1]}}
	}
	return nil
}

// closeOpened closes the streams of the channels before n.
func (c *conn) closeOpened(n int) {
	for _, s := range c.streams[:n] {
		s.sock.Close()
	}
}

// failWhenGone fails c when its plugin exits: nobody moves its bytes any
// more.
func (c *conn) failWhenGone(gone <-chan struct{}) {
	select {
	case <-gone:
		c.fail(transports.ChannelData, fmt.Errorf("%w: plugin %q exited, and this connection's data went through it", control.ErrPluginUnavailable, c.name))
	case <-c.done:
	}
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

// ringStream is a channel over two rings.
type ringStream struct {
	out, in *ring.Ring
}

func (r ringStream) Read(b []byte) (int, error)  { return r.in.Read(b) }
func (r ringStream) Write(b []byte) (int, error) { return r.out.Write(b) }

// Close ends both rings: the plugin reads what is left of out, then end of
// stream, and its writes into in fail.
func (r ringStream) Close() error {
	r.out.Abort()
	r.in.Abort()
	return nil
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
	close(c.done)
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

// DataPlane says how the connection's bytes travel: DataPlaneSocket,
// DataPlaneRing or DataPlaneStream.
func (c *conn) DataPlane() string { return c.plane }

func (c *conn) LocalAddr() net.Addr  { return c.local }
func (c *conn) RemoteAddr() net.Addr { return c.remote }
