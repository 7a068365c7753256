package tcp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/georepl/georepl/transports"
)

// listener pairs incoming TCP connections into Conns.
type listener struct {
	ln     *net.TCPListener
	opts   transports.Options // with defaults
	ready  chan *conn         // complete connections, handed to Accept
	closed chan struct{}      // closed by Close

	// workers counts acceptLoop and the preamble readers, so that Close
	// returns only when none is left.
	workers   sync.WaitGroup
	closeOnce sync.Once

	mu       sync.Mutex
	isClosed bool
	reading  map[*net.TCPConn]struct{} // preambles being read, closed by Close
	pending  map[connID]*pendingSet
}

// pendingSet holds the channels of one connection that have arrived.
type pendingSet struct {
	socks   [transports.NumChannels]*net.TCPConn
	arrived int
	expiry  *time.Timer
}

func (s *pendingSet) closeAll() {
	for _, sock := range s.socks {
		if sock != nil {
			sock.Close()
		}
	}
}

// acceptLoop accepts TCP connections until the listener closes.
func (l *listener) acceptLoop() {
	for {
		sock, err := l.ln.AcceptTCP()
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			// Out of descriptors or a connection reset before accept:
			// wait a little rather than spin.
			select {
			case <-l.closed:
				return
			case <-time.After(50 * time.Millisecond):
			}
			continue
		}
		l.mu.Lock()
		if l.isClosed {
			l.mu.Unlock()
			sock.Close()
			return
		}
		l.reading[sock] = struct{}{}
		l.mu.Unlock()
		l.workers.Go(func() { l.readPreamble(sock) })
	}
}

// readPreamble reads one TCP connection's preamble and files it in its
// set; the goroutine that completes a set answers and hands it to Accept.
func (l *listener) readPreamble(sock *net.TCPConn) {
	sock.SetDeadline(time.Now().Add(preambleTimeout))
	var preamble [preambleSize]byte
	_, err := io.ReadFull(sock, preamble[:])
	l.mu.Lock()
	delete(l.reading, sock)
	l.mu.Unlock()
	if err != nil {
		sock.Close()
		return
	}
	id, ch, ok := parsePreamble(preamble)
	if !ok {
		sock.Close()
		return
	}

	set := l.file(id, ch, sock)
	if set == nil {
		return
	}
	c, err := l.answer(set.socks)
	if err != nil {
		set.closeAll()
		return
	}
	select {
	case l.ready <- c:
	case <-l.closed:
		c.Close()
	}
}

// file adds sock as channel ch of connection id. It returns the set when
// sock completed it, and nil otherwise (sock is then kept in the set or,
// if it does not fit, closed).
func (l *listener) file(id connID, ch transports.Channel, sock *net.TCPConn) *pendingSet {
	l.mu.Lock()
	defer l.mu.Unlock()
	set := l.pending[id]
	switch {
	case l.isClosed:
		sock.Close()
		return nil
	case set == nil && len(l.pending) >= maxPendingSets:
		sock.Close()
		return nil
	case set == nil:
		set = &pendingSet{}
		set.expiry = time.AfterFunc(setTimeout, func() { l.expire(id, set) })
		l.pending[id] = set
	case set.socks[ch] != nil:
		sock.Close() // the channel came twice: not a georepl dialer
		return nil
	}
	set.socks[ch] = sock
	set.arrived++
	if set.arrived < transports.NumChannels {
		return nil
	}
	set.expiry.Stop()
	delete(l.pending, id)
	return set
}

// expire drops set if it is still incomplete.
func (l *listener) expire(id connID, set *pendingSet) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.pending[id] == set {
		delete(l.pending, id)
		set.closeAll()
	}
}

// answer tells the dialer on every channel that the connection is set up,
// and makes the Conn.
func (l *listener) answer(socks [transports.NumChannels]*net.TCPConn) (*conn, error) {
	for _, sock := range socks {
		sock.SetDeadline(time.Now().Add(preambleTimeout))
		if _, err := sock.Write(answerBytes()); err != nil {
			return nil, err
		}
		if err := tune(sock, l.opts); err != nil {
			return nil, err
		}
		if err := sock.SetDeadline(time.Time{}); err != nil {
			return nil, err
		}
	}
	return newConn(socks), nil
}

// Accept returns the next connection whose channels have all arrived.
func (l *listener) Accept(ctx context.Context) (transports.Conn, error) {
	select {
	case <-l.closed:
		return nil, fmt.Errorf("tcp: accept on %s: %w", l.ln.Addr(), net.ErrClosed)
	default:
	}
	select {
	case c := <-l.ready:
		return c, nil
	case <-l.closed:
		return nil, fmt.Errorf("tcp: accept on %s: %w", l.ln.Addr(), net.ErrClosed)
	case <-ctx.Done():
		return nil, fmt.Errorf("tcp: accept on %s: %w", l.ln.Addr(), ctx.Err())
	}
}

// Close stops listening, closes every connection not yet accepted and
// returns once the listener's goroutines have ended. Accepted connections
// stay open.
func (l *listener) Close() error {
	var err error
	l.closeOnce.Do(func() {
		l.mu.Lock()
		l.isClosed = true
		for sock := range l.reading {
			sock.Close()
		}
		for id, set := range l.pending {
			set.expiry.Stop()
			set.closeAll()
			delete(l.pending, id)
		}
		l.mu.Unlock()
		close(l.closed)
		err = l.ln.Close()
		l.workers.Wait()
	})
	return err
}

// Addr returns the address the listener is bound to.
func (l *listener) Addr() net.Addr { return l.ln.Addr() }
