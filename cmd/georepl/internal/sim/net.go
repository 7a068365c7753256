package sim

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"

	"github.com/georepl/georepl/core/wire"
	"github.com/georepl/georepl/transports"
)

// The simulated network carries whole frames: what a node writes on a
// channel is cut into wire frames (the sim's configuration has no
// compression, so the stream is a plain sequence of frames), and each
// frame waits until the scheduler delivers it. Each channel of each
// direction keeps its order; the scheduler chooses the order across
// channels, directions and connections, and may cut a connection between
// any two frames, the handshake's included.
//
// All state is guarded by world.mu; readers and acceptors wait on
// conditions of that lock, which testing/synctest sees as durably
// blocked.

var (
	errRefused  = errors.New("sim: connection refused")
	errCut      = errors.New("sim: connection cut")
	errUnreach  = errors.New("sim: network unreachable (partitioned)")
	errDeadNode = errors.New("sim: the node's process is gone")
)

// frameHeader is wire.HeaderSize; the payload length sits at byte 36.
const (
	frameHeader  = wire.HeaderSize
	offPayLength = 36
)

// endpoint is one node incarnation's transport.
type endpoint struct {
	w    *world
	node *simNode
	gen  int
}

func (e *endpoint) alive() bool { return e.node.gen == e.gen && e.node.up }

func (e *endpoint) Dial(ctx context.Context, addr string, _ transports.Options) (transports.Conn, error) {
	w := e.w
	w.mu.Lock()
	defer w.mu.Unlock()
	if !e.alive() {
		return nil, errDeadNode
	}
	l := w.listeners[addr]
	if l == nil || l.closed {
		return nil, fmt.Errorf("dial %s: %w", addr, errRefused)
	}
	if w.partitioned(e.node.name, l.ep.node.name) {
		return nil, fmt.Errorf("dial %s: %w", addr, errUnreach)
	}
	c := w.newConn(e, l.ep)
	l.queue = append(l.queue, c.ends[1])
	select {
	case l.arrived <- struct{}{}:
	default:
	}
	return c.ends[0], nil
}

func (e *endpoint) Listen(addr string, _ transports.Options) (transports.Listener, error) {
	w := e.w
	w.mu.Lock()
	defer w.mu.Unlock()
	if !e.alive() {
		return nil, errDeadNode
	}
	if l := w.listeners[addr]; l != nil && !l.closed {
		return nil, fmt.Errorf("sim: listen %s: address in use", addr)
	}
	l := &listener{w: w, ep: e, addr: addr, arrived: make(chan struct{}, 1), done: make(chan struct{})}
	w.listeners[addr] = l
	return l, nil
}

type listener struct {
	w       *world
	ep      *endpoint
	addr    string
	queue   []*connEnd
	closed  bool
	arrived chan struct{}
	done    chan struct{}
}

