package mem_test

import (
	"context"
	"errors"
	"io"
	"net"
	"testing"

	"github.com/georepl/georepl/transports"
	"github.com/georepl/georepl/transports/mem"
	"github.com/georepl/georepl/transports/transporttest"
)

func TestConformance(t *testing.T) {
	transporttest.Run(t, func(t *testing.T) (transports.Transport, string) {
		return mem.NewNetwork(), "secondary"
	})
}

func BenchmarkMem(b *testing.B) {
	transporttest.Bench(b, mem.NewNetwork(), "secondary")
}

// dialAccept returns both ends of a new connection to addr.
func dialAccept(t *testing.T, n *mem.Network, ln transports.Listener) (dialed, accepted transports.Conn) {
	t.Helper()
	dialed, err := n.Dial(context.Background(), ln.Addr().String(), transports.Options{})
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	accepted, err = ln.Accept(context.Background())
	if err != nil {
		t.Fatalf("Accept: %v", err)
	}
	t.Cleanup(func() {
		dialed.Close()
		accepted.Close()
	})
	return dialed, accepted
}

func TestBreakCutsOnlyTheAddressedConnections(t *testing.T) {
	n := mem.NewNetwork()
	ln, err := n.Listen("secondary", transports.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cutDialed, cutAccepted := dialAccept(t, n, ln)
	keptDialed, keptAccepted := dialAccept(t, n, ln)

	// Buffered bytes are lost on a cut, as on a dead link.
	if _, err := cutDialed.Stream(transports.ChannelData).Write([]byte("lost")); err != nil {
		t.Fatal(err)
	}
	readErr := make(chan error, 1)
	go func() {
		_, err := io.ReadFull(cutDialed.Stream(transports.ChannelControl), make([]byte, 1))
		readErr <- err
	}()
	if got := n.Break(cutDialed.LocalAddr().String()); got != 1 {
		t.Fatalf("Break(%s) = %d, want 1", cutDialed.LocalAddr(), got)
	}
	if err := <-readErr; !errors.Is(err, mem.ErrBroken) {
		t.Errorf("blocked read after Break: %v, want ErrBroken", err)
	}
	if _, err := cutAccepted.Stream(transports.ChannelData).Read(make([]byte, 4)); !errors.Is(err, mem.ErrBroken) {
		t.Errorf("peer read after Break: %v, want ErrBroken", err)
	}
	if _, err := cutAccepted.Stream(transports.ChannelControl).Write([]byte("x")); !errors.Is(err, mem.ErrBroken) {
		t.Errorf("peer write after Break: %v, want ErrBroken", err)
	}

	if _, err := keptDialed.Stream(transports.ChannelData).Write([]byte("kept")); err != nil {
		t.Fatalf("write on the other connection: %v", err)
	}
	if _, err := io.ReadFull(keptAccepted.Stream(transports.ChannelData), make([]byte, 4)); err != nil {
		t.Fatalf("read on the other connection: %v", err)
	}

	// Breaking the listener's address cuts what is left; the listener
	// still accepts, so the code under test can reconnect.
	if got := n.Break("secondary"); got != 1 {
		t.Errorf("Break(secondary) = %d, want 1", got)
	}
	if _, err := keptAccepted.Stream(transports.ChannelData).Write([]byte("x")); !errors.Is(err, mem.ErrBroken) {
		t.Errorf("write after Break(secondary): %v, want ErrBroken", err)
	}
	dialAccept(t, n, ln)
}

func TestCloseDeliversBufferedBytesThenEOF(t *testing.T) {
	n := mem.NewNetwork()
	ln, err := n.Listen("secondary", transports.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	dialed, accepted := dialAccept(t, n, ln)
	if _, err := dialed.Stream(transports.ChannelData).Write([]byte("last words")); err != nil {
		t.Fatal(err)
	}
	dialed.Close()
	got, err := io.ReadAll(accepted.Stream(transports.ChannelData))
	if err != nil || string(got) != "last words" {
		t.Errorf("ReadAll after peer Close = %q, %v; want %q, nil", got, err, "last words")
	}
	if _, err := dialed.Stream(transports.ChannelData).Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
		t.Errorf("read on the closed end: %v, want net.ErrClosed", err)
	}
	if _, err := accepted.Stream(transports.ChannelControl).Write([]byte("x")); !errors.Is(err, io.ErrClosedPipe) {
		t.Errorf("write towards the closed end: %v, want io.ErrClosedPipe", err)
	}
}

func TestAddressErrors(t *testing.T) {
	n := mem.NewNetwork()
	if _, err := n.Dial(context.Background(), "nobody", transports.Options{}); !errors.Is(err, mem.ErrConnRefused) {
		t.Errorf("Dial(nobody): %v, want ErrConnRefused", err)
	}
	if _, err := n.Listen("", transports.Options{}); err == nil {
		t.Error(`Listen("") succeeded`)
	}
	ln, err := n.Listen("primary", transports.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.Listen("primary", transports.Options{}); !errors.Is(err, mem.ErrAddrInUse) {
		t.Errorf("second Listen(primary): %v, want ErrAddrInUse", err)
	}
	ln.Close()
	ln, err = n.Listen("primary", transports.Options{})
	if err != nil {
		t.Fatalf("Listen after the previous listener closed: %v", err)
	}
	ln.Close()
}

func TestStreamPanicsOnUnknownChannel(t *testing.T) {
	n := mem.NewNetwork()
	ln, err := n.Listen("secondary", transports.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	dialed, _ := dialAccept(t, n, ln)
	defer func() {
		if recover() == nil {
			t.Error("Stream(NumChannels) did not panic")
		}
	}()
	dialed.Stream(transports.NumChannels)
}
