package transporttest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/georepl/georepl/transports"
)

// Bounds on how long an operation may take before the suite calls the
// transport broken. They are generous: CI machines are slow and noisy.
const (
	setupTimeout    = 15 * time.Second // dial + accept of one connection
	unblockTimeout  = 10 * time.Second // Close → pending operations return
	transferTimeout = 2 * time.Minute  // a whole bulk subtest
)

// Run runs the conformance suite, one subtest per property (see the
// package documentation). newTransport is called at the start of every
// subtest and returns the transport under test and an address to listen
// on; it may register cleanups on t.
func Run(t *testing.T, newTransport func(t *testing.T) (tr transports.Transport, listenAddr string)) {
	subtests := []struct {
		name string
		run  func(t *testing.T, tr transports.Transport, listenAddr string)
	}{
		{"RoundTrip", testRoundTrip},
		{"Ordering", testOrdering},
		{"LargeTransfer", testLargeTransfer},
		{"ChannelIndependence", testChannelIndependence},
		{"FullDuplex", testFullDuplex},
		{"CloseUnblocksPeer", func(t *testing.T, tr transports.Transport, addr string) {
			testCloseUnblocks(t, tr, addr, true)
		}},
		{"CloseUnblocksLocal", func(t *testing.T, tr transports.Transport, addr string) {
			testCloseUnblocks(t, tr, addr, false)
		}},
		{"DialClosedAddress", testDialClosedAddress},
		{"DialCancelledContext", testDialCancelledContext},
		{"DialDeadlineSilentPeer", testDialDeadlineSilentPeer},
		{"AcceptContext", testAcceptContext},
		{"NoGoroutineLeak", testNoGoroutineLeak},
	}
	for _, st := range subtests {
		t.Run(st.name, func(t *testing.T) {
			tr, addr := newTransport(t)
			st.run(t, tr, addr)
		})
	}
}

// pair is one established connection seen from both ends.
type pair struct {
	dialed, accepted transports.Conn
}

// connect listens on listenAddr, dials what the listener reports and
// returns both ends. The listener and both ends are closed at cleanup.
func connect(t testing.TB, tr transports.Transport, listenAddr string) pair {
	t.Helper()
	ln, err := tr.Listen(listenAddr, transports.Options{})
	if err != nil {
		t.Fatalf("Listen(%q): %v", listenAddr, err)
	}
	t.Cleanup(func() { ln.Close() })
	p := establish(t, tr, ln)
	t.Cleanup(func() {
		p.dialed.Close()
		p.accepted.Close()
	})
	return p
}

// establish dials ln and accepts the connection.
func establish(t testing.TB, tr transports.Transport, ln transports.Listener) pair {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	type accepted struct {
		conn transports.Conn
		err  error
	}
	acceptDone := make(chan accepted, 1)
	go func() {
		c, err := ln.Accept(ctx)
		acceptDone <- accepted{c, err}
	}()
	dialed, dialErr := tr.Dial(ctx, ln.Addr().String(), transports.Options{})
	if dialErr != nil {
		cancel()
	}
	a := <-acceptDone
	switch {
	case dialErr != nil:
		if a.conn != nil {
			a.conn.Close()
		}
		t.Fatalf("Dial(%s): %v", ln.Addr(), dialErr)
	case a.err != nil:
		dialed.Close()
		t.Fatalf("Accept on %s: %v", ln.Addr(), a.err)
	}
	return pair{dialed: dialed, accepted: a.conn}
}

// channels lists every channel, for loops.
func channels() []transports.Channel {
	chs := make([]transports.Channel, transports.NumChannels)
	for i := range chs {
		chs[i] = transports.Channel(i)
	}
	return chs
}

// goErr runs f in a goroutine and returns a channel that receives its
// result.
func goErr(f func() error) <-chan error {
	done := make(chan error, 1)
	go func() { done <- f() }()
	return done
}

// wait returns the error f sent, failing the test if that takes longer
// than d.
func wait(t testing.TB, done <-chan error, d time.Duration, what string) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(d):
		t.Fatalf("%s: still blocked after %v", what, d)
		return nil
	}
}