func (l *listener) Accept(ctx context.Context) (transports.Conn, error) {
	for {
		l.w.mu.Lock()
		if l.closed {
			l.w.mu.Unlock()
			return nil, fmt.Errorf("sim: accept on %s: %w", l.addr, net.ErrClosed)
		}
		if len(l.queue) > 0 {
			c := l.queue[0]
			l.queue = l.queue[1:]
			l.w.mu.Unlock()
			return c, nil
		}
		l.w.mu.Unlock()
		select {
		case <-l.arrived:
		case <-l.done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

func (l *listener) Close() error {
	l.w.mu.Lock()
	defer l.w.mu.Unlock()
	l.closeLocked()
	return nil
}

func (l *listener) closeLocked() {
	if l.closed {
		return
	}
	l.closed = true
	close(l.done)
	for _, c := range l.queue {
		c.conn.cut()
	}
	l.queue = nil
}

func (l *listener) Addr() net.Addr { return addr(l.addr) }

type addr string

func (a addr) Network() string { return "sim" }
func (a addr) String() string  { return string(a) }

// conn is a connection between two node incarnations.
type conn struct {
	w *world
	// id numbers the connections between this pair of nodes, in dial
	// order (only the lower node id dials).
	id     int
	ends   [2]*connEnd // 0: the dialer's, 1: the acceptor's
	broken bool
	// pipes[side][ch] carries frames from ends[side] to the other end.
	pipes [2][transports.NumChannels]*pipe
}

// established reports whether both ends received the other's hello: only
// then can a write travel on c. Called with world.mu held.
func (c *conn) established() bool {
	heard := func(side int) bool {
		return slices.ContainsFunc(c.pipes[side][:], func(p *pipe) bool { return p != nil && p.hello })
	}
	return heard(0) && heard(1)
}

type connEnd struct {
	conn   *conn
	side   int
	ep     *endpoint
	closed bool
}

// pipe is one channel of one direction.
type pipe struct {
	from, to string
	ch       int
	partial  []byte   // written, not yet a whole frame
	inFlight []*frame // whole frames not yet delivered; eof after them
	eof      bool     // the sender closed: EOF follows inFlight
	// hello: a hello was delivered (the handshake's last message).
	hello    bool
	inbox    [][]byte // delivered frames, not yet read (the first partly)
	inboxEOF bool     // EOF delivered
	cond     *sync.Cond
}

// frame is a frame in flight.
type frame struct {
	bytes []byte
	typ   wire.Type
	seq   uint64
	epoch uint64
}

func (w *world) newConn(dialer, acceptor *endpoint) *conn {
	pair := [2]string{dialer.node.name, acceptor.node.name}
	w.connIDs[pair]++
	c := &conn{w: w, id: w.connIDs[pair]}
	c.ends[0] = &connEnd{conn: c, side: 0, ep: dialer}
	c.ends[1] = &connEnd{conn: c, side: 1, ep: acceptor}
	for side := range 2 {
		for ch := range transports.NumChannels {
			c.pipes[side][ch] = &pipe{from: c.ends[side].ep.node.name, to: c.ends[1-side].ep.node.name, ch: ch, cond: sync.NewCond(&w.mu)}
		}
	}
	w.conns = append(w.conns, c)
	return c
}

// cut breaks the connection at once: frames in flight are lost, both ends
// fail. Called with world.mu held.
func (c *conn) cut() {
	if c.broken {
		return
	}
	c.broken = true
	for side := range 2 {
		for _, p := range c.pipes[side] {
			p.inFlight, p.partial, p.inbox = nil, nil, nil
			p.cond.Broadcast()
		}
	}
	c.w.forgetConn(c)
}

func (c *conn) String() string {
	return fmt.Sprintf("%s-%s#%d", c.ends[0].ep.node.name, c.ends[1].ep.node.name, c.id)
}

func (e *connEnd) Stream(ch transports.Channel) io.ReadWriter {
	if int(ch) >= transports.NumChannels {
		panic(fmt.Sprintf("sim: Stream(%d): only %d channels", ch, transports.NumChannels))
	}
	return stream{e, int(ch)}
}

// Close closes this end: what it sent is still delivered, then EOF; what
// was sent to it is dropped, and the peer's writes fail.
func (e *connEnd) Close() error {
	w := e.conn.w
	w.mu.Lock()
	defer w.mu.Unlock()
	if e.closed {
		return nil
	}
	e.closed = true
	c := e.conn
	for ch := range transports.NumChannels {
		out, in := c.pipes[e.side][ch], c.pipes[1-e.side][ch]
		out.eof = true
		in.inFlight, in.partial, in.inbox = nil, nil, nil
		out.cond.Broadcast()
		in.cond.Broadcast()
	}
	if c.ends[0].closed && c.ends[1].closed {
		c.w.forgetConn(c)
	}
	return nil
}

func (e *connEnd) LocalAddr() net.Addr  { return addr(e.ep.node.name) }
func (e *connEnd) RemoteAddr() net.Addr { return addr(e.conn.ends[1-e.side].ep.node.name) }

type stream struct {
	e  *connEnd
	ch int
}

func (s stream) Read(b []byte) (int, error) {
	c := s.e.conn
	p := c.pipes[1-s.e.side][s.ch]
	c.w.mu.Lock()
	defer c.w.mu.Unlock()
	for {
		switch {
		case c.broken:
			return 0, errCut
		case s.e.closed:
			return 0, net.ErrClosed
		case len(p.inbox) > 0:
			n := copy(b, p.inbox[0])
			if p.inbox[0] = p.inbox[0][n:]; len(p.inbox[0]) == 0 {
				p.inbox[0] = nil
				p.inbox = p.inbox[1:]
			}
			return n, nil
		case p.inboxEOF:
			return 0, io.EOF
		}
		p.cond.Wait()
	}
}

func (s stream) Write(b []byte) (int, error) {
	c := s.e.conn
	p := c.pipes[s.e.side][s.ch]
	c.w.mu.Lock()
	defer c.w.mu.Unlock()
	switch {
	case c.broken:
		return 0, errCut
	case s.e.closed:
		return 0, net.ErrClosed
	case c.ends[1-s.e.side].closed:
		return 0, io.ErrClosedPipe
	}
	p.partial = append(p.partial, b...)
	for len(p.partial) >= frameHeader {
		n := frameHeader + int(binary.LittleEndian.Uint32(p.partial[offPayLength:]))
		if len(p.partial) < n {
			break
		}
		// The frame keeps its part of partial's array: later appends
		// write beyond it.
		h := p.partial[:frameHeader]
		p.inFlight = append(p.inFlight, &frame{
			bytes: p.partial[:n:n],
			typ:   wire.Type(h[5]),
			seq:   binary.LittleEndian.Uint64(h[8:]),
			epoch: binary.LittleEndian.Uint64(h[16:]),
		})
		p.partial = p.partial[n:]
	}
	if len(p.partial) == 0 {
		p.partial = nil
	}
	return len(b), nil
}

// deliverable reports whether p has something the scheduler may deliver.
func (p *pipe) deliverable() bool { return len(p.inFlight) > 0 || p.eof && !p.inboxEOF }

// deliver hands p's next frame (or its EOF) to the reader, and describes
// it; keepalive is set for pings. Called with world.mu held.
func (p *pipe) deliver() (what string, keepalive bool) {
	if len(p.inFlight) == 0 {
		p.inboxEOF = true
		p.cond.Broadcast()
		return fmt.Sprintf("EOF %s->%s ch%d", p.from, p.to, p.ch), false
	}
	f := p.inFlight[0]
	p.inFlight[0] = nil
	p.inFlight = p.inFlight[1:]
	p.inbox = append(p.inbox, f.bytes)
	p.cond.Broadcast()
	p.hello = p.hello || f.typ == wire.TypeHello
	keepalive = f.typ == wire.TypePing || f.typ == wire.TypePingAck
	return fmt.Sprintf("%s->%s %v seq=%d epoch=%d", p.from, p.to, f.typ, f.seq, f.epoch), keepalive
}
