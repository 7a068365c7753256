package quic_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/georepl/georepl/transports"
	"github.com/georepl/georepl/transports/quic"
	"github.com/georepl/georepl/transports/transporttest"
)

func TestConformance(t *testing.T) {
	transporttest.Run(t, func(t *testing.T) (transports.Transport, string) {
		return quic.New(), "127.0.0.1:0"
	})
}

func BenchmarkQUIC(b *testing.B) {
	transporttest.Bench(b, quic.New(), "127.0.0.1:0")
}

// connect returns both ends of one connection through ln.
func connect(t *testing.T, ln transports.Listener) (dialed, accepted transports.Conn) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	acceptDone := make(chan error, 1)
	go func() {
		var err error
		accepted, err = ln.Accept(ctx)
		acceptDone <- err
	}()
	dialed, err := quic.New().Dial(ctx, ln.Addr().String(), transports.Options{})
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	if err := <-acceptDone; err != nil {
		dialed.Close()
		t.Fatalf("Accept: %v", err)
	}
	t.Cleanup(func() {
		dialed.Close()
		accepted.Close()
	})
	return dialed, accepted
}

func listen(t *testing.T) transports.Listener {
	t.Helper()
	ln, err := quic.New().Listen("127.0.0.1:0", transports.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

func channelBinding(t *testing.T, c transports.Conn) []byte {
	t.Helper()
	cb, ok := c.(transports.ChannelBinding)
	if !ok {
		t.Fatalf("%T does not implement transports.ChannelBinding", c)
	}
	b, err := cb.ChannelBinding()
	if err != nil {
		t.Fatalf("ChannelBinding: %v", err)
	}
	return b
}

func TestChannelBindingIsSharedByBothEndsOnly(t *testing.T) {
	ln := listen(t)
	dialed, accepted := connect(t, ln)
	d, a := channelBinding(t, dialed), channelBinding(t, accepted)
	if len(d) != 32 {
		t.Errorf("channel binding is %d bytes, want 32", len(d))
	}
	if !bytes.Equal(d, a) {
		t.Errorf("ends disagree: dialer %x, acceptor %x", d, a)
	}
	other, _ := connect(t, ln)
	if o := channelBinding(t, other); bytes.Equal(o, d) {
		t.Errorf("two connections have the same channel binding %x", o)
	}
}

func TestAcceptedConnectionOutlivesListener(t *testing.T) {
	ln := listen(t)
	dialed, accepted := connect(t, ln)
	if err := ln.Close(); err != nil {
		t.Fatalf("Listener.Close: %v", err)
	}
	for _, ch := range []transports.Channel{transports.ChannelData, transports.ChannelControl} {
		if _, err := dialed.Stream(ch).Write([]byte("still here")); err != nil {
			t.Fatalf("channel %d: Write after Listener.Close: %v", ch, err)
		}
		got := make([]byte, len("still here"))
		if _, err := io.ReadFull(accepted.Stream(ch), got); err != nil {
			t.Fatalf("channel %d: Read after Listener.Close: %v", ch, err)
		}
	}
}

func TestPeerCloseReadsAsEOF(t *testing.T) {
	ln := listen(t)
	dialed, accepted := connect(t, ln)
	dialed.Close()
	if _, err := accepted.Stream(transports.ChannelControl).Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("read after the peer's Close: %v, want io.EOF", err)
	}
	if _, err := dialed.Stream(transports.ChannelControl).Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
		t.Errorf("read after the local Close: %v, want net.ErrClosed", err)
	}
}

func TestBadAddressesAndOptions(t *testing.T) {
	tr := quic.New()
	ctx := context.Background()
	for _, addr := range []string{"", "localhost", "10.0.0.1:7789:1"} {
		if _, err := tr.Dial(ctx, addr, transports.Options{}); err == nil || !strings.Contains(err.Error(), "host:port") {
			t.Errorf("Dial(%q): %v, want an error asking for host:port", addr, err)
		}
		if _, err := tr.Listen(addr, transports.Options{}); err == nil || !strings.Contains(err.Error(), "host:port") {
			t.Errorf("Listen(%q): %v, want an error asking for host:port", addr, err)
		}
	}
	bad := transports.Options{IdleTimeout: -time.Second}
	if _, err := tr.Listen("127.0.0.1:0", bad); !errors.Is(err, transports.ErrInvalidOptions) {
		t.Errorf("Listen with a negative IdleTimeout: %v, want ErrInvalidOptions", err)
	}
	if _, err := tr.Dial(ctx, "127.0.0.1:1", bad); !errors.Is(err, transports.ErrInvalidOptions) {
		t.Errorf("Dial with a negative IdleTimeout: %v, want ErrInvalidOptions", err)
	}
}

func TestListenerReleasesItsPortAfterTheLastConnection(t *testing.T) {
	ln, err := quic.New().Listen("127.0.0.1:0", transports.Options{})
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	dialed, accepted := connect(t, ln)
	ln.Close()
	if udp, err := net.ListenPacket("udp", addr); err == nil {
		udp.Close()
		t.Fatalf("port %s free while an accepted connection still uses it", addr)
	}
	dialed.Close()
	accepted.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		udp, err := net.ListenPacket("udp", addr)
		if err == nil {
			udp.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("port %s still bound 5 s after the last connection closed: %v", addr, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestTLS(t *testing.T) {
	transporttest.RunTLS(t, func(t *testing.T) (transports.Transport, string) {
		return quic.New(), "127.0.0.1:0"
	})
}