func testRoundTrip(t *testing.T, tr transports.Transport, listenAddr string) {
	p := connect(t, tr, listenAddr)
	for _, c := range []transports.Conn{p.dialed, p.accepted} {
		if c.LocalAddr() == nil || c.RemoteAddr() == nil {
			t.Errorf("LocalAddr() = %v, RemoteAddr() = %v; want both set", c.LocalAddr(), c.RemoteAddr())
		}
	}
	for _, ch := range channels() {
		for _, dir := range []struct {
			name     string
			from, to transports.Conn
		}{{"dialer→acceptor", p.dialed, p.accepted}, {"acceptor→dialer", p.accepted, p.dialed}} {
			msg := fmt.Appendf(nil, "hello on channel %d, %s", ch, dir.name)
			if _, err := dir.from.Stream(ch).Write(msg); err != nil {
				t.Fatalf("channel %d %s: Write: %v", ch, dir.name, err)
			}
			got := make([]byte, len(msg))
			if _, err := io.ReadFull(dir.to.Stream(ch), got); err != nil {
				t.Fatalf("channel %d %s: Read: %v", ch, dir.name, err)
			}
			if !bytes.Equal(got, msg) {
				t.Fatalf("channel %d %s: got %q, want %q", ch, dir.name, got, msg)
			}
		}
	}
}

// orderingMessage returns message seq: an 8-byte header (sequence
// number, payload length) and a payload of 0 to 3000 bytes derived from
// seq, so that a lost, duplicated, reordered or corrupted message is seen.
func orderingMessage(seq uint32) []byte {
	size := int(seq*7919) % 3001
	msg := make([]byte, 8+size)
	binary.BigEndian.PutUint32(msg[0:4], seq)
	binary.BigEndian.PutUint32(msg[4:8], uint32(size))
	for i := range size {
		msg[8+i] = byte(seq) ^ byte(i)
	}
	return msg
}

func testOrdering(t *testing.T, tr transports.Transport, listenAddr string) {
	const messages = 2000
	p := connect(t, tr, listenAddr)
	var workers []<-chan error
	for _, ch := range channels() {
		for _, dir := range [][2]transports.Conn{{p.dialed, p.accepted}, {p.accepted, p.dialed}} {
			w, r := dir[0].Stream(ch), dir[1].Stream(ch)
			workers = append(workers, goErr(func() error {
				for seq := range uint32(messages) {
					if _, err := w.Write(orderingMessage(seq)); err != nil {
						return fmt.Errorf("channel %d: write message %d: %w", ch, seq, err)
					}
				}
				return nil
			}), goErr(func() error {
				for seq := range uint32(messages) {
					want := orderingMessage(seq)
					got := make([]byte, len(want))
					if _, err := io.ReadFull(r, got); err != nil {
						return fmt.Errorf("channel %d: read message %d: %w", ch, seq, err)
					}
					if !bytes.Equal(got, want) {
						return fmt.Errorf("channel %d: message %d: got header %x, want %x (reordered or corrupted)", ch, seq, got[:8], want[:8])
					}
				}
				return nil
			}))
		}
	}
	for _, w := range workers {
		if err := wait(t, w, transferTimeout, "ordering"); err != nil {
			t.Error(err)
		}
	}
}

