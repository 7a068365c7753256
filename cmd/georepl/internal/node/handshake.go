package node

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/georepl/georepl/core/wire"
	"github.com/georepl/georepl/transports"
)

// handshakeTimeout bounds the whole handshake.
const handshakeTimeout = 10 * time.Second

// Handshakes in progress on the accepting side, whose peers have not
// proved who they are, are bounded in all and per source address (see
// transports.Admission); a connection over its address's share is closed
// at once. A genuine node has at most one handshake per resource under
// way, so 32 resources can reconnect from one node at once; more retry
// connect_retry later.
const (
	maxHandshakes          = 128
	maxHandshakesPerSource = 32
)

// errAuth is the cause when a peer does not prove the shared secret.
var errAuth = errors.New("authentication failed")

// handshake is the exchange that opens a connection's control channel
// (docs/wire-format.md), in two phases. Authentication: each side sends
// an Intro (resource, node ids, version and a fresh nonce), then an Auth
// frame that proves knowledge of the shared secret by MACing the resource,
// both nonces and ids, bound to the connection where the transport offers
// a channel binding; the dialer proves itself first. State: once the peer's proof verified, each side sends its
// Hello (generation ids, size, role, split-brain inputs) and reads the
// peer's. So a party without the secret learns names and ids only, and
// nothing it sends reaches the engine. Either side may send Refuse with a
// reason instead.
type handshake struct {
	conn   transports.Conn
	reader *wire.Reader
	writer *wire.Writer
	// records counts the TLS records of conn's streams (rekey.go).
	records *recordCount
}

func newHandshake(conn transports.Conn) *handshake {
	h := &handshake{conn: conn, records: newRecordCount()}
	ctl := h.stream(transports.ChannelControl)
	h.reader, h.writer = wire.NewPreAuthReader(ctl), wire.NewWriter(ctl, wire.CompressionNone)
	return h
}

func (h *handshake) send(f *wire.Frame) error {
	if err := h.writer.WriteFrame(f); err != nil {
		return err
	}
	return h.writer.Flush()
}

// sendMessage sends a frame of type t whose payload is m.
func (h *handshake) sendMessage(t wire.Type, m interface{ MarshalBinary() ([]byte, error) }) error {
	payload, err := m.MarshalBinary()
	if err != nil {
		return err
	}
	return h.send(&wire.Frame{Type: t, Payload: payload})
}

// expect reads the next frame and checks its type; a Refuse becomes an
// error carrying the peer's reason.
func (h *handshake) expect(t wire.Type) (*wire.Frame, error) {
	f, err := h.reader.ReadFrame()
	if err != nil {
		if errors.Is(err, wire.ErrVersion) {
			return nil, fmt.Errorf("incompatible peer: %w", err)
		}
		return nil, fmt.Errorf("handshake: %w", err)
	}
	if f.Type == wire.TypeRefuse {
		return nil, &peerRefusal{reason: printable(f.Payload)}
	}
	if f.Type != t {
		return nil, fmt.Errorf("handshake: expected a %v frame, got %v", t, f.Type)
	}
	return f, nil
}

func (h *handshake) readIntro() (*wire.Intro, error) {
	f, err := h.expect(wire.TypeIntro)
	if err != nil {
		return nil, err
	}
	var in wire.Intro
	if err := in.UnmarshalBinary(f.Payload); err != nil {
		return nil, fmt.Errorf("handshake: %w", err)
	}
	if in.Version != wire.Version {
		return nil, fmt.Errorf("incompatible peer: it speaks wire version %d, this node %d", in.Version, wire.Version)
	}
	return &in, nil
}

// readHello reads the peer's Hello, which must repeat its intro.
func (h *handshake) readHello(intro *wire.Intro) (*wire.Hello, error) {
	f, err := h.expect(wire.TypeHello)
	if err != nil {
		return nil, err
	}
	return parseHello(f, intro)
}

// parseHello decodes Hello frame f, which must repeat intro.
func parseHello(f *wire.Frame, intro *wire.Intro) (*wire.Hello, error) {
	var hello wire.Hello
	if err := hello.UnmarshalBinary(f.Payload); err != nil {
		return nil, fmt.Errorf("handshake: %w", err)
	}
	if repeated := introOf(&hello); repeated != *intro {
		return nil, fmt.Errorf("handshake: the peer's hello (resource %q, node id %d to %d) does not repeat its intro (resource %q, node id %d to %d)",
			repeated.Resource, repeated.From, repeated.To, intro.Resource, intro.From, intro.To)
	}
	return &hello, nil
}

