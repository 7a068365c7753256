// Command rdma is georepl's RDMA transport plugin: reliable-connected
// queue pairs (libibverbs) set up by the RDMA connection manager
// (librdmacm), so that addresses stay "host:port" IP addresses. It runs on
// any RDMA device, RoCE and InfiniBand NICs or Soft-RoCE (rdma_rxe) over
// any Ethernet interface. It uses cgo; georepl itself stays static and
// cgo-free because a plugin is its own binary. docs/transports.md says
// how to set it up.
//
// A connection is arranged over TCP on the address georepl gives: the
// dialer sends a random token, the listener answers with the port of its
// RDMA CM listener, the dialer connects there with the token as the CM's
// private data, and the listener accepts the connect request that carries
// a token it was given. The TCP socket then stays open, silent: its end
// tells the peer at once that this end closed or its process died, and
// its keep-alives (Options.KeepAlive, IdleTimeout) notice a dead host.
// Both channels travel over one queue pair as send/receive messages into
// registered buffers, with credit-based flow control per channel (see
// proto.go). Waits are on the completion channel's descriptor through Go's
// poller; config {"poll_us": N} spins on the completion queue for up to N
// µs after it ran empty, trading a CPU for latency.
//
// The plugin has no connection of its own to georepl's data: the SDK
// moves the bytes of each channel between this process and georepl through
// shared-memory rings.
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/georepl/georepl/plugins/sdk"
	"github.com/georepl/georepl/transports"
)

func main() { sdk.Serve(&transport{}) }

type transport struct {
	mu      sync.Mutex
	pollFor time.Duration
}

// config is the plugin block's config attribute.
type config struct {
	// PollMicros is how long the completion loop spins on an empty
	// completion queue before it sleeps on the completion channel.
	PollMicros int `json:"poll_us"`
}

const maxPollMicros = 1_000_000

func (t *transport) Configure(raw json.RawMessage) error {
	var c config
	if len(raw) > 0 && !bytes.Equal(raw, []byte("null")) {
		d := json.NewDecoder(bytes.NewReader(raw))
		d.DisallowUnknownFields()
		if err := d.Decode(&c); err != nil {
			return fmt.Errorf("rdma config: %w (the one setting is poll_us)", err)
		}
	}
	if c.PollMicros < 0 || c.PollMicros > maxPollMicros {
		return fmt.Errorf("rdma config: poll_us = %d; want 0 (sleep on the completion channel) to %d", c.PollMicros, maxPollMicros)
	}
	t.mu.Lock()
	t.pollFor = time.Duration(c.PollMicros) * time.Microsecond
	t.mu.Unlock()
	return nil
}

func (t *transport) poll() time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.pollFor
}

// The set-up exchange on the TCP socket: the dialer's hello, then two
// status frames from the listener (the first with the RDMA CM port, the
// second once the queue pair is connected, or with the reason it was not).
const (
	helloMagic = "GRRDMA\x00\x01" // the last byte is the exchange's version
	tokenSize  = 16
	maxMessage = 1024

	statusOK      = 0
	statusRefused = 1

	setupTimeout = 15 * time.Second // a listener's bound on one dialer's set-up
	maxPending   = 64               // set-ups a listener runs at once
	cmTimeoutMS  = 5000             // RDMA CM address and route resolution
)

type token [tokenSize]byte

func writeStatus(w io.Writer, code byte, port int, msg string) error {
	if len(msg) > maxMessage {
		msg = msg[:maxMessage]
	}
	b := make([]byte, 5, 5+len(msg))
	b[0] = code
	binary.BigEndian.PutUint16(b[1:], uint16(port))
	binary.BigEndian.PutUint16(b[3:], uint16(len(msg)))
	_, err := w.Write(append(b, msg...))
	return err
}

// readStatus reads a status frame; the peer's message is bounded and
// returned as text.
func readStatus(r io.Reader) (code byte, port int, msg string, err error) {
	var b [5]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return 0, 0, "", err
	}
	n := int(binary.BigEndian.Uint16(b[3:]))
	if n > maxMessage || b[0] > statusRefused {
		return 0, 0, "", fmt.Errorf("%w: status %d with a message of %d bytes in the set-up", errProtocol, b[0], n)
	}
	m := make([]byte, n)
	if _, err := io.ReadFull(r, m); err != nil {
		return 0, 0, "", err
	}
	return b[0], int(binary.BigEndian.Uint16(b[1:])), string(bytes.ToValidUTF8(m, []byte("?"))), nil
}

