package mem

import (
	"context"
	"fmt"
	"io"
	"net"
	"sync"

	"github.com/georepl/georepl/transports"
)

// link is what both ends of a connection share, so that breaking it from
// either end is counted once.
type link struct {
	once sync.Once
	// pipes[ch][0] carries dialer→acceptor, pipes[ch][1] the reverse.
	pipes [transports.NumChannels][2]*pipe
}

// conn is one end of an in-memory connection.
type conn struct {
	network *Network
	link    *link
	local   Addr
	remote  Addr
	streams [transports.NumChannels]stream
	peer    *conn
	closing sync.Once
}

// stream is one channel seen from one end.
type stream struct {
	in, out *pipe
}

func (s *stream) Read(b []byte) (int, error)  { return s.in.read(b) }
func (s *stream) Write(b []byte) (int, error) { return s.out.write(b) }

func newConnPair(n *Network, dialerAddr, acceptorAddr Addr) (dialer, acceptor *conn) {
	l := &link{}
	dialer = &conn{network: n, link: l, local: dialerAddr, remote: acceptorAddr}
	acceptor = &conn{network: n, link: l, local: acceptorAddr, remote: dialerAddr}
	for ch := range transports.NumChannels {
		toAcceptor, toDialer := newPipe(PipeCapacity), newPipe(PipeCapacity)
		l.pipes[ch] = [2]*pipe{toAcceptor, toDialer}
		dialer.streams[ch] = stream{in: toDialer, out: toAcceptor}
		acceptor.streams[ch] = stream{in: toAcceptor, out: toDialer}
	}
	dialer.peer, acceptor.peer = acceptor, dialer
	return dialer, acceptor
}

// Stream returns channel ch's stream. It panics if ch >= NumChannels.
func (c *conn) Stream(ch transports.Channel) io.ReadWriter {
	if int(ch) >= transports.NumChannels {
		panic(fmt.Sprintf("mem: Stream(%d): only %d channels", ch, transports.NumChannels))
	}
	return &c.streams[ch]
}

// Close closes this end: its own reads and writes fail with net.ErrClosed,
// the peer reads what was already buffered and then io.EOF, and the peer's
// writes fail with io.ErrClosedPipe. Close always returns nil.
func (c *conn) Close() error {
	c.closing.Do(func() {
		for i := range c.streams {
			c.streams[i].out.closeWriter()
			c.streams[i].in.closeReader()
		}
		c.network.forget(c)
	})
	return nil
}

// breakLink fails every pipe of the connection with ErrBroken and reports
// whether this call was the one that cut it.
func (c *conn) breakLink() bool {
	cut := false
	c.link.once.Do(func() {
		cut = true
		for _, pair := range c.link.pipes {
			pair[0].breakWith(ErrBroken)
			pair[1].breakWith(ErrBroken)
		}
	})
	c.network.forget(c)
	c.network.forget(c.peer)
	return cut
}

func (c *conn) LocalAddr() net.Addr  { return c.local }
func (c *conn) RemoteAddr() net.Addr { return c.remote }

// listener queues dialed connections until Accept takes them.
type listener struct {
	network *Network
	addr    Addr

	mu       sync.Mutex
	queue    []*conn
	isClosed bool
	closed   chan struct{} // closed by Close
	arrived  chan struct{} // holds a token when queue may be non-empty
}

// enqueue queues c for Accept; it reports false if l is closed.
func (l *listener) enqueue(c *conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.isClosed {
		return false
	}
	l.queue = append(l.queue, c)
	select {
	case l.arrived <- struct{}{}:
	default:
	}
	return true
}

// Accept returns the next dialed connection.
func (l *listener) Accept(ctx context.Context) (transports.Conn, error) {
	for {
		l.mu.Lock()
		if l.isClosed {
			l.mu.Unlock()
			return nil, fmt.Errorf("mem: accept on %q: %w", l.addr, net.ErrClosed)
		}
		if len(l.queue) > 0 {
			c := l.queue[0]
			l.queue[0] = nil
			l.queue = l.queue[1:]
			l.mu.Unlock()
			return c, nil
		}
		l.mu.Unlock()
		select {
		case <-l.arrived:
		case <-l.closed:
		case <-ctx.Done():
			return nil, fmt.Errorf("mem: accept on %q: %w", l.addr, ctx.Err())
		}
	}
}

// Close stops listening, frees the address and closes the connections
// that were dialed but not accepted.
func (l *listener) Close() error {
	l.mu.Lock()
	if l.isClosed {
		l.mu.Unlock()
		return nil
	}
	l.isClosed = true
	pending := l.queue
	l.queue = nil
	close(l.closed)
	l.mu.Unlock()
	l.network.unlisten(l)
	for _, c := range pending {
		c.Close()
	}
	return nil
}

func (l *listener) Addr() net.Addr { return l.addr }
