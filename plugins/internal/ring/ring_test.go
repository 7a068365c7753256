package ring

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"net"
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
