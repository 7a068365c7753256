package tcp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/georepl/georepl/transports"
)

// shortenTimeouts makes the listener's timeouts test-sized for one test.
func shortenTimeouts(t *testing.T) {
	savedPreamble, savedSet := preambleTimeout, setTimeout
	preambleTimeout, setTimeout = 200*time.Millisecond, 300*time.Millisecond
	t.Cleanup(func() { preambleTimeout, setTimeout = savedPreamble, savedSet })
}

func listen(t *testing.T) transports.Listener {
	t.Helper()
	ln, err := New().Listen("127.0.0.1:0", transports.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

func rawPreamble(id connID, ch transports.Channel) []byte {
	p := makePreamble(id, ch, false)
	return p[:]
}

func TestPreambleRoundTrip(t *testing.T) {
	id := connID{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}
	for _, withTLS := range []bool{false, true} {
		p := makePreamble(id, transports.ChannelControl, withTLS)
		want := append([]byte("GRPL\x02"), id[:]...)
		want = append(want, 1, 0)
		if withTLS {
			want[len(want)-1] = 1
		}
		if !bytes.Equal(p[:], want) {
			t.Fatalf("preamble = %x, want %x", p, want)
		}
		gotID, gotCh, gotTLS, ok := parsePreamble(p)
		if !ok || gotID != id || gotCh != transports.ChannelControl || gotTLS != withTLS {
			t.Errorf("parsePreamble = %x, %d, %v, %v; want %x, 1, %v, true", gotID, gotCh, gotTLS, ok, id, withTLS)
		}
	}
}

// sendRaw opens a TCP connection to ln and writes b on it.
func sendRaw(t *testing.T, ln transports.Listener, b []byte) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := c.Write(b); err != nil {
		t.Fatal(err)
	}
	return c
}

// expectClosedByListener waits for the listener to close c without
// answering.
func expectClosedByListener(t *testing.T, c net.Conn, why string) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := c.Read(make([]byte, answerSize))
	if n != 0 || err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("%s: read %d bytes, err %v; want the listener to close the connection", why, n, err)
	}
}

func TestListenerDropsGarbageAndIncompleteSets(t *testing.T) {
	shortenTimeouts(t)
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	ln := listen(t)

	wrongMagic := rawPreamble(connID{1}, 0)
	copy(wrongMagic, "HTTP")
	wrongVersion := rawPreamble(connID{2}, 0)
	wrongVersion[len(preambleMagic)] = preambleVersion + 1
	cases := []struct {
		name string
		send []byte
	}{
		{"wrong magic", wrongMagic},
		{"wrong version", wrongVersion},
		{"unknown channel", rawPreamble(connID{3}, transports.NumChannels)},
		{"short preamble, then silence", []byte(preambleMagic)},
		{"nothing at all", nil},
		{"one channel of two", rawPreamble(connID{4}, 0)},
	}
	for _, tc := range cases {
		c := sendRaw(t, ln, tc.send)
		expectClosedByListener(t, c, tc.name)
	}

	// The same channel twice: the second is refused, the first stays
	// pending until its set expires.
	first := sendRaw(t, ln, rawPreamble(connID{5}, 1))
	second := sendRaw(t, ln, rawPreamble(connID{5}, 1))
	expectClosedByListener(t, second, "repeated channel")
	expectClosedByListener(t, first, "set whose other channel never came")

	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if c, err := ln.Accept(ctx); err == nil {
		c.Close()
		t.Fatal("Accept returned a connection made of garbage")
	}
	ln.Close()
}

func TestListenerCloseDoesNotWaitForSilentConnections(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	ln := listen(t)
	silent := sendRaw(t, ln, nil)
	half := sendRaw(t, ln, rawPreamble(connID{9}, 0))
	time.Sleep(50 * time.Millisecond) // let the listener take them
	start := time.Now()
	if err := ln.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("Close took %v: it waited for preambles", d)
	}
	expectClosedByListener(t, silent, "connection without preamble at Close")
	expectClosedByListener(t, half, "incomplete set at Close")
}

func TestDialRejectsAListenerThatIsNotGeorepl(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.ReadFull(c, make([]byte, preambleSize))
				c.Write([]byte("SSH-2"))
			}()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = New().Dial(ctx, ln.Addr().String(), transports.Options{})
	if !errors.Is(err, ErrBadPreamble) {
		t.Fatalf("Dial of a non-georepl server: %v, want ErrBadPreamble", err)
	}
}