func keepAlive(opts transports.Options) net.KeepAliveConfig {
	return net.KeepAliveConfig{Enable: true, Idle: opts.KeepAlive, Interval: opts.KeepAlive,
		Count: max(1, int(opts.IdleTimeout/opts.KeepAlive))}
}

// cmWaiter waits for events of a CM channel through Go's poller.
type cmWaiter struct {
	f   *os.File
	raw syscall.RawConn
	ch  cmChannel
}

func newCMWaiter(ch cmChannel) (*cmWaiter, error) {
	dup, err := syscall.Dup(ch.fd())
	if err != nil {
		return nil, fmt.Errorf("duplicate the RDMA CM channel: %w", err)
	}
	syscall.CloseOnExec(dup)
	f := os.NewFile(uintptr(dup), "rdma-cm")
	raw, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	return &cmWaiter{f: f, raw: raw, ch: ch}, nil
}

// next waits for the channel's next event until ctx is done or the
// waiter is stopped.
func (w *cmWaiter) next(ctx context.Context) (cmEvent, error) {
	stop := context.AfterFunc(ctx, func() { w.f.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	var ev cmEvent
	var evErr error
	err := w.raw.Read(func(uintptr) bool {
		var ok bool
		ev, ok, evErr = w.ch.event()
		return ok || evErr != nil
	})
	if ctx.Err() != nil {
		return ev, fmt.Errorf("rdma set-up: %w", ctx.Err())
	}
	return ev, errors.Join(err, evErr)
}

func (w *cmWaiter) stop()  { w.f.SetReadDeadline(time.Unix(1, 0)) }
func (w *cmWaiter) close() { w.f.Close() }

// Dial arranges the connection over TCP, then connects a queue pair
// through the RDMA CM from the TCP socket's local address to the peer's.
func (t *transport) Dial(ctx context.Context, addr string, opts transports.Options) (transports.Conn, error) {
	opts, err := opts.WithDefaults()
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := checkDevices(); err != nil {
		return nil, err
	}
	d := net.Dialer{KeepAliveConfig: keepAlive(opts)}
	tcp, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("rdma dial %s: %w", addr, ctx.Err())
		}
		return nil, fmt.Errorf("rdma dial %s: %w (is georepl's rdma transport listening there?)", addr, err)
	}
	c, err := t.dial(ctx, tcp)
	if err != nil {
		tcp.Close()
		if ctx.Err() != nil && !errors.Is(err, ctx.Err()) {
			err = fmt.Errorf("%w (%v)", ctx.Err(), err)
		}
		return nil, fmt.Errorf("rdma dial %s: %w", addr, err)
	}
	return c, nil
}

