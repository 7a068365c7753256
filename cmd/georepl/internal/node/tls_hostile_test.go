package node

import (
	"context"
	"crypto/x509"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/georepl/georepl/cmd/georepl/internal/hostile"
	"github.com/georepl/georepl/core/wire"
	"github.com/georepl/georepl/transports"
	"github.com/georepl/georepl/transports/nodetls"
	"github.com/georepl/georepl/transports/nodetls/nodetlstest"
	"github.com/georepl/georepl/transports/tcp"
)

// expectRefusedBeforeIntro sends p's intro as node from to node to of r0
// and checks that the node answers with a refusal saying want, and with
// nothing else first: no intro, so no nonce, no proof, no hello.
func expectRefusedBeforeIntro(t *testing.T, p *hostile.Peer, from, to uint8, want string) {
	t.Helper()
	f, err := hostile.Message(wire.TypeIntro, p.Intro("r0", from, to), 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Send(f); err != nil {
		t.Fatal(err)
	}
	frames, err := p.ReadAll(10 * time.Second)
	if len(frames) == 0 {
		t.Fatalf("the node sent nothing (%v), want a refusal", err)
	}
	if frames[0].Type != wire.TypeRefuse || !strings.Contains(string(frames[0].Payload), want) {
		t.Fatalf("the node answered %v %q first, want a refusal saying %q", frames[0].Type, frames[0].Payload, want)
	}
	for _, f := range frames[1:] {
		t.Errorf("after its refusal the node sent a %v frame", f.Type)
	}
}

// TestTLSHostileWithoutCertificate: with TLS required, a client without a
// certificate posing as the Primary towards a secondary, or as a
// secondary (which would be sent the disk) towards the Primary, is
// refused before the node says anything about itself.
func TestTLSHostileWithoutCertificate(t *testing.T) {
	for _, transport := range []string{"tcp", "quic"} {
		t.Run(transport, func(t *testing.T) {
			c := newTLSCluster(t, transport)
			for _, n := range tlsNodes {
				c.start(t, n, nil)
			}
			c.waitConnected(t, "alpha", "bravo")
			for _, tc := range []struct {
				target   string
				from, to uint8
			}{{"bravo", 0, 1}, {"alpha", 1, 0}} { // as alpha to bravo, as bravo to alpha
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				p, err := hostile.Dial(ctx, transport, c.addr(tc.target))
				cancel()
				if err != nil {
					t.Fatal(err)
				}
				expectRefusedBeforeIntro(t, p, tc.from, tc.to, "without a certificate")
				p.Close()
			}
			c.waitLog(t, "bravo", "refusing connection", "requires TLS")
			c.waitConnected(t, "alpha", "bravo")
		})
	}
}

// TestTLSHostileOtherNodesIdentity: node dr, with its own valid
// certificate and the shared secret, poses as bravo towards alpha: it is
// refused, naming both, before alpha's intro.
func TestTLSHostileOtherNodesIdentity(t *testing.T) {
	for _, transport := range []string{"tcp", "quic"} {
		t.Run(transport, func(t *testing.T) {
			c := newTLSCluster(t, transport)
			c.net += "\n    shared_secret = \"the secret dr knows\""
			c.start(t, "alpha", nil)
			dr, err := nodetls.Load(c.files("dr"))
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			p, err := hostile.DialWith(ctx, transport, c.addr("alpha"), transports.Options{TLS: dr.ClientConfig("r0", nil)})
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			expectRefusedBeforeIntro(t, p, 1, 0, `names node "dr", but node "bravo" is expected`)
			c.waitLog(t, "alpha", "refusing connection", `names node \"dr\"`, `node \"bravo\" is expected`)
		})
	}
}

// relay is a man in the middle on tcp: it terminates TLS from dialers with
// server's identity and dials target with client's, and copies every
// channel both ways.
func relay(t *testing.T, server, client *nodetls.Identity, target string) string {
	t.Helper()
	ln, err := tcp.New().Listen("127.0.0.1:0", transports.Options{TLS: server.ServerConfig(nil)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			in, err := ln.Accept(context.Background())
			if err != nil {
				return
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			out, err := tcp.New().Dial(ctx, target, transports.Options{TLS: client.ClientConfig("r0", nil)})
			cancel()
			if err != nil {
				in.Close()
				continue
			}
			for ch := range transports.NumChannels {
				go func() { io.Copy(out.Stream(transports.Channel(ch)), in.Stream(transports.Channel(ch))); out.Close() }()
				go func() { io.Copy(in.Stream(transports.Channel(ch)), out.Stream(transports.Channel(ch))); in.Close() }()
			}
		}
	}()
	return ln.Addr().String()
}

// TestTLSManInTheMiddle: alpha's configuration sends it to a relay in
// front of bravo. A relay with certificates of its own CA is refused by
// alpha's verification; one that even holds alpha's and bravo's keys
// cannot relay the shared secret's proof, bound to each TLS session.
// alpha stays connected to dr all along.
func TestTLSManInTheMiddle(t *testing.T) {
	t.Run("OwnCA", func(t *testing.T) {
		c := newTLSCluster(t, "tcp")
		mitm := nodetlstest.New(t)
		c.addrOf["alpha/bravo"] = relay(t, mitm.Identity(t, "bravo", time.Hour), mitm.Identity(t, "alpha", time.Hour), c.addr("bravo"))
		for _, n := range tlsNodes {
			c.start(t, n, nil)
		}
		c.waitConnected(t, "alpha", "dr")
		c.waitLog(t, "alpha", "connecting failed", "peer=bravo", "unknown authority")
		if got := c.peerConn(t, "alpha", "bravo"); got == "Connected" {
			t.Error("alpha connected to bravo through the relay")
		}
	})
	t.Run("StolenKeys", func(t *testing.T) {
		c := newTLSCluster(t, "tcp")
		c.net += "\n    shared_secret = \"only the nodes know\""
		alpha, err := nodetls.Load(c.files("alpha"))
		if err != nil {
			t.Fatal(err)
		}
		bravo, err := nodetls.Load(c.files("bravo"))
		if err != nil {
			t.Fatal(err)
		}
		c.addrOf["alpha/bravo"] = relay(t, bravo, alpha, c.addr("bravo"))
		for _, n := range tlsNodes {
			c.start(t, n, nil)
		}
		c.waitConnected(t, "alpha", "dr")
		c.waitLog(t, "bravo", "refusing connection", "authentication failed")
		c.waitLog(t, "alpha", "connecting failed", "peer=bravo", "authentication failed")
		if got := c.peerConn(t, "alpha", "bravo"); got == "Connected" {
			t.Error("alpha connected to bravo through the relay")
		}
	})
}

// TestTLSReload: new certificate files, reloaded, serve new connections
// while the established ones stay up; files that cannot be used are
// refused and the old ones kept; a certificate that expires within 30
// days is a warning in status.
func TestTLSReload(t *testing.T) {
	c := newTLSCluster(t, "tcp")
	for _, n := range tlsNodes {
		c.start(t, n, nil)
	}
	c.waitConnected(t, "alpha", "bravo")
	bravo := c.daemons["bravo"]
	before := bravo.identity("r0").Leaf

	f := c.files("bravo")
	if err := os.Chmod(f.Key, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := bravo.ReloadTLS(); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("reload with a readable key: %v, want refused", err)
	}
	if !bravo.identity("r0").Leaf.Equal(before) {
		t.Error("a failed reload changed the identity")
	}

	c.writeFiles(t, "bravo", c.pki, "bravo", 10*24*time.Hour)
	if err := bravo.ReloadTLS(); err != nil {
		t.Fatal(err)
	}
	after := c.checkRotated(t, before, "the reload")
	waitForStatus := time.Now().Add(10 * time.Second)
	for {
		st, _ := bravo.Status("r0")
		if st[0].TLSExpiresSoon && st[0].TLSValidUntil.Equal(after.NotAfter) {
			break
		}
		if time.Now().After(waitForStatus) {
			t.Fatalf("status after reloading a certificate valid for 10 days: valid until %v, expires soon %v", st[0].TLSValidUntil, st[0].TLSExpiresSoon)
		}
		time.Sleep(50 * time.Millisecond)
	}
	c.waitLog(t, "bravo", "TLS certificate expires on", "SIGHUP")
}

// checkRotated checks what a certificate rotation on bravo (named by what)
// must do: bravo's identity is no longer before, a new connection gets
// the new certificate, and alpha's established connection stayed. It
// returns the new certificate.
func (c *tlsCluster) checkRotated(t *testing.T, before *x509.Certificate, what string) *x509.Certificate {
	t.Helper()
	after := c.daemons["bravo"].identity("r0").Leaf
	if after.Equal(before) {
		t.Fatalf("%s kept the old certificate", what)
	}
	alpha, err := nodetls.Load(c.files("alpha"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	p, err := hostile.DialWith(ctx, "tcp", c.addr("bravo"), transports.Options{TLS: alpha.ClientConfig("r0", nil)})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if got := p.Conn.(transports.PeerCertificates).PeerCertificates()[0]; !got.Equal(after) {
		t.Error("a new connection got the old certificate")
	}
	if n := strings.Count(c.logs["alpha"].String(), "msg=connected node=alpha resource=r0 peer=bravo"); n != 1 || c.peerConn(t, "alpha", "bravo") != "Connected" {
		t.Errorf("alpha connected to bravo %d times and is %s: %s dropped the connection", n, c.peerConn(t, "alpha", "bravo"), what)
	}
	return after
}