func testLargeTransfer(t *testing.T, tr transports.Transport, listenAddr string) {
	const (
		blockSize = 1 << 20
		blocks    = 64
	)
	p := connect(t, tr, listenAddr)
	block := make([]byte, blockSize)
	rng := rand.NewChaCha8([32]byte{1})
	rng.Read(block)

	sent := sha256.New()
	writer := goErr(func() error {
		for i := range blocks {
			// Stamp the block number so that reordered blocks change the hash.
			binary.BigEndian.PutUint64(block, uint64(i))
			sent.Write(block)
			if _, err := p.dialed.Stream(transports.ChannelData).Write(block); err != nil {
				return fmt.Errorf("write block %d: %w", i, err)
			}
		}
		// Keep the connection open until the reader confirms receipt:
		// Close does not flush.
		var ack [1]byte
		if _, err := io.ReadFull(p.dialed.Stream(transports.ChannelControl), ack[:]); err != nil {
			return fmt.Errorf("read receipt: %w", err)
		}
		return nil
	})
	received := sha256.New()
	n, err := io.CopyN(received, p.accepted.Stream(transports.ChannelData), blockSize*blocks)
	if err != nil {
		t.Fatalf("read after %d of %d bytes: %v", n, blockSize*blocks, err)
	}
	if _, err := p.accepted.Stream(transports.ChannelControl).Write([]byte{1}); err != nil {
		t.Fatalf("write receipt: %v", err)
	}
	if err := wait(t, writer, transferTimeout, "large transfer writer"); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(sent.Sum(nil), received.Sum(nil)) {
		t.Fatalf("SHA-256 of the %d bytes received differs from what was sent", n)
	}
}

// fillData writes to c's data channel until a write fails, counting the
// bytes written in progress.
func fillData(c transports.Conn, progress *atomic.Int64) <-chan error {
	return goErr(func() error {
		chunk := make([]byte, 64<<10)
		for {
			n, err := c.Stream(transports.ChannelData).Write(chunk)
			progress.Add(int64(n))
			if err != nil {
				return err
			}
		}
	})
}

// waitStalled waits until progress stops growing for a while: the writer
// is then blocked because every buffer on the way is full.
func waitStalled(t *testing.T, progress *atomic.Int64) {
	t.Helper()
	const quiet = 300 * time.Millisecond
	deadline := time.Now().Add(transferTimeout)
	last := progress.Load()
	for lastChange := time.Now(); time.Since(lastChange) < quiet || last == 0; {
		if time.Now().After(deadline) {
			t.Fatalf("data writer never blocked (%d bytes written): the transport buffers without bound", last)
		}
		time.Sleep(20 * time.Millisecond)
		if now := progress.Load(); now != last {
			last, lastChange = now, time.Now()
		}
	}
}

func testChannelIndependence(t *testing.T, tr transports.Transport, listenAddr string) {
	p := connect(t, tr, listenAddr)
	var progress atomic.Int64
	filler := fillData(p.dialed, &progress)
	waitStalled(t, &progress)

	ping := bytes.Repeat([]byte{'p'}, 512)
	pong := make([]byte, len(ping))
	echo := goErr(func() error {
		_, err := io.CopyN(p.accepted.Stream(transports.ChannelControl), p.accepted.Stream(transports.ChannelControl), 100*int64(len(ping)))
		return err
	})
	pingPong := goErr(func() error {
		for i := range 100 {
			if _, err := p.dialed.Stream(transports.ChannelControl).Write(ping); err != nil {
				return fmt.Errorf("control write %d: %w", i, err)
			}
			if _, err := io.ReadFull(p.dialed.Stream(transports.ChannelControl), pong); err != nil {
				return fmt.Errorf("control read %d: %w", i, err)
			}
		}
		return nil
	})
	if err := wait(t, pingPong, unblockTimeout, "control ping-pong while the data channel is full"); err != nil {
		t.Fatal(err)
	}
	if err := wait(t, echo, unblockTimeout, "control echo"); err != nil {
		t.Fatal(err)
	}
	p.dialed.Close()
	if err := wait(t, filler, unblockTimeout, "data writer after Close"); err == nil {
		t.Fatal("data writer returned nil after Close")
	}
}

