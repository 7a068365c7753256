// Package nodetlstest makes node identities for tests: a CA and node
// certificates in memory, and transports that dial and listen with them.
package nodetlstest

import (
	"context"
	"crypto/tls"
	"net"
	"testing"
	"time"

	"github.com/georepl/georepl/transports"
	"github.com/georepl/georepl/transports/nodetls"
)

// PKI is a test CA.
type PKI struct {
	CA *nodetls.CA
}

// New makes a CA valid for a day.
func New(t testing.TB) *PKI {
	t.Helper()
	ca, err := nodetls.NewCA("georepl test CA", 24*time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return &PKI{CA: ca}
}

// Identity issues node's certificate, valid from now for validity (a
// negative validity gives one that expired that long ago), and returns the
// node's identity. An expired identity is made without Parse's checks.
func (p *PKI) Identity(t testing.TB, node string, validity time.Duration) *nodetls.Identity {
	t.Helper()
	now := time.Now()
	if validity < 0 {
		now = now.Add(2 * validity)
		validity = -validity
	}
	issued, err := p.CA.Issue(node, validity, now)
	if err != nil {
		t.Fatal(err)
	}
	if now.Add(validity).Before(time.Now()) {
		pair, err := tls.X509KeyPair(issued.CertPEM, issued.KeyPEM)
		if err != nil {
			t.Fatal(err)
		}
		ok := p.Identity(t, "ca-holder", time.Hour) // for the CA pool
		return &nodetls.Identity{Node: node, Certificate: pair, Leaf: pair.Leaf, Roots: ok.Roots}
	}
	id, err := nodetls.Parse(p.CA.CertPEM, issued.CertPEM, issued.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// Transport dials and listens through tr with fixed TLS configurations:
// Client for Dial (nil: plaintext), Server for Listen.
type Transport struct {
	transports.Transport
	Client, Server *tls.Config
	// SetupFailed, if set, is passed to Listen.
	SetupFailed func(remote string, err error)
}

func (w *Transport) Dial(ctx context.Context, addr string, opts transports.Options) (transports.Conn, error) {
	opts.TLS = w.Client
	return w.Transport.Dial(ctx, addr, opts)
}

func (w *Transport) Listen(addr string, opts transports.Options) (transports.Listener, error) {
	opts.TLS = w.Server
	if w.SetupFailed != nil {
		opts.SetupFailed = func(remote net.Addr, err error) { w.SetupFailed(remote.String(), err) }
	}
	return w.Transport.Listen(addr, opts)
}
