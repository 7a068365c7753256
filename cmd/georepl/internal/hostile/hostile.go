// Package hostile is a test peer: it speaks georepl's wire format and
// handshake (docs/wire-format.md) over the real transports, and lets a
// test break the protocol's rules on purpose, the way an attacker who can
// reach a node's port would: oversized or compressed frames before
// authentication, crafted hellos, refusals with long reasons, requests no
// genuine Primary sends.
//
// It is built only from the wire package and the transports, not from the
// node's own handshake code, so that a test of the node's defences does
// not share the node's mistakes.
package hostile

import (
	"context"
	"crypto/rand"
	"encoding"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/georepl/georepl/core/wire"
	"github.com/georepl/georepl/transports"
	"github.com/georepl/georepl/transports/builtin"
)

// Peer is one connection to a georepl node, driven by a test. Its methods
// are not safe for concurrent use.
type Peer struct {
	Conn transports.Conn
	// Nonce is the nonce of the Peer's opening frame.
	Nonce [32]byte

	writers [transports.NumChannels]*wire.Writer
	// control reads the control channel, from the first Read on.
	control   *controlReader
	closed    chan struct{}
	closeOnce sync.Once
}

// Dial connects to the node listening at addr with the named built-in
// transport ("tcp" or "quic").
func Dial(ctx context.Context, transport, addr string) (*Peer, error) {
	return DialWith(ctx, transport, addr, transports.Options{})
}

// DialWith is Dial with transport options: TLS with a certificate of the
// test's choosing, say.
func DialWith(ctx context.Context, transport, addr string, opts transports.Options) (*Peer, error) {
	builtin.Register()
	tr, err := transports.Lookup(transport)
	if err != nil {
		return nil, err
	}
	conn, err := tr.Dial(ctx, addr, opts)
	if err != nil {
		return nil, err
	}
	p := &Peer{Conn: conn, closed: make(chan struct{})}
	for ch := range transports.NumChannels {
		p.writers[ch] = wire.NewWriter(conn.Stream(transports.Channel(ch)), wire.CompressionNone)
	}
	if _, err := rand.Read(p.Nonce[:]); err != nil {
		conn.Close()
		return nil, err
	}
	return p, nil
}

// Close closes the connection.
func (p *Peer) Close() error {
	p.closeOnce.Do(func() { close(p.closed) })
	return p.Conn.Close()
}

// Send writes frames on their channel (wire.ChannelOf) and flushes.
func (p *Peer) Send(frames ...*wire.Frame) error {
	var used [transports.NumChannels]bool
	for _, f := range frames {
		ch := wire.ChannelOf(f.Type)
		if err := p.writers[ch].WriteFrame(f); err != nil {
			return err
		}
		used[ch] = true
	}
	for ch, w := range p.writers {
		if used[ch] {
			if err := w.Flush(); err != nil {
				return err
			}
		}
	}
	return nil
}

// SendRaw writes b, bytes the test encoded itself, on channel ch.
func (p *Peer) SendRaw(ch transports.Channel, b []byte) error {
	_, err := p.Conn.Stream(ch).Write(b)
	return err
}

// Read returns the next frame the node sent on the control channel: an
// error once the connection ended, or when nothing came within timeout
// (the connection stays open then).
func (p *Peer) Read(timeout time.Duration) (*wire.Frame, error) {
	if p.control == nil {
		p.control = p.startReading()
	}
	return p.control.next(timeout)
}

// ReadAll collects the frames the node sends on the control channel until
// it closes the connection or timeout passes; err says how it ended.
func (p *Peer) ReadAll(timeout time.Duration) (frames []*wire.Frame, err error) {
	deadline := time.Now().Add(timeout)
	for {
		f, err := p.Read(time.Until(deadline))
		if err != nil {
			return frames, err
		}
		frames = append(frames, f)
	}
}

// controlReader reads the control channel's frames on its own goroutine,
// so that a test can wait for them with a timeout.
type controlReader struct {
	frames chan *wire.Frame
	err    error // once frames is closed
}