func testFullDuplex(t *testing.T, tr transports.Transport, listenAddr string) {
	const size = 8 << 20
	p := connect(t, tr, listenAddr)
	var workers []<-chan error
	for _, ch := range channels() {
		for _, c := range []transports.Conn{p.dialed, p.accepted} {
			s := c.Stream(ch)
			workers = append(workers, goErr(func() error {
				chunk := bytes.Repeat([]byte{byte(ch)}, 32<<10)
				for written := 0; written < size; written += len(chunk) {
					if _, err := s.Write(chunk); err != nil {
						return fmt.Errorf("channel %d: write: %w", ch, err)
					}
				}
				return nil
			}), goErr(func() error {
				got := make([]byte, 32<<10)
				for read := 0; read < size; {
					n, err := s.Read(got)
					if bytes.Count(got[:n], []byte{byte(ch)}) != n {
						return fmt.Errorf("channel %d: read bytes of another channel", ch)
					}
					read += n
					if err != nil {
						return fmt.Errorf("channel %d: read after %d bytes: %w", ch, read, err)
					}
				}
				return nil
			}))
		}
	}
	for _, w := range workers {
		if err := wait(t, w, transferTimeout, "full duplex"); err != nil {
			t.Error(err)
		}
	}
}

// testCloseUnblocks blocks reads on every channel of one end and a write
// on its data channel, then closes the other end (peerCloses) or the same
// end, and checks that every blocked operation returns an error.
func testCloseUnblocks(t *testing.T, tr transports.Transport, listenAddr string, peerCloses bool) {
	p := connect(t, tr, listenAddr)
	blockedEnd, closer := p.accepted, p.dialed
	if !peerCloses {
		closer = blockedEnd
	}
	var progress atomic.Int64
	filler := fillData(blockedEnd, &progress)
	waitStalled(t, &progress)
	var readers []<-chan error
	for _, ch := range channels() {
		readers = append(readers, goErr(func() error {
			// The dialer writes nothing: these reads block until Close.
			buf := make([]byte, 1)
			_, err := blockedEnd.Stream(ch).Read(buf)
			return err
		}))
	}
	time.Sleep(50 * time.Millisecond) // let the readers block
	start := time.Now()
	if err := closer.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	for i, r := range readers {
		if err := wait(t, r, unblockTimeout, fmt.Sprintf("read on channel %d", i)); err == nil {
			t.Errorf("read on channel %d returned nil error after Close", i)
		}
	}
	if err := wait(t, filler, unblockTimeout, "blocked data write"); err == nil {
		t.Error("blocked data write returned nil error after Close")
	}
	t.Logf("blocked operations returned %v after Close", time.Since(start))

	if _, err := closer.Stream(transports.ChannelControl).Write([]byte("after close")); err == nil {
		t.Error("Write on a closed Conn succeeded")
	}
	closer.Close() // a second Close must not panic or block
}

func testDialClosedAddress(t *testing.T, tr transports.Transport, listenAddr string) {
	ln, err := tr.Listen(listenAddr, transports.Options{})
	if err != nil {
		t.Fatalf("Listen(%q): %v", listenAddr, err)
	}
	addr := ln.Addr().String()
	if err := ln.Close(); err != nil {
		t.Fatalf("Listener.Close: %v", err)
	}
	done := goErr(func() error {
		c, err := tr.Dial(context.Background(), addr, transports.Options{})
		if err == nil {
			c.Close()
		}
		return err
	})
	if err := wait(t, done, setupTimeout, "Dial of a closed address"); err == nil {
		t.Fatalf("Dial(%s) after the listener closed succeeded", addr)
	} else {
		t.Logf("Dial(%s): %v", addr, err)
	}
}

func testDialCancelledContext(t *testing.T, tr transports.Transport, listenAddr string) {
	ln, err := tr.Listen(listenAddr, transports.Options{})
	if err != nil {
		t.Fatalf("Listen(%q): %v", listenAddr, err)
	}
	defer ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if c, err := tr.Dial(ctx, ln.Addr().String(), transports.Options{}); !errors.Is(err, context.Canceled) {
		if c != nil {
			c.Close()
		}
		t.Errorf("Dial with a cancelled context: err = %v, want one wrapping context.Canceled", err)
	}
}

