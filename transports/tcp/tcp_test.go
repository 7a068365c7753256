package tcp_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/georepl/georepl/transports"
	"github.com/georepl/georepl/transports/nodetls/nodetlstest"
	"github.com/georepl/georepl/transports/tcp"
	"github.com/georepl/georepl/transports/transporttest"
)

func TestConformance(t *testing.T) {
	transporttest.Run(t, func(t *testing.T) (transports.Transport, string) {
		return tcp.New(), "127.0.0.1:0"
	})
}

func BenchmarkTCP(b *testing.B) {
	transporttest.Bench(b, tcp.New(), "127.0.0.1:0")
}

func BenchmarkTCPTLS(b *testing.B) {
	pki := nodetlstest.New(b)
	alpha, bravo := pki.Identity(b, "alpha", time.Hour), pki.Identity(b, "bravo", time.Hour)
	transporttest.Bench(b, &nodetlstest.Transport{Transport: tcp.New(), Client: alpha.ClientConfig("r0", nil), Server: bravo.ServerConfig(nil)}, "127.0.0.1:0")
}

func TestBadAddressesAndOptions(t *testing.T) {
	tr := tcp.New()
	ctx := context.Background()
	for _, addr := range []string{"", "localhost", "10.0.0.1:7789:1"} {
		if _, err := tr.Dial(ctx, addr, transports.Options{}); err == nil || !strings.Contains(err.Error(), "host:port") {
			t.Errorf("Dial(%q): %v, want an error asking for host:port", addr, err)
		}
		if _, err := tr.Listen(addr, transports.Options{}); err == nil || !strings.Contains(err.Error(), "host:port") {
			t.Errorf("Listen(%q): %v, want an error asking for host:port", addr, err)
		}
	}
	bad := transports.Options{KeepAlive: time.Minute, IdleTimeout: time.Second}
	if _, err := tr.Listen("127.0.0.1:0", bad); !errors.Is(err, transports.ErrInvalidOptions) {
		t.Errorf("Listen with KeepAlive > IdleTimeout: %v, want ErrInvalidOptions", err)
	}
	if _, err := tr.Dial(ctx, "127.0.0.1:1", bad); !errors.Is(err, transports.ErrInvalidOptions) {
		t.Errorf("Dial with KeepAlive > IdleTimeout: %v, want ErrInvalidOptions", err)
	}
}

func TestTLS(t *testing.T) {
	transporttest.RunTLS(t, func(t *testing.T) (transports.Transport, string) {
		return tcp.New(), "127.0.0.1:0"
	})
}

// A dialer that asks for TLS of a listener without it is told so, and so
// is the listener; a plaintext dialer gets a plaintext connection from a
// listener with TLS, without certificates (the layer above refuses it
// where TLS is required).
func TestTLSAskedOfAPlaintextListener(t *testing.T) {
	pki := nodetlstest.New(t)
	alpha, bravo := pki.Identity(t, "alpha", time.Hour), pki.Identity(t, "bravo", time.Hour)
	saw := make(chan error, 4)
	ln, err := tcp.New().Listen("127.0.0.1:0", transports.Options{SetupFailed: func(_ net.Addr, err error) { saw <- err }})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = tcp.New().Dial(ctx, ln.Addr().String(), transports.Options{TLS: alpha.ClientConfig("r0", nil)})
	if !errors.Is(err, tcp.ErrNoTLS) {
		t.Errorf("TLS dial of a plaintext listener: %v, want ErrNoTLS", err)
	}
	select {
	case err := <-saw:
		if !strings.Contains(err.Error(), "asked for TLS") {
			t.Errorf("listener saw %v", err)
		}
	case <-ctx.Done():
		t.Error("the listener reported nothing")
	}

	secure, err := tcp.New().Listen("127.0.0.1:0", transports.Options{TLS: bravo.ServerConfig(nil)})
	if err != nil {
		t.Fatal(err)
	}
	defer secure.Close()
	accepted := make(chan transports.Conn, 1)
	go func() {
		c, _ := secure.Accept(ctx)
		accepted <- c
	}()
	c, err := tcp.New().Dial(ctx, secure.Addr().String(), transports.Options{})
	if err != nil {
		t.Fatalf("plaintext dial of a TLS listener: %v", err)
	}
	defer c.Close()
	a := <-accepted
	if a == nil {
		t.Fatal("Accept failed")
	}
	defer a.Close()
	if pc, ok := a.(transports.PeerCertificates); ok && len(pc.PeerCertificates()) > 0 {
		t.Error("a plaintext connection has peer certificates")
	}
}
