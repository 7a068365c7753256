package sdk

import (
	"context"
	"io"
	"net"
	"testing"
	"time"

	"github.com/georepl/georepl/transports"
	"github.com/georepl/georepl/transports/transporttest"
)

// tcpChannels is TCP made a transport by DialChannels and ListenChannels,
// in this process: what a plugin built on them serves.
type tcpChannels struct{}

func (tcpChannels) Dial(ctx context.Context, addr string, _ transports.Options) (transports.Conn, error) {
	return DialChannels(ctx, func(ctx context.Context) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	})
}

func (tcpChannels) Listen(addr string, _ transports.Options) (transports.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	return ListenChannels(ln), nil
}

func TestChannelsConformance(t *testing.T) {
	transporttest.Run(t, func(t *testing.T) (transports.Transport, string) {
		return tcpChannels{}, "127.0.0.1:0"
	})
}

func shorten(t *testing.T, hello, pair time.Duration, unaccepted int) {
	savedHello, savedPair, savedMax := helloTimeout, pairTimeout, maxUnaccepted
	helloTimeout, pairTimeout, maxUnaccepted = hello, pair, unaccepted
	t.Cleanup(func() { helloTimeout, pairTimeout, maxUnaccepted = savedHello, savedPair, savedMax })
}

func listen(t *testing.T) transports.Listener {
	t.Helper()
	l, err := tcpChannels{}.Listen("127.0.0.1:0", transports.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// closedWithin fails t unless the listener closes s within d.
func closedWithin(t *testing.T, s net.Conn, d time.Duration, what string) {
	t.Helper()
	s.SetReadDeadline(time.Now().Add(d))
	if n, err := s.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("%s: read %d bytes, %v; want the listener to close the socket within %v", what, n, err, d)
	}
}

// TestChannelListenerDropsBadSockets: a socket whose hello does not come,
// names no channel, or whose connection stays incomplete is closed within
// the listener's bounds.
func TestChannelListenerDropsBadSockets(t *testing.T) {
	shorten(t, 200*time.Millisecond, 300*time.Millisecond, 64)
	l := listen(t)
	dial := func(hello []byte) net.Conn {
		s, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		s.Write(hello)
		return s
	}
	silent := dial(nil)
	badChannel := dial([]byte{1, 2, 3, 4, 5, 6, 7, 8, transports.NumChannels})
	incomplete := dial([]byte{1, 2, 3, 4, 5, 6, 7, 8, 0})
	closedWithin(t, silent, 5*time.Second, "no hello")
	closedWithin(t, badChannel, 5*time.Second, "hello of channel 2")
	closedWithin(t, incomplete, 5*time.Second, "one channel of two")
}

// TestChannelListenerBoundsUnaccepted: while maxUnaccepted connections
// wait for Accept, a new one is refused (its Dial fails); once Accept took
// one, a new one succeeds.
func TestChannelListenerBoundsUnaccepted(t *testing.T) {
	shorten(t, 5*time.Second, 10*time.Second, 2)
	l := listen(t)
	dial := func() (transports.Conn, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, err := tcpChannels{}.Dial(ctx, l.Addr().String(), transports.Options{})
		if err == nil {
			t.Cleanup(func() { c.Close() })
		}
		return c, err
	}
	for i := range 2 {
		if _, err := dial(); err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
	}
	if _, err := dial(); err == nil {
		t.Fatal("a third connection was set up while two wait for Accept")
	} else {
		t.Logf("third connection: %v", err)
	}
	c, err := l.Accept(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	deadline := time.Now().Add(5 * time.Second)
	for _, err := dial(); err != nil; _, err = dial() {
		if time.Now().After(deadline) {
			t.Fatalf("after an Accept, a new connection still fails: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