func testDialDeadlineSilentPeer(t *testing.T, tr transports.Transport, listenAddr string) {
	ln, err := tr.Listen(listenAddr, transports.Options{})
	if err != nil {
		t.Fatalf("Listen(%q): %v", listenAddr, err)
	}
	host, _, err := net.SplitHostPort(ln.Addr().String())
	ln.Close()
	if err != nil {
		t.Skipf("address %s is not host:port: no silent peer to dial", ln.Addr())
	}
	silent := newSilentPeer(t, host)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	done := goErr(func() error {
		c, err := tr.Dial(ctx, silent, transports.Options{})
		if err == nil {
			c.Close()
		}
		return err
	})
	if err := wait(t, done, unblockTimeout, "Dial of a silent peer with a deadline"); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Dial of a silent peer: err = %v, want one wrapping context.DeadlineExceeded", err)
	}
}

// newSilentPeer binds a TCP listener and a UDP socket on the same port of
// host that take whatever arrives and never answer, and returns their
// "host:port".
func newSilentPeer(t *testing.T, host string) string {
	t.Helper()
	for attempt := 0; ; attempt++ {
		tl, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
		if err != nil {
			t.Fatalf("silent peer: %v", err)
		}
		addr := tl.Addr().String()
		uc, err := net.ListenPacket("udp", addr)
		if err != nil {
			tl.Close()
			if attempt < 10 {
				continue // the UDP port is taken: try another number
			}
			t.Fatalf("silent peer: %v", err)
		}
		var wg sync.WaitGroup
		var mu sync.Mutex
		var held []net.Conn
		wg.Go(func() {
			for {
				c, err := tl.Accept()
				if err != nil {
					return
				}
				mu.Lock()
				held = append(held, c)
				mu.Unlock()
			}
		})
		wg.Go(func() {
			buf := make([]byte, 64<<10)
			for {
				if _, _, err := uc.ReadFrom(buf); err != nil {
					return
				}
			}
		})
		t.Cleanup(func() {
			tl.Close()
			uc.Close()
			wg.Wait()
			for _, c := range held {
				c.Close()
			}
		})
		return addr
	}
}

func testAcceptContext(t *testing.T, tr transports.Transport, listenAddr string) {
	ln, err := tr.Listen(listenAddr, transports.Options{})
	if err != nil {
		t.Fatalf("Listen(%q): %v", listenAddr, err)
	}
	defer ln.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if c, err := ln.Accept(ctx); !errors.Is(err, context.DeadlineExceeded) {
		if c != nil {
			c.Close()
		}
		t.Errorf("Accept with nobody dialing: err = %v, want one wrapping context.DeadlineExceeded", err)
	}

	blocked := goErr(func() error {
		c, err := ln.Accept(context.Background())
		if err == nil {
			c.Close()
		}
		return err
	})
	time.Sleep(50 * time.Millisecond) // let Accept block
	if err := ln.Close(); err != nil {
		t.Errorf("Listener.Close: %v", err)
	}
	if err := wait(t, blocked, unblockTimeout, "Accept blocked during Close"); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Accept blocked during Close: err = %v, want one wrapping net.ErrClosed", err)
	}
	if _, err := ln.Accept(context.Background()); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Accept after Close: err = %v, want one wrapping net.ErrClosed", err)
	}
}

func testNoGoroutineLeak(t *testing.T, tr transports.Transport, listenAddr string) {
	const connections = 20
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	for i := range connections {
		ln, err := tr.Listen(listenAddr, transports.Options{})
		if err != nil {
			t.Fatalf("connection %d: Listen(%q): %v", i, listenAddr, err)
		}
		p := establish(t, tr, ln)
		for _, ch := range channels() {
			if _, err := p.dialed.Stream(ch).Write([]byte{byte(i)}); err != nil {
				t.Fatalf("connection %d channel %d: Write: %v", i, ch, err)
			}
			var got [1]byte
			if _, err := io.ReadFull(p.accepted.Stream(ch), got[:]); err != nil {
				t.Fatalf("connection %d channel %d: Read: %v", i, ch, err)
			}
		}
		// Alternate which end closes first: both orders must clean up.
		first, second := p.dialed, p.accepted
		if i%2 == 1 {
			first, second = second, first
		}
		first.Close()
		second.Close()
		ln.Close()
	}
}