func TestConnFailsAsAWholeWhenOneChannelDies(t *testing.T) {
	tr := New()
	ln, err := tr.Listen("127.0.0.1:0", transports.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	accepted := make(chan transports.Conn, 1)
	go func() {
		c, err := ln.Accept(ctx)
		if err != nil {
			t.Error(err)
		}
		accepted <- c
	}()
	dialed, err := tr.Dial(ctx, ln.Addr().String(), transports.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer dialed.Close()
	peer := <-accepted
	if peer == nil {
		t.FailNow()
	}
	defer peer.Close()

	// Only the peer's data channel dies. The dialer sees EOF on its data
	// channel, and its control reader, whose own TCP connection is still
	// open, must learn of it at once.
	controlErr := make(chan error, 1)
	go func() {
		_, err := dialed.Stream(transports.ChannelControl).Read(make([]byte, 1))
		controlErr <- err
	}()
	peer.(*conn).socks[transports.ChannelData].sock.Close()
	if _, err := dialed.Stream(transports.ChannelData).Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Errorf("data read after the peer died: %v, want io.EOF", err)
	}
	select {
	case err := <-controlErr:
		if !errors.Is(err, io.EOF) {
			t.Errorf("control read after the peer died: %v, want an error wrapping io.EOF", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("control read still blocked 5 s after the peer died")
	}
	if _, err := dialed.Stream(transports.ChannelControl).Write([]byte("x")); err == nil {
		t.Error("write on a failed Conn succeeded")
	}
}

func TestDialGivesUpOnAListenerThatNeverAnswers(t *testing.T) {
	saved := dialTimeout
	dialTimeout = 300 * time.Millisecond
	defer func() { dialTimeout = saved }()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	held := make(chan net.Conn, transports.NumChannels)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			held <- c // accept, then say nothing
		}
	}()
	defer func() {
		for range len(held) {
			(<-held).Close()
		}
	}()
	start := time.Now()
	_, err = New().Dial(context.Background(), ln.Addr().String(), transports.Options{})
	if !errors.Is(err, ErrDialTimeout) {
		t.Fatalf("Dial of a silent server: %v, want ErrDialTimeout", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Dial gave up after %v, want about %v", d, dialTimeout)
	}
}

// flood opens n TCP connections to ln from the loopback address src,
// each sending preamble(i) (nothing if it returns nil), and keeps them
// open until the test ends. It returns those the listener has not closed
// within a second.
func flood(t *testing.T, ln transports.Listener, src string, n int, preamble func(i int) []byte) []net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	var conns []net.Conn
	for i := range n {
		c, err := d.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatalf("flood connection %d from %s: %v", i, src, err)
		}
		t.Cleanup(func() { c.Close() })
		if p := preamble(i); p != nil {
			c.Write(p)
		}
		conns = append(conns, c)
	}
	// The listener takes the connections off its backlog, and closes those
	// over a source's share, at its own pace: on a loaded machine a second
	// was not always enough. So count again while more than a source may
	// hold are open, for up to 3 s more (short of preambleTimeout, which
	// would close them all and prove nothing).
	time.Sleep(time.Second)
	deadline := time.Now().Add(3 * time.Second)
	for {
		var open []net.Conn
		for _, c := range conns {
			c.SetReadDeadline(time.Now().Add(time.Millisecond))
			if _, err := c.Read(make([]byte, 1)); errors.Is(err, os.ErrDeadlineExceeded) {
				open = append(open, c)
			}
		}
		if len(open) <= maxIncompletePerSource || time.Now().After(deadline) {
			return open
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestListenerFloodFromOneSource: one address opening more connections
// than a source may hold, silent or with half a set each, holds at most
// maxIncompletePerSource of them (the rest are closed at once), and a
// dialer from another address still connects at once.
func TestListenerFloodFromOneSource(t *testing.T) {
	ln := listen(t)
	silent := flood(t, ln, "127.0.0.2", maxIncompletePerSource+100, func(int) []byte { return nil })
	halves := flood(t, ln, "127.0.0.3", 300, func(i int) []byte { return rawPreamble(connID{byte(i), byte(i >> 8), 3}, 0) })
	if len(silent) > maxIncompletePerSource || len(halves) > maxIncompletePerSource {
		t.Errorf("the listener holds %d silent connections from one address and %d half sets from another; at most %d per address",
			len(silent), len(halves), maxIncompletePerSource)
	}
	accepted := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, err := ln.Accept(ctx)
		if err == nil {
			c.Close()
		}
		accepted <- err
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	c, err := New().Dial(ctx, ln.Addr().String(), transports.Options{})
	if err != nil {
		t.Fatalf("a dialer from 127.0.0.1 during the floods: %v", err)
	}
	c.Close()
	if err := <-accepted; err != nil {
		t.Fatal(err)
	}
}

// TestListenerFloodEvictsTheLargestSource: when sources together hold
// every slot, a connection from a new address evicts the oldest one of
// the address holding the most, so that a flood spread over a few
// addresses cannot keep a dialer out.
func TestListenerFloodEvictsTheLargestSource(t *testing.T) {
	ln := listen(t)
	var held int
	for i := 0; held < maxIncomplete; i++ {
		src := fmt.Sprintf("127.0.1.%d", i+1)
		n := min(maxIncompletePerSource, maxIncomplete-held)
		if i == 0 {
			n-- // the largest source, by one
		}
		open := flood(t, ln, src, n, func(j int) []byte { return rawPreamble(connID{byte(j), byte(i), 4}, 0) })
		held += len(open)
		if len(open) != n {
			t.Fatalf("%s: %d of %d half sets held with %d held in all", src, len(open), n, held)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	go func() {
		if c, err := ln.Accept(ctx); err == nil {
			c.Close()
		}
	}()
	c, err := New().Dial(ctx, ln.Addr().String(), transports.Options{})
	if err != nil {
		t.Fatalf("a dialer from 127.0.0.1 with every slot taken: %v", err)
	}
	c.Close()
}
