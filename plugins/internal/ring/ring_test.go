package ring

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"sync/atomic"
	"testing"
	"time"
)

// pair opens a ring twice, as the producer and the consumer of two
// processes would.
func pair(t testing.TB, size int) (producer, consumer *Ring) {
	t.Helper()
	f, err := Create(size)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if producer, err = Open(f); err != nil {
		t.Fatal(err)
	}
	if consumer, err = Open(f); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		producer.Abort()
		consumer.Abort()
	})
	return producer, consumer
}

func TestTransferAndEOF(t *testing.T) {
	p, c := pair(t, 4096)
	const total = 8 << 20
	src := make([]byte, total)
	for i := range src {
		src[i] = byte(rand.IntN(256))
	}
	go func() {
		for rest := src; len(rest) > 0; {
			n := min(len(rest), 1+rand.IntN(10000))
			if _, err := p.Write(rest[:n]); err != nil {
				t.Error(err)
				return
			}
			rest = rest[n:]
		}
		p.CloseWrite()
	}()
	h := sha256.New()
	buf := make([]byte, 3000)
	n, err := io.CopyBuffer(h, io.LimitReader(c, total+1), buf)
	if err != nil || n != total {
		t.Fatalf("read %d bytes, %v; want %d and EOF", n, err, total)
	}
	if want := sha256.Sum256(src); !bytes.Equal(h.Sum(nil), want[:]) {
		t.Fatal("data differs")
	}
}

func TestCloseReadFailsWriter(t *testing.T) {
	p, c := pair(t, 4096)
	done := make(chan error, 1)
	go func() {
		_, err := p.Write(make([]byte, 1<<20)) // blocks: nobody reads
		done <- err
	}()
	time.Sleep(50 * time.Millisecond)
	c.CloseRead()
	select {
	case err := <-done:
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("write after CloseRead: %v, want ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("writer still blocked after CloseRead")
	}
}

func TestAbortUnblocksLocalReader(t *testing.T) {
	_, c := pair(t, 4096)
	done := make(chan error, 1)
	go func() {
		_, err := c.Read(make([]byte, 10))
		done <- err
	}()
	time.Sleep(50 * time.Millisecond)
	c.Abort()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("read after Abort: %v, want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("reader still blocked after Abort")
	}
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("read of an aborted ring: %v", err)
	}
}

// TestNoLostWakeup moves bytes through a 64-byte ring in pieces of random
// size, so that each side sleeps on its doorbell thousands of times. A
// lost wake-up leaves both sides asleep, the producer on a full ring and
// the consumer on what it last saw empty; the watchdog fails the test
// then instead of letting it hang. Run it under the race detector too: its
// atomic stores are release stores, which the hardware may order after a
// later load, and the ring must not depend on them being more.
func TestNoLostWakeup(t *testing.T) {
	const total = 256 << 10
	for round := range 10 {
		p, c := pair(t, 64)
		src := make([]byte, total)
		for i := range src {
			src[i] = byte(rand.IntN(256))
		}
		go func() {
			for rest := src; len(rest) > 0; {
				n := min(len(rest), 1+rand.IntN(100))
				if _, err := p.Write(rest[:n]); err != nil {
					return // the watchdog aborted the ring
				}
				rest = rest[n:]
			}
			p.CloseWrite()
		}()
		watchdog := time.AfterFunc(10*time.Second, func() {
			t.Errorf("round %d: no progress for 10 s: head %d, tail %d, consumer waiting %d, producer waiting %d",
				round, atomic.LoadUint64(p.head()), atomic.LoadUint64(p.tail()),
				atomic.LoadUint32(p.cWait()), atomic.LoadUint32(p.pWait()))
			p.Abort()
			c.Abort()
		})
		got, err := io.ReadAll(readerFunc(func(b []byte) (int, error) {
			n, err := c.Read(b[:min(len(b), 1+rand.IntN(100))])
			if n > 0 {
				watchdog.Reset(10 * time.Second)
			}
			return n, err
		}))
		watchdog.Stop()
		if t.Failed() {
			return
		}
		if err != nil || !bytes.Equal(got, src) {
			t.Fatalf("round %d: read %d bytes (%v), want the %d written", round, len(got), err, total)
		}
	}
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(b []byte) (int, error) { return f(b) }