func (t *transport) dial(ctx context.Context, tcp net.Conn) (*conn, error) {
	stopDeadline := context.AfterFunc(ctx, func() { tcp.SetDeadline(time.Unix(1, 0)) })
	defer stopDeadline()
	var tok token
	rand.Read(tok[:])
	if _, err := tcp.Write(append([]byte(helloMagic), tok[:]...)); err != nil {
		return nil, fmt.Errorf("set-up: %w", err)
	}
	code, port, msg, err := readStatus(tcp)
	if err != nil {
		return nil, fmt.Errorf("set-up: %w", err)
	}
	if code != statusOK {
		return nil, fmt.Errorf("the peer refused: %s", msg)
	}
	local, remote := tcp.LocalAddr().(*net.TCPAddr), tcp.RemoteAddr().(*net.TCPAddr)

	cm, err := newCMChannel()
	if err != nil {
		return nil, err
	}
	id, err := cm.newID()
	if err != nil {
		cm.destroy()
		return nil, err
	}
	w, err := newCMWaiter(cm)
	if err != nil {
		destroyID(id)
		cm.destroy()
		return nil, err
	}
	defer w.close()
	var v *verbs
	fail := func(err error) (*conn, error) {
		if v != nil {
			v.destroy()
		}
		destroyID(id)
		cm.destroy()
		return nil, err
	}
	expect := func(want eventType) error {
		ev, err := w.next(ctx)
		if err != nil {
			return err
		}
		if ev.typ == want {
			return nil
		}
		switch ev.typ {
		case evAddrError, evRouteError:
			return fmt.Errorf("%s (%s, status %d)", routeAdvice(local.IP.String(), remote.IP.String()), eventName(ev.typ), ev.status)
		case evUnreachable:
			return fmt.Errorf("the peer %s did not answer over RDMA (%s, status %d): it has no RDMA device on that address, or RoCE traffic (UDP port 4791) does not get through", remote.IP, eventName(ev.typ), ev.status)
		case evRejected:
			// The listener says why on the set-up socket, if it knows.
			tcp.SetReadDeadline(time.Now().Add(2 * time.Second))
			if code, _, msg, err := readStatus(tcp); err == nil && code != statusOK {
				return fmt.Errorf("the peer refused the RDMA connection: %s", msg)
			}
			return fmt.Errorf("the peer refused the RDMA connection (%s, status %d)", eventName(ev.typ), ev.status)
		}
		return fmt.Errorf("RDMA CM event %s (status %d) while waiting for %s", eventName(ev.typ), ev.status, eventName(want))
	}
	if err := resolveAddr(id, local.IP, remote.IP, port, cmTimeoutMS); err != nil {
		return fail(fmt.Errorf("%s: %w", routeAdvice(local.IP.String(), remote.IP.String()), err))
	}
	if err := expect(evAddrResolved); err != nil {
		return fail(err)
	}
	if err := resolveRoute(id, cmTimeoutMS); err != nil {
		return fail(fmt.Errorf("resolve the RDMA route to %s: %w", remote.IP, err))
	}
	if err := expect(evRouteResolved); err != nil {
		return fail(err)
	}
	if v, err = setupVerbs(id); err != nil {
		return fail(err)
	}
	if err := postReceives(v); err != nil {
		return fail(err)
	}
	if err := connectID(id, tok[:]); err != nil {
		return fail(fmt.Errorf("RDMA connect to %s port %d: %w", remote.IP, port, err))
	}
	if err := expect(evEstablished); err != nil {
		return fail(err)
	}
	code, _, msg, err = readStatus(tcp)
	if err != nil {
		return fail(fmt.Errorf("set-up: %w", err))
	}
	if code != statusOK {
		return fail(fmt.Errorf("the peer refused the RDMA connection: %s", msg))
	}
	stopDeadline()
	tcp.SetDeadline(time.Time{})
	return newConn(v, id, cm, tcp, t.poll())
}

type listener struct {
	tcp     net.Listener
	cm      cmChannel
	id      cmID
	w       *cmWaiter
	port    int // of the RDMA CM listener
	pollFor time.Duration

	mu        sync.Mutex
	pending   map[token]*setup
	accepting map[cmID]*accepting

	ready     chan *conn
	closing   chan struct{}
	closeOnce sync.Once
	wg        sync.WaitGroup
}

// setup is one dialer's set-up on the listener's side.
type setup struct {
	tcp       net.Conn
	result    chan setupResult // buffered: the CM loop never blocks on it
	abandoned bool             // the set-up timed out: a late result is closed
}

type setupResult struct {
	c   *conn
	err error
}

// accepting is a connect request accepted, waiting for ESTABLISHED.
type accepting struct {
	s *setup
	v *verbs
}

// Listen listens on addr with TCP for the set-up and with the RDMA CM on
// the same IP address (all of them for a wildcard), on a port of the
// RDMA CM's own that the set-up tells the dialer.
func (t *transport) Listen(addr string, opts transports.Options) (transports.Listener, error) {
	opts, err := opts.WithDefaults()
	if err != nil {
		return nil, err
	}
	if err := checkDevices(); err != nil {
		return nil, err
	}
	lc := net.ListenConfig{KeepAliveConfig: keepAlive(opts)}
	tl, err := lc.Listen(context.Background(), "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("rdma listen %s: %w", addr, err)
	}
	ip := tl.Addr().(*net.TCPAddr).IP
	if ip.IsUnspecified() && ip.To4() == nil {
		ip = net.IPv6zero
	} else if ip.IsUnspecified() {
		ip = net.IPv4zero
	}
	l := &listener{tcp: tl, pollFor: t.poll(), pending: map[token]*setup{}, accepting: map[cmID]*accepting{},
		ready: make(chan *conn), closing: make(chan struct{})}
	if err := l.listenCM(ip); err != nil {
		tl.Close()
		return nil, fmt.Errorf("rdma listen %s: %w", addr, err)
	}
	l.wg.Add(2)
	go l.cmLoop()
	go l.acceptTCP()
	return l, nil
}

