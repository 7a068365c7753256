package sdk

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/georepl/georepl/transports"
)

// DialChannels and ListenChannels make a transport of any stream socket:
// a connection is transports.NumChannels sockets, which the listener pairs
// by a hello each dialed socket starts with (8 random bytes naming the
// connection, 1 byte the channel) and answers with one byte once it has
// them all. Connections made of kernel sockets (*net.TCPConn,
// *net.UnixConn) are handed to georepl; their bytes never cross the
// plugin.
const helloSize = 9

// Bounds of a ChannelListener. Variables so that tests can shorten them.
var (
	// helloTimeout bounds the wait for a socket's hello.
	helloTimeout = 5 * time.Second
	// pairTimeout bounds the wait for a connection's other channels.
	pairTimeout = 10 * time.Second
	// maxUnaccepted bounds the connections a listener holds that Accept
	// has not taken, complete or not: beyond it, new ones are refused.
	maxUnaccepted = 64
)

// DialChannels dials a connection for a listener of ListenChannels: one
// socket per channel, each opened by dial, named by a hello. It returns
// once the listener has every channel, and gives up when ctx ends, with
// an error wrapping ctx's.
func DialChannels(ctx context.Context, dial func(context.Context) (net.Conn, error)) (transports.Conn, error) {
	var c channelConn
	err := c.dial(ctx, dial)
	if ctx.Err() != nil {
		err = fmt.Errorf("%w (%v)", ctx.Err(), err)
	}
	if err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// channelConn is a connection of one socket per channel. Its Close only
// closes the sockets: after a hand-off, that releases the plugin's
// descriptors and leaves georepl's open.
type channelConn [transports.NumChannels]net.Conn

func (c channelConn) Stream(ch transports.Channel) io.ReadWriter { return c[ch] }
func (c channelConn) LocalAddr() net.Addr                        { return c[0].LocalAddr() }
func (c channelConn) RemoteAddr() net.Addr                       { return c[0].RemoteAddr() }

func (c channelConn) Close() error {
	var errs []error
	for _, s := range c {
		if s != nil {
			errs = append(errs, s.Close())
		}
	}
	return errors.Join(errs...)
}

func (c *channelConn) dial(ctx context.Context, dial func(context.Context) (net.Conn, error)) (err error) {
	for ch := range c {
		if c[ch], err = dial(ctx); err != nil {
			return fmt.Errorf("channel %d: %w", ch, err)
		}
	}
	// A silent listener must not hold Dial beyond ctx.
	stop := context.AfterFunc(ctx, func() {
		for _, s := range c {
			s.SetDeadline(time.Unix(1, 0))
		}
	})
	defer stop()
	var hello [helloSize]byte
	rand.Read(hello[:8])
	for ch, s := range c {
		hello[8] = byte(ch)
		if _, err := s.Write(hello[:]); err != nil {
			return fmt.Errorf("channel %d: hello: %w", ch, err)
		}
	}
	for ch, s := range c {
		if _, err := io.ReadFull(s, hello[:1]); err != nil {
			return fmt.Errorf("channel %d: the listener's answer: %w", ch, err)
		}
	}
	return nil
}

// ListenChannels returns a listener that accepts, on ln, connections that
// DialChannels dials. It owns ln. Hellos are read concurrently, each
// within seconds; a connection whose channels do not all come within
// seconds is dropped, and so are new ones while too many wait for Accept.
func ListenChannels(ln net.Listener) transports.Listener {
	l := &channelListener{ln: ln, ready: make(chan channelConn), closed: make(chan struct{}),
		sets: map[[8]byte]*halfSet{}, greeting: map[net.Conn]bool{}}
	l.wg.Go(l.serve)
	return l
}

type channelListener struct {
	ln        net.Listener
	ready     chan channelConn
	closed    chan struct{}
	closeOnce sync.Once
	wg        sync.WaitGroup

	mu         sync.Mutex
	sets       map[[8]byte]*halfSet // connections with channels missing
	greeting   map[net.Conn]bool    // sockets whose hello is awaited
	unaccepted int                  // connections Accept has not taken
}

type halfSet struct {
	c      channelConn
	expire *time.Timer
}

func (l *channelListener) serve() {
	for {
		s, err := l.ln.Accept()
		if err != nil {
			select {
			case <-l.closed:
				return
			case <-time.After(50 * time.Millisecond): // out of descriptors, say: try again
				continue
			}
		}
		l.mu.Lock()
		if l.isClosed() { // Close already closed the sockets it knew
			l.mu.Unlock()
			s.Close()
			return
		}
		l.greeting[s] = true
		l.mu.Unlock()
		l.wg.Go(func() { l.greet(s) })
	}
}

// greet reads s's hello and adds s to its connection, which it queues for
// Accept once complete.
func (l *channelListener) greet(s net.Conn) {
	var hello [helloSize]byte
	s.SetReadDeadline(time.Now().Add(helloTimeout))
	_, err := io.ReadFull(s, hello[:])
	s.SetReadDeadline(time.Time{})
	id, ch := [8]byte(hello[:8]), hello[8]
	l.mu.Lock()
	delete(l.greeting, s)
	set := l.sets[id]
	switch {
	case err != nil || ch >= transports.NumChannels || l.isClosed():
		set = nil
	case set == nil && l.unaccepted < maxUnaccepted:
		set = &halfSet{}
		set.expire = time.AfterFunc(pairTimeout, func() { l.expire(id, set) })
		l.sets[id] = set
		l.unaccepted++
	case set != nil && set.c[ch] != nil:
		set = nil // a channel twice
	}
	if set == nil {
		l.mu.Unlock()
		s.Close()
		return
	}
	set.c[ch] = s
	for _, s := range set.c {
		if s == nil {
			l.mu.Unlock()
			return
		}
	}
	delete(l.sets, id)
	set.expire.Stop()
	l.mu.Unlock()
	for _, s := range set.c {
		s.Write([]byte{1})
	}
	select {
	case l.ready <- set.c:
	case <-l.closed:
		set.c.Close()
	}
	l.mu.Lock()
	l.unaccepted--
	l.mu.Unlock()
}

// expire drops set, still incomplete pairTimeout after its first channel.
func (l *channelListener) expire(id [8]byte, set *halfSet) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.sets[id] == set {
		delete(l.sets, id)
		l.unaccepted--
		set.c.Close()
	}
}

func (l *channelListener) isClosed() bool {
	select {
	case <-l.closed:
		return true
	default:
		return false
	}
}

func (l *channelListener) Accept(ctx context.Context) (transports.Conn, error) {
	if l.isClosed() {
		return nil, fmt.Errorf("accept on %s: %w", l.ln.Addr(), net.ErrClosed)
	}
	select {
	case c := <-l.ready:
		return c, nil
	case <-l.closed:
		return nil, fmt.Errorf("accept on %s: %w", l.ln.Addr(), net.ErrClosed)
	case <-ctx.Done():
		return nil, fmt.Errorf("accept on %s: %w", l.ln.Addr(), ctx.Err())
	}
}

// Close stops listening and closes every connection not accepted yet.
func (l *channelListener) Close() error {
	var err error
	l.closeOnce.Do(func() {
		close(l.closed)
		err = l.ln.Close()
		l.mu.Lock()
		for id, set := range l.sets {
			set.expire.Stop()
			set.c.Close()
			delete(l.sets, id)
		}
		for s := range l.greeting {
			s.Close()
		}
		l.mu.Unlock()
		l.wg.Wait()
	})
	return err
}

func (l *channelListener) Addr() net.Addr { return l.ln.Addr() }
