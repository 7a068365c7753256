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
	"fmt"
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
	lz4     [transports.NumChannels]*wire.Writer
	reader  *wire.Reader // control channel
	data    *wire.Reader // data channel, made on first use
}

// Dial connects to the node listening at addr with the named built-in
// transport ("tcp" or "quic").
func Dial(ctx context.Context, transport, addr string) (*Peer, error) {
	builtin.Register()
	tr, err := transports.Lookup(transport)
	if err != nil {
		return nil, err
	}
	conn, err := tr.Dial(ctx, addr, transports.Options{})
	if err != nil {
		return nil, err
	}
	p := &Peer{Conn: conn, reader: wire.NewReader(conn.Stream(transports.ChannelControl))}
	for ch := range transports.NumChannels {
		s := conn.Stream(transports.Channel(ch))
		p.writers[ch] = wire.NewWriter(s, wire.CompressionNone)
		p.lz4[ch] = wire.NewWriter(s, wire.CompressionLZ4)
	}
	if _, err := rand.Read(p.Nonce[:]); err != nil {
		conn.Close()
		return nil, err
	}
	return p, nil
}

// Close closes the connection.
func (p *Peer) Close() error { return p.Conn.Close() }

// Send writes frames on their channel (wire.ChannelOf) and flushes.
func (p *Peer) Send(frames ...*wire.Frame) error {
	return p.write(p.writers, frames)
}

// SendCompressed writes frames on their channel through an LZ4 Writer, so
// that a flush of at least wire.MinCompressBatch bytes goes out as one
// compressed batch frame.
func (p *Peer) SendCompressed(frames ...*wire.Frame) error {
	return p.write(p.lz4, frames)
}

// SendRaw writes b, bytes the test encoded itself, on channel ch.
func (p *Peer) SendRaw(ch transports.Channel, b []byte) error {
	_, err := p.Conn.Stream(ch).Write(b)
	return err
}

func (p *Peer) write(writers [transports.NumChannels]*wire.Writer, frames []*wire.Frame) error {
	var used [transports.NumChannels]bool
	for _, f := range frames {
		ch := wire.ChannelOf(f.Type)
		if err := writers[ch].WriteFrame(f); err != nil {
			return err
		}
		used[ch] = true
	}
	for ch, w := range writers {
		if used[ch] {
			if err := w.Flush(); err != nil {
				return err
			}
		}
	}
	return nil
}

// Read returns the next frame the node sent on the control channel, or
// an error once the connection ended or timeout passed.
func (p *Peer) Read(timeout time.Duration) (*wire.Frame, error) {
	return readWithin(p, p.reader, timeout)
}

// ReadData is Read on the data channel.
func (p *Peer) ReadData(timeout time.Duration) (*wire.Frame, error) {
	if p.data == nil {
		p.data = wire.NewReader(p.Conn.Stream(transports.ChannelData))
	}
	return readWithin(p, p.data, timeout)
}

// readWithin reads one frame from r, closing the connection if timeout
// passes first (a Reader cannot be interrupted otherwise).
func readWithin(p *Peer, r *wire.Reader, timeout time.Duration) (*wire.Frame, error) {
	timer := time.AfterFunc(timeout, func() { p.Conn.Close() })
	f, err := r.ReadFrame()
	if !timer.Stop() {
		return nil, fmt.Errorf("nothing from the node within %v (connection closed): %v", timeout, err)
	}
	return f, err
}

// ReadAll collects the frames the node sends on the control channel until
// it closes the connection or timeout passes; err says how it ended.
func (p *Peer) ReadAll(timeout time.Duration) (frames []*wire.Frame, err error) {
	deadline := time.Now().Add(timeout)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return frames, fmt.Errorf("the node kept the connection open for %v", timeout)
		}
		f, err := p.Read(left)
		if err != nil {
			return frames, err
		}
		frames = append(frames, f)
	}
}

// Hello returns a hello from node from to node to of resource, with the
// Peer's nonce and no state: what a peer that knows only names and ids
// can say.
func (p *Peer) Hello(resource string, from, to uint8) *wire.Hello {
	return &wire.Hello{Version: wire.Version, Resource: resource, From: from, To: to, Nonce: p.Nonce}
}

// HelloFrame encodes h as a hello frame whose payload is padded with
// zeroes to pad bytes (decoders ignore bytes after the fields they know).
func HelloFrame(h *wire.Hello, pad int) (*wire.Frame, error) {
	b, err := h.MarshalBinary()
	if err != nil {
		return nil, err
	}
	if len(b) < pad {
		b = append(b, make([]byte, pad-len(b))...)
	}
	return &wire.Frame{Type: wire.TypeHello, Payload: b}, nil
}