func (l *listener) listenCM(ip net.IP) (err error) {
	if l.cm, err = newCMChannel(); err != nil {
		return err
	}
	if l.id, err = l.cm.newID(); err != nil {
		l.cm.destroy()
		return err
	}
	if l.port, err = bindListen(l.id, ip, maxPending); err != nil {
		destroyID(l.id)
		l.cm.destroy()
		if errors.Is(err, syscall.EADDRNOTAVAIL) || errors.Is(err, syscall.ENODEV) {
			return fmt.Errorf("address %s is not on an interface with an RDMA device (%w): see `rdma link show`; for Soft-RoCE `rdma link add rxe0 type rxe netdev IFACE`", ip, err)
		}
		return fmt.Errorf("RDMA CM listen on %s: %w", ip, err)
	}
	if l.w, err = newCMWaiter(l.cm); err != nil {
		destroyID(l.id)
		l.cm.destroy()
		return err
	}
	return nil
}

func (l *listener) Addr() net.Addr { return l.tcp.Addr() }

func (l *listener) Accept(ctx context.Context) (transports.Conn, error) {
	select {
	case c := <-l.ready:
		return c, nil
	case <-l.closing:
		return nil, fmt.Errorf("rdma accept: %w", net.ErrClosed)
	case <-ctx.Done():
		return nil, fmt.Errorf("rdma accept: %w", ctx.Err())
	}
}

func (l *listener) Close() error {
	l.closeOnce.Do(func() {
		close(l.closing)
		l.tcp.Close()
		l.w.stop()
		l.wg.Wait()
	})
	return nil
}

// acceptTCP takes dialers' set-up sockets, each set up by a goroutine of
// its own; at most maxPending at once, others are closed at once.
func (l *listener) acceptTCP() {
	defer l.wg.Done()
	var sets sync.WaitGroup
	defer sets.Wait()
	for {
		tcp, err := l.tcp.Accept()
		if err != nil {
			return
		}
		sets.Go(func() { l.setUp(tcp) })
	}
}

// setUp runs the listener's side of one set-up and queues the connection
// for Accept.
func (l *listener) setUp(tcp net.Conn) {
	c, err := l.arrange(tcp)
	if err != nil {
		tcp.Close()
		return
	}
	select {
	case l.ready <- c:
	case <-l.closing:
		c.Close()
	}
}

func (l *listener) arrange(tcp net.Conn) (*conn, error) {
	tcp.SetDeadline(time.Now().Add(setupTimeout))
	hello := make([]byte, len(helloMagic)+tokenSize)
	if _, err := io.ReadFull(tcp, hello); err != nil {
		return nil, err
	}
	if string(hello[:len(helloMagic)]) != helloMagic {
		writeStatus(tcp, statusRefused, 0, "not a georepl rdma transport hello, or another version of it")
		return nil, errProtocol
	}
	tok := token(hello[len(helloMagic):])
	s := &setup{tcp: tcp, result: make(chan setupResult, 1)}
	l.mu.Lock()
	if len(l.pending)+len(l.accepting) >= maxPending || l.pending[tok] != nil {
		l.mu.Unlock()
		writeStatus(tcp, statusRefused, 0, "too many connections being set up")
		return nil, errors.New("too many set-ups")
	}
	l.pending[tok] = s
	l.mu.Unlock()
	if err := writeStatus(tcp, statusOK, l.port, ""); err != nil {
		l.abandon(tok, s)
		return nil, err
	}
	var r setupResult
	select {
	case r = <-s.result:
	case <-time.After(setupTimeout):
		l.abandon(tok, s)
		return nil, errors.New("set-up timed out")
	case <-l.closing:
		l.abandon(tok, s)
		return nil, net.ErrClosed
	}
	if r.err != nil {
		writeStatus(tcp, statusRefused, 0, r.err.Error())
		return nil, r.err
	}
	if err := writeStatus(tcp, statusOK, 0, ""); err != nil {
		r.c.Close()
		return nil, err
	}
	tcp.SetDeadline(time.Time{})
	return r.c, nil
}

