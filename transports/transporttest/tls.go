package transporttest

import (
	"bytes"
	"context"
	"crypto/tls"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/georepl/georepl/transports"
	"github.com/georepl/georepl/transports/nodetls/nodetlstest"
)

// RunTLS checks a transport that honours Options.TLS: the conformance
// suite over TLS with node certificates, peer certificates and channel
// binding seen alike by both ends, and the refusals: a client certificate
// of another CA, a server certificate of another CA, an expired client
// certificate, no client certificate. Each refusal must fail Dial and be
// seen by the listener's TLS configuration (so that a daemon can log it).
func RunTLS(t *testing.T, newTransport func(t *testing.T) (tr transports.Transport, listenAddr string)) {
	pki := nodetlstest.New(t)
	alpha := pki.Identity(t, "alpha", time.Hour)
	bravo := pki.Identity(t, "bravo", time.Hour)

	t.Run("Conformance", func(t *testing.T) {
		Run(t, func(t *testing.T) (transports.Transport, string) {
			tr, addr := newTransport(t)
			return &nodetlstest.Transport{Transport: tr, Client: alpha.ClientConfig("r0", nil), Server: bravo.ServerConfig(nil)}, addr
		})
	})

	t.Run("PeersAndBinding", func(t *testing.T) {
		tr, addr := newTransport(t)
		w := &nodetlstest.Transport{Transport: tr, Client: alpha.ClientConfig("r0", nil), Server: bravo.ServerConfig(nil)}
		p := connect(t, w, addr)
		for _, end := range []struct {
			conn transports.Conn
			want string
		}{{p.dialed, "bravo"}, {p.accepted, "alpha"}} {
			pc, ok := end.conn.(transports.PeerCertificates)
			if !ok {
				t.Fatalf("%T does not implement transports.PeerCertificates", end.conn)
			}
			if err := alpha.VerifyPeer(pc.PeerCertificates(), end.want, end.want == "bravo", nil); err != nil {
				t.Errorf("the end that expects %s: %v", end.want, err)
			}
		}
		var bindings [2][]byte
		for i, c := range []transports.Conn{p.dialed, p.accepted} {
			cb, ok := c.(transports.ChannelBinding)
			if !ok {
				t.Fatalf("%T does not implement transports.ChannelBinding", c)
			}
			b, err := cb.ChannelBinding()
			if err != nil {
				t.Fatal(err)
			}
			bindings[i] = b
		}
		if len(bindings[0]) < 32 || !bytes.Equal(bindings[0], bindings[1]) {
			t.Errorf("channel bindings %x and %x: want equal, 32 bytes or more", bindings[0], bindings[1])
		}
	})

	stranger := nodetlstest.New(t)
	// A client of another CA that trusts the listener's CA: the listener
	// is the one to refuse it.
	foreign := *stranger.Identity(t, "alpha", time.Hour)
	foreign.Roots = alpha.Roots
	expired := pki.Identity(t, "alpha", -time.Hour)
	noCert := alpha.ClientConfig("r0", nil)
	noCert.Certificates = nil
	for _, tc := range []struct {
		name           string
		client, server *tls.Config
		// clientSays and serverSays are in the refusal each end sees;
		// serverSays "" when only the dialer can tell (it refused the
		// listener's certificate, and the listener saw an alert).
		clientSays, serverSays string
	}{
		{"ClientOfAnotherCA", foreign.ClientConfig("r0", nil), nil, "", "unknown authority"},
		{"ServerOfAnotherCA", nil, stranger.Identity(t, "bravo", time.Hour).ServerConfig(nil), "unknown authority", ""},
		{"ExpiredClient", expired.ClientConfig("r0", nil), nil, "", "expired"},
		{"NoClientCertificate", noCert, nil, "", "no client certificate"},
	} {
		t.Run("Refuses"+tc.name, func(t *testing.T) {
			var mu sync.Mutex
			var serverSaw []string
			note := func(err error) {
				mu.Lock()
				defer mu.Unlock()
				serverSaw = append(serverSaw, err.Error())
			}
			client, server := tc.client, tc.server
			if client == nil {
				client = alpha.ClientConfig("r0", nil)
			}
			if server == nil {
				server = bravo.ServerConfig(note)
			}
			tr, addr := newTransport(t)
			w := &nodetlstest.Transport{Transport: tr, Client: client, Server: server,
				SetupFailed: func(_ string, err error) { note(err) }}
			ln, err := w.Listen(addr, transports.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
			defer cancel()
			go func() {
				if c, err := ln.Accept(ctx); err == nil {
					c.Close()
				}
			}()
			c, err := w.Dial(ctx, ln.Addr().String(), transports.Options{})
			if err == nil {
				// QUIC's dialer may finish before the listener refused
				// its certificate: the connection must then fail.
				_, err = c.Stream(transports.ChannelControl).Read(make([]byte, 1))
				c.Close()
			}
			if err == nil || !strings.Contains(err.Error(), tc.clientSays) {
				t.Errorf("dialer: %v, want a refusal saying %q", err, tc.clientSays)
			}
			if tc.serverSays == "" {
				return
			}
			deadline := time.Now().Add(setupTimeout)
			for {
				mu.Lock()
				saw := strings.Join(serverSaw, "; ")
				mu.Unlock()
				if strings.Contains(saw, tc.serverSays) {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("listener saw %q, want a refusal saying %q", saw, tc.serverSays)
				}
				time.Sleep(10 * time.Millisecond)
			}
		})
	}
}
