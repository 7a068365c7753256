package tcp

import (
	"context"
	"crypto/tls"
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
	opts   transports.Options   // with defaults
	tls    *tls.Config          // the server's, nil without opts.TLS
	ready  chan transports.Conn // complete connections, handed to Accept
	closed chan struct{}        // closed by Close
	// incomplete holds a slot for every TCP connection from its accept
	// until its set is complete or it is closed.
	incomplete *transports.Admission

	// workers counts acceptLoop and the preamble readers, so that Close
	// returns only when none is left.
	workers   sync.WaitGroup
	closeOnce sync.Once

	mu       sync.Mutex
	isClosed bool
	reading  map[*net.TCPConn]struct{} // preambles being read, closed by Close
	pending  map[connID]*pendingSet
}

// incoming is an accepted TCP connection that is not part of a complete
// set yet.
type incoming struct {
	sock *net.TCPConn
	cc   channelConn // once the preamble (and TLS handshake) is done
	slot *transports.Admitted
	// set and id are the set it was filed in, once its preamble is read;
	// under listener.mu.
	set *pendingSet
	id  connID
}

func (in *incoming) close() {
	in.sock.Close()
	in.slot.Release()
}

// pendingSet holds the channels of one connection that have arrived.
type pendingSet struct {
	socks   [transports.NumChannels]*incoming
	arrived int
	expiry  *time.Timer
}

// any returns one of the channels that arrived.
func (s *pendingSet) any() *incoming {
	for _, in := range s.socks {
		if in != nil {
			return in
		}
	}
	return nil
}

func (s *pendingSet) closeAll() {
	for _, in := range s.socks {
		if in != nil {
			in.close()
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
		in := &incoming{sock: sock}
		// Admit calls evict on this goroutine only, after in.slot is set.
		in.slot = l.incomplete.Admit(transports.Source(sock.RemoteAddr()), func() { l.evict(in) })
		if in.slot == nil {
			sock.Close() // its address holds its share of slots already
			continue
		}
		l.mu.Lock()
		if l.isClosed {
			l.mu.Unlock()
			in.close()
			return
		}
		l.reading[sock] = struct{}{}
		l.mu.Unlock()
		l.workers.Go(func() { l.readPreamble(in) })
	}
}

// evict closes in, whose slot a newer connection took, with the set it
// belongs to.
func (l *listener) evict(in *incoming) {
	l.mu.Lock()
	set := in.set
	if set != nil && l.pending[in.id] == set {
		set.expiry.Stop()
		delete(l.pending, in.id)
	} else {
		set = nil // not filed yet, or its set is complete or gone
	}
	l.mu.Unlock()
	if set != nil {
		set.closeAll()
	} else {
		in.sock.Close()
	}
}

// readPreamble reads one TCP connection's preamble, runs the TLS
// handshake if the dialer asked for it, and files the connection in its
// set; the goroutine that completes a set answers and hands it to Accept.
func (l *listener) readPreamble(in *incoming) {
	sock := in.sock
	sock.SetDeadline(time.Now().Add(preambleTimeout))
	var preamble [preambleSize]byte
	_, err := io.ReadFull(sock, preamble[:])
	if err == nil {
		in.cc, err = l.secure(sock, preamble)
	}
	l.mu.Lock()
	delete(l.reading, sock)
	l.mu.Unlock()
	if err != nil {
		in.close()
		return
	}
	id, ch, _, _ := parsePreamble(preamble)
	set := l.file(id, ch, in)
	if set == nil {
		return
	}
	c, err := l.answer(set)
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

// errBadPreamble is secure's error for a preamble that is not georepl's.
var errBadPreamble = errors.New("not a georepl preamble")

// secure checks preamble and, when it asks for TLS, runs the server's
// handshake on sock. A dialer refused for its TLS is reported to
// opts.SetupFailed.
func (l *listener) secure(sock *net.TCPConn, preamble [preambleSize]byte) (channelConn, error) {
	_, _, withTLS, ok := parsePreamble(preamble)
	switch {
	case !ok:
		return channelConn{}, errBadPreamble
	case !withTLS:
		return channelConn{sock: sock, rw: sock}, nil
	case l.tls == nil:
		sock.Write(answerBytes(statusNoTLS))
		err := errors.New("tcp: the dialer asked for TLS, which this listener does not offer (no tls block on this node?)")
		l.setupFailed(sock, err)
		return channelConn{}, err
	}
	cc := newTLSChannel(sock, func(c net.Conn) *tls.Conn { return tls.Server(c, l.tls) })
	if err := cc.tls.Handshake(); err != nil {
		err = fmt.Errorf("tcp: TLS handshake: %w", err)
		l.setupFailed(sock, err)
		return channelConn{}, err
	}
	return cc, nil
}

func (l *listener) setupFailed(sock *net.TCPConn, err error) {
	if l.opts.SetupFailed != nil {
		l.opts.SetupFailed(sock.RemoteAddr(), err)
	}
}

// file adds in as channel ch of connection id. It returns the set when
// in completed it, its slots given back, and nil otherwise (in is then
// kept in the set or, if it does not fit, closed).
func (l *listener) file(id connID, ch transports.Channel, in *incoming) *pendingSet {
	l.mu.Lock()
	defer l.mu.Unlock()
	set := l.pending[id]
	switch {
	case l.isClosed:
		in.close()
		return nil
	case set == nil:
		set = &pendingSet{}
		set.expiry = time.AfterFunc(setTimeout, func() { l.expire(id, set) })
		l.pending[id] = set
	case set.socks[ch] != nil:
		in.close() // the channel came twice: not a georepl dialer
		return nil
	case set.arrived > 0 && (set.any().cc.tls == nil) != (in.cc.tls == nil):
		in.close() // TLS on one channel and not on another
		return nil
	}
	set.socks[ch] = in
	in.set, in.id = set, id
	set.arrived++
	if set.arrived < transports.NumChannels {
		return nil
	}
	set.expiry.Stop()
	delete(l.pending, id)
	for _, in := range set.socks {
		in.slot.Release()
	}
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

// answer tells the dialer on every channel of set that the connection is
// set up, and makes the Conn.
func (l *listener) answer(set *pendingSet) (transports.Conn, error) {
	var socks [transports.NumChannels]channelConn
	for ch, in := range set.socks {
		socks[ch] = in.cc
	}
	if socks[0].tls != nil {
		if err := sameCertificates(socks); err != nil {
			l.setupFailed(socks[0].sock, fmt.Errorf("tcp: %w", err))
			return nil, err
		}
	}
	for _, s := range socks {
		s.sock.SetDeadline(time.Now().Add(preambleTimeout))
		if _, err := s.rw.Write(answerBytes(statusOK)); err != nil {
			return nil, err
		}
		if err := tune(s.sock, l.opts); err != nil {
			return nil, err
		}
		if err := s.sock.SetDeadline(time.Time{}); err != nil {
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
