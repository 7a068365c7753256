package quic

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	quicgo "github.com/quic-go/quic-go"

	"github.com/georepl/georepl/transports"
)

// endpoint is the listener's UDP socket and quic-go transport. Accepted
// connections use them after the listener is closed, so they are released
// by reference count: the listener holds one reference, and every QUIC
// connection it accepted one until that connection ends.
type endpoint struct {
	tr  *quicgo.Transport
	udp *net.UDPConn

	mu   sync.Mutex
	refs int
}

func (e *endpoint) acquire() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.refs++
}

func (e *endpoint) release() {
	e.mu.Lock()
	e.refs--
	last := e.refs == 0
	e.mu.Unlock()
	if last {
		e.tr.Close()
		e.udp.Close()
	}
}

// A listener holds at most maxSetUps connections whose streams are not
// set up yet (or that wait for Accept), maxSetUpsPerSource of them from
// one address (see transports.Admission): nothing authenticates a peer
// before the daemon's handshake on the set-up connection, and each holds
// a goroutine and what quic-go buffers for it (the initial flow-control
// windows: under 1 MiB while georepl reads nothing). A node has a few
// peers with a few paths each.
const (
	maxSetUps          = 64
	maxSetUpsPerSource = 16
)

// listener sets up the streams of accepted QUIC connections and queues
// the complete ones for Accept.
type listener struct {
	ep     *endpoint
	ql     *quicgo.Listener
	ready  chan *conn // set up, handed to Accept
	closed chan struct{}
	setUps *transports.Admission // connections until Accept took them

	stop      context.CancelFunc // ends acceptLoop and stream set-ups
	workers   sync.WaitGroup
	closeOnce sync.Once
}

func newListener(ep *endpoint, ql *quicgo.Listener) *listener {
	ctx, stop := context.WithCancel(context.Background())
	l := &listener{ep: ep, ql: ql, ready: make(chan *conn), closed: make(chan struct{}), stop: stop,
		setUps: transports.NewAdmission(maxSetUps, maxSetUpsPerSource)}
	l.workers.Go(func() { l.acceptLoop(ctx) })
	return l
}

// acceptLoop takes QUIC connections whose TLS handshake completed.
func (l *listener) acceptLoop(ctx context.Context) {
	for {
		qc, err := l.ql.Accept(ctx)
		if err != nil {
			return // the listener is closing
		}
		l.ep.acquire()
		context.AfterFunc(qc.Context(), l.ep.release)
		slot := l.setUps.Admit(transports.Source(qc.RemoteAddr()), func() {
			qc.CloseWithError(codeBadSetup, "too many connections being set up: the oldest of the address that has the most is closed")
		})
		if slot == nil {
			qc.CloseWithError(codeBadSetup, fmt.Sprintf("%d connections from this address are being set up already", maxSetUpsPerSource))
			continue
		}
		l.workers.Go(func() {
			defer slot.Release()
			l.setUp(ctx, qc)
		})
	}
}

// setUp accepts qc's streams and reads their channel indexes.
func (l *listener) setUp(ctx context.Context, qc *quicgo.Conn) {
	ctx, cancel := context.WithTimeout(ctx, streamSetupTimeout)
	defer cancel()
	c := &conn{qc: qc}
	var seen [transports.NumChannels]bool
	for range transports.NumChannels {
		s, err := qc.AcceptStream(ctx)
		if err != nil {
			l.refuse(qc, "streams not opened in time")
			return
		}
		deadline, _ := ctx.Deadline()
		s.SetReadDeadline(deadline)
		var index [1]byte
		if _, err := io.ReadFull(s, index[:]); err != nil {
			l.refuse(qc, "no channel index in time")
			return
		}
		ch := int(index[0])
		if ch >= transports.NumChannels || seen[ch] {
			l.refuse(qc, fmt.Sprintf("bad channel index %d", ch))
			return
		}
		seen[ch] = true
		s.SetReadDeadline(time.Time{})
		c.streams[ch] = stream{ch: transports.Channel(ch), s: s}
	}
	select {
	case l.ready <- c:
	case <-qc.Context().Done(): // evicted (setUps), or the dialer left
	case <-l.closed:
		qc.CloseWithError(codeListenerClosed, "listener closed")
	}
}

// refuse closes qc, whose set-up failed: because the listener is closing,
// or because the dialer broke the rules (reason).
func (l *listener) refuse(qc *quicgo.Conn, reason string) {
	select {
	case <-l.closed:
		qc.CloseWithError(codeListenerClosed, "listener closed")
	default:
		qc.CloseWithError(codeBadSetup, reason)
	}
}

// Accept returns the next connection whose streams are all set up.
func (l *listener) Accept(ctx context.Context) (transports.Conn, error) {
	select {
	case <-l.closed:
		return nil, fmt.Errorf("quic: accept on %s: %w", l.Addr(), net.ErrClosed)
	default:
	}
	select {
	case c := <-l.ready:
		return c, nil
	case <-l.closed:
		return nil, fmt.Errorf("quic: accept on %s: %w", l.Addr(), net.ErrClosed)
	case <-ctx.Done():
		return nil, fmt.Errorf("quic: accept on %s: %w", l.Addr(), ctx.Err())
	}
}

// Close stops listening and closes connections not yet accepted. The UDP
// socket stays open until the last accepted connection ends.
func (l *listener) Close() error {
	var err error
	l.closeOnce.Do(func() {
		close(l.closed)
		l.stop()
		err = l.ql.Close()
		l.workers.Wait()
		l.ep.release()
		if errors.Is(err, net.ErrClosed) {
			err = nil
		}
	})
	return err
}

// Addr returns the UDP address the listener is bound to.
func (l *listener) Addr() net.Addr { return l.ep.udp.LocalAddr() }