func (p *Peer) startReading() *controlReader {
	c := &controlReader{frames: make(chan *wire.Frame, 64)}
	r := wire.NewReader(p.Conn.Stream(transports.ChannelControl))
	go func() {
		defer close(c.frames)
		for {
			f, err := r.ReadFrame()
			if err != nil {
				c.err = err
				return
			}
			select {
			case c.frames <- f:
			case <-p.closed:
				c.err = errors.New("hostile: the connection was closed")
				return
			}
		}
	}()
	return c
}

func (c *controlReader) next(timeout time.Duration) (*wire.Frame, error) {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case f, ok := <-c.frames:
		if !ok {
			return nil, c.err
		}
		return f, nil
	case <-timer.C:
		return nil, fmt.Errorf("nothing from the node within %v", timeout)
	}
}

// Intro returns the intro of node from to node to of resource, with the
// Peer's nonce: what anyone who knows the names and ids can say.
func (p *Peer) Intro(resource string, from, to uint8) *wire.Intro {
	return &wire.Intro{Version: wire.Version, Resource: resource, From: from, To: to, Nonce: p.Nonce}
}

// Hello returns a hello that repeats p.Intro(resource, from, to) and
// says nothing else: a test fills in the state it claims.
func (p *Peer) Hello(resource string, from, to uint8) *wire.Hello {
	return &wire.Hello{Version: wire.Version, Resource: resource, From: from, To: to, Nonce: p.Nonce}
}

// Message encodes m as a frame of type t whose payload is padded with
// zeroes to pad bytes (decoders ignore bytes after the fields they know).
func Message(t wire.Type, m encoding.BinaryMarshaler, pad int) (*wire.Frame, error) {
	b, err := m.MarshalBinary()
	if err != nil {
		return nil, err
	}
	if len(b) < pad {
		b = append(b, make([]byte, pad-len(b))...)
	}
	return &wire.Frame{Type: t, Payload: b}, nil
}

// Authenticate runs the handshake's first phase as node from of
// resource, talking to node to, which knows secret: it sends the Peer's
// intro, reads the node's, proves itself and checks the node's proof. It
// returns the node's intro. Then the Peer, as the dialing side, sends its
// hello first (a node accepting a connection reads the dialer's first
// frame before it answers with its own hello).
func (p *Peer) Authenticate(secret, resource string, from, to uint8, timeout time.Duration) (*wire.Intro, error) {
	ours := p.Intro(resource, from, to)
	f, err := Message(wire.TypeIntro, ours, 0)
	if err != nil {
		return nil, err
	}
	if err := p.Send(f); err != nil {
		return nil, err
	}
	if f, err = p.expect(wire.TypeIntro, timeout); err != nil {
		return nil, err
	}
	var theirs wire.Intro
	if err := theirs.UnmarshalBinary(f.Payload); err != nil {
		return nil, err
	}
	var binding []byte
	if cb, ok := p.Conn.(transports.ChannelBinding); ok {
		if binding, err = cb.ChannelBinding(); err != nil {
			return nil, err
		}
	}
	mac := wire.AuthMAC([]byte(secret), resource, ours.Nonce, theirs.Nonce, from, to, binding)
	if err := p.Send(&wire.Frame{Type: wire.TypeAuth, Payload: mac}); err != nil {
		return nil, err
	}
	if f, err = p.expect(wire.TypeAuth, timeout); err != nil {
		return nil, err
	}
	if !wire.CheckAuthMAC([]byte(secret), resource, theirs.Nonce, ours.Nonce, to, from, binding, f.Payload) {
		return nil, fmt.Errorf("the node's proof does not verify")
	}
	return &theirs, nil
}

// ReadHello reads the hello the node sends once it has the Peer's.
func (p *Peer) ReadHello(timeout time.Duration) (*wire.Hello, error) {
	f, err := p.expect(wire.TypeHello, timeout)
	if err != nil {
		return nil, err
	}
	var h wire.Hello
	return &h, h.UnmarshalBinary(f.Payload)
}

// expect reads the next control frame, which must be of type t.
func (p *Peer) expect(t wire.Type, timeout time.Duration) (*wire.Frame, error) {
	f, err := p.Read(timeout)
	switch {
	case err != nil:
		return nil, err
	case f.Type == wire.TypeRefuse:
		return nil, fmt.Errorf("refused: %s", f.Payload)
	case f.Type != t:
		return nil, fmt.Errorf("got a %v frame, want %v", f.Type, t)
	}
	return f, nil
}