// introOf is the intro a hello repeats.
func introOf(h *wire.Hello) wire.Intro {
	return wire.Intro{Version: h.Version, Features: h.Features, Resource: h.Resource, From: h.From, To: h.To, Nonce: h.Nonce}
}

// intro returns our intro towards p, with a fresh nonce.
func (r *resource) intro(p *peer) (wire.Intro, error) {
	in := wire.Intro{Version: wire.Version, Resource: r.cfg.Name, From: uint8(r.self.ID), To: uint8(p.id)}
	// A connection continues on a new transport connection when it
	// moves to another path, and over tcp with TLS to renew its keys
	// (rekey.go).
	if (p.multi || r.rekeys(p)) && !r.d.noResume {
		in.Features |= wire.FeatureResume
	}
	_, err := rand.Read(in.Nonce[:])
	return in, err
}

// exchangeHellos is the handshake's second phase, once the peer's proof
// verified: it sends our hello, repeating ours (our intro), and reads the
// peer's, which must repeat theirs. Our hello is built right before it is
// sent, since the engine compares what it says with its state when the
// connection is attached; sent is exactly the hello sent, for
// Engine.Connected.
func (r *resource) exchangeHellos(p *peer, hs *handshake, ours, theirs *wire.Intro) (sent, got *wire.Hello, err error) {
	hello, err := r.hello(p)
	if err != nil {
		return nil, nil, err
	}
	hello.Features, hello.Nonce = ours.Features, ours.Nonce
	if err := hs.sendMessage(wire.TypeHello, &hello); err != nil {
		return nil, nil, err
	}
	got, err = hs.readHello(theirs)
	if err != nil {
		return nil, nil, err
	}
	return &hello, got, nil
}

// acceptHello is the accepting side's exchange of hellos: f is the first
// frame the dialer sent once authenticated, which must be its hello; ours
// goes out after it. The dialer's Hello comes first so that the dialer
// may send a Resume or a probe's Ping instead (paths.go).
func (r *resource) acceptHello(p *peer, hs *handshake, f *wire.Frame, ours, theirs *wire.Intro) (sent, got *wire.Hello, err error) {
	switch f.Type {
	case wire.TypeHello:
	case wire.TypeRefuse:
		return nil, nil, &peerRefusal{reason: printable(f.Payload)}
	default:
		return nil, nil, fmt.Errorf("handshake: expected a %v frame, got %v", wire.TypeHello, f.Type)
	}
	if got, err = parseHello(f, theirs); err != nil {
		return nil, nil, err
	}
	hello, err := r.hello(p)
	if err != nil {
		return nil, nil, err
	}
	hello.Features, hello.Nonce = ours.Features, ours.Nonce
	if err := hs.sendMessage(wire.TypeHello, &hello); err != nil {
		return nil, nil, err
	}
	return &hello, got, nil
}

// noSecretKey keys the auth exchange of a resource without shared_secret.
// It authenticates nothing (docs say so) but keeps one handshake for every
// configuration, so a node with a secret and a node without one refuse each
// other clearly instead of misreading each other's frames.
const noSecretKey = "georepl: no shared secret configured"

// authenticate proves our knowledge of secret and checks the peer's
// proof; from then on the reader takes what an authenticated peer may
// send. The dialer proves itself first; the listener checks that proof
// before it sends its own, so whoever connects to a node without the
// secret gets no MAC to test guesses of the secret against offline.
func (h *handshake) authenticate(secret string, ours, theirs *wire.Intro, dialer bool) error {
	if secret == "" {
		secret = noSecretKey
	}
	var binding []byte
	if cb, ok := h.conn.(transports.ChannelBinding); ok {
		b, err := cb.ChannelBinding()
		if err != nil {
			return fmt.Errorf("channel binding: %w", err)
		}
		binding = b
	}
	prove := func() error {
		mac := wire.AuthMAC([]byte(secret), ours.Resource, ours.Nonce, theirs.Nonce, ours.From, ours.To, binding)
		return h.send(&wire.Frame{Type: wire.TypeAuth, Payload: mac})
	}
	if dialer {
		if err := prove(); err != nil {
			return err
		}
	}
	f, err := h.expect(wire.TypeAuth)
	if err != nil {
		return err
	}
	if !wire.CheckAuthMAC([]byte(secret), ours.Resource, theirs.Nonce, ours.Nonce, theirs.From, theirs.To, binding, f.Payload) {
		return fmt.Errorf("%w: node id %d does not know resource %s's shared secret (check shared_secret on both nodes)", errAuth, theirs.From, ours.Resource)
	}
	if !dialer {
		if err := prove(); err != nil {
			return err
		}
	}
	h.reader.Authenticated()
	return nil
}