// abandon forgets s: a connection the CM loop completes for it later is
// closed.
func (l *listener) abandon(tok token, s *setup) {
	l.mu.Lock()
	if l.pending[tok] == s {
		delete(l.pending, tok)
	}
	s.abandoned = true
	l.mu.Unlock()
	select {
	case r := <-s.result:
		if r.c != nil {
			r.c.Close()
		}
	default:
	}
}

// deliver hands a set-up's result to its goroutine.
func (l *listener) deliver(s *setup, r setupResult) {
	l.mu.Lock()
	if !s.abandoned {
		s.result <- r
		l.mu.Unlock()
		return
	}
	l.mu.Unlock()
	if r.c != nil {
		r.c.Close()
	}
}

// cmLoop handles the RDMA CM listener's events until Close, then frees
// the connect requests not yet established and the listener.
func (l *listener) cmLoop() {
	defer l.wg.Done()
	defer func() {
		l.mu.Lock()
		acc := l.accepting
		l.accepting = map[cmID]*accepting{}
		l.mu.Unlock()
		for id, a := range acc {
			a.v.destroy()
			destroyID(id)
			l.deliver(a.s, setupResult{err: net.ErrClosed})
		}
		l.w.close()
		destroyID(l.id)
		l.cm.destroy()
	}()
	for {
		ev, err := l.w.next(context.Background())
		if err != nil {
			return
		}
		l.handle(ev)
	}
}

func (l *listener) handle(ev cmEvent) {
	switch ev.typ {
	case evConnectRequest:
		var s *setup
		if len(ev.privateData) >= tokenSize {
			tok := token(ev.privateData[:tokenSize])
			l.mu.Lock()
			if s = l.pending[tok]; s != nil {
				delete(l.pending, tok)
			}
			l.mu.Unlock()
		}
		if s == nil {
			// No set-up gave this token: not a dialer of ours.
			rejectID(ev.id)
			destroyID(ev.id)
			return
		}
		v, err := setupVerbs(ev.id)
		if err == nil {
			if err = postReceives(v); err != nil {
				v.destroy()
			}
		}
		if err == nil {
			if err = acceptID(ev.id); err != nil {
				v.destroy()
				err = fmt.Errorf("RDMA accept: %w", err)
			}
		}
		if err != nil {
			rejectID(ev.id)
			destroyID(ev.id)
			l.deliver(s, setupResult{err: fmt.Errorf("on the listener: %w", err)})
			return
		}
		l.mu.Lock()
		l.accepting[ev.id] = &accepting{s, v}
		l.mu.Unlock()
	case evEstablished:
		a := l.take(ev.id)
		if a == nil {
			return
		}
		// From now on the connection's events go to a channel of its own.
		cm, err := newCMChannel()
		if err == nil {
			if err = migrateID(ev.id, cm); err != nil {
				cm.destroy()
			}
		}
		if err != nil {
			a.v.destroy()
			destroyID(ev.id)
			l.deliver(a.s, setupResult{err: err})
			return
		}
		c, err := newConn(a.v, ev.id, cm, a.s.tcp, l.pollFor)
		l.deliver(a.s, setupResult{c, err})
	default:
		// A connect request that failed after its accept (REJECTED,
		// CONNECT_ERROR, UNREACHABLE, DISCONNECTED): free it.
		if a := l.take(ev.id); a != nil {
			a.v.destroy()
			destroyID(ev.id)
			l.deliver(a.s, setupResult{err: fmt.Errorf("RDMA CM event %s (status %d) after the accept", eventName(ev.typ), ev.status)})
		}
	}
}

func (l *listener) take(id cmID) *accepting {
	l.mu.Lock()
	defer l.mu.Unlock()
	a := l.accepting[id]
	delete(l.accepting, id)
	return a
}