// refuse tells the peer why, best effort, and closes the connection. A
// peer that refused first is not answered: its reason would come back to
// it, and refusals could bounce between two nodes.
func (h *handshake) refuse(reason error) {
	var refused *peerRefusal
	if !errors.As(reason, &refused) {
		if h.send(&wire.Frame{Type: wire.TypeRefuse, Payload: []byte(printable([]byte(reason.Error())))}) == nil {
			h.awaitClose()
		}
	}
	h.conn.Close()
}

// refuseLinger bounds how long a refusal waits for the peer to close.
const refuseLinger = time.Second

// awaitClose gives the peer up to refuseLinger to read a refusal just sent
// and close the connection: closing at once could discard the refusal
// before it left (a QUIC Close does not flush), and the peer would see the
// connection end without knowing why.
func (h *handshake) awaitClose() {
	t := time.AfterFunc(refuseLinger, func() { h.conn.Close() })
	defer t.Stop()
	io.Copy(io.Discard, io.LimitReader(h.conn.Stream(transports.ChannelControl), wire.MaxPreAuthPayload))
}

// peerRefusal is the error of a handshake the peer refused.
type peerRefusal struct {
	reason string // printable
}

func (e *peerRefusal) Error() string { return "refused by the peer: " + e.reason }

// maxReasonLen bounds a refusal's reason, as sent and as logged: whoever
// reaches the port may send one, before proving anything.
const maxReasonLen = 256

// printable returns reason safe to log and show: control characters and
// invalid UTF-8 become U+FFFD, and a reason longer than maxReasonLen bytes
// is cut there, saying so.
func printable(reason []byte) string {
	cut := len(reason) > maxReasonLen
	if cut {
		reason = reason[:maxReasonLen]
	}
	var b []byte
	for len(reason) > 0 {
		r, n := utf8.DecodeRune(reason)
		if r == utf8.RuneError && n < 2 && cut && len(reason) < utf8.UTFMax {
			break // a character split by the cut
		}
		if unicode.IsControl(r) {
			r = utf8.RuneError
		}
		b = utf8.AppendRune(b, r)
		reason = reason[n:]
	}
	if cut {
		b = fmt.Appendf(b, "... (cut at %d bytes)", maxReasonLen)
	}
	return string(b)
}

// preAuthLog logs what happens to connections whose peer has not proved
// who it is yet. Whoever reaches the port decides how many there are, so
// it writes a burst of preAuthLogBurst lines, then one per
// preAuthLogEvery, and the next line it writes counts those it left out.
type preAuthLog struct {
	log *slog.Logger

	mu         sync.Mutex
	tokens     float64
	last       time.Time
	suppressed int
}

const (
	preAuthLogBurst = 20
	preAuthLogEvery = time.Second
)

func (l *preAuthLog) Warn(msg string, args ...any) {
	l.mu.Lock()
	now := time.Now()
	if l.last.IsZero() {
		l.tokens = preAuthLogBurst
	} else {
		l.tokens = min(preAuthLogBurst, l.tokens+float64(now.Sub(l.last))/float64(preAuthLogEvery))
	}
	l.last = now
	if l.tokens < 1 {
		l.suppressed++
		l.mu.Unlock()
		return
	}
	l.tokens--
	suppressed := l.suppressed
	l.suppressed = 0
	l.mu.Unlock()
	if suppressed > 0 {
		args = append(args, "not_logged_before", suppressed)
	}
	l.log.Warn(msg, args...)
}
