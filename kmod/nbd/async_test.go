package nbd

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// asyncDevice is a memDevice whose writes complete later: WriteAsync
// applies the write at once and hands its completion to the test
// (pending), which calls it from a goroutine of its own, as a replicated
// device's acknowledgement would.
type asyncDevice struct {
	*memDevice
	pending chan func()
}

func newAsyncDevice(size int) *asyncDevice {
	return &asyncDevice{memDevice: newMemDevice(size), pending: make(chan func(), 1<<16)}
}

func (d *asyncDevice) WriteAsync(ctx context.Context, p []byte, off uint64, fua bool, done func(error)) {
	err := d.memDevice.WriteAt(ctx, p, off, fua)
	d.pending <- func() { done(err) }
}

// completeAll calls every completion as it comes, until stop is closed,
// and reports the longest a completion took.
func (d *asyncDevice) completeAll(stop <-chan struct{}, delay func() time.Duration) (longest func() time.Duration) {
	var mu sync.Mutex
	var max time.Duration
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		for {
			select {
			case done := <-d.pending:
				if delay != nil {
					time.Sleep(delay())
				}
				start := time.Now()
				done()
				mu.Lock()
				max = maxDuration(max, time.Since(start))
				mu.Unlock()
			case <-stop:
				return
			}
		}
	}()
	return func() time.Duration {
		<-finished
		mu.Lock()
		defer mu.Unlock()
		return max
	}
}

func maxDuration(a, b time.Duration) time.Duration {
	if a > b {
		return a
	}
	return b
}

// TestAsyncWriteFreesTheReader: a write on an AsyncWriter does not hold
// the connection's reader until it completes. With the watchdog made too
// slow to matter, a read sent while the write is pending is answered
// first, and the write's reply comes when the device completes it.
func TestAsyncWriteFreesTheReader(t *testing.T) {
	defer func(g time.Duration) { inlineGrace = g }(inlineGrace)
	inlineGrace = time.Hour
	dev := newAsyncDevice(1 << 20)
	copy(dev.data[4096:], "before")
	s := startServer(t, map[string]Device{"r0": dev})
	c := dial(t, s.spec, "r0")

	writeDone := make(chan error, 1)
	go func() { writeDone <- c.WriteAt([]byte("first"), 0, false) }()
	var complete func()
	select {
	case complete = <-dev.pending:
	case <-time.After(10 * time.Second):
		t.Fatal("the write never reached WriteAsync")
	}
	got := make([]byte, 6)
	if _, err := c.ReadAt(got, 4096); err != nil || string(got) != "before" {
		t.Fatalf("read while a write is pending: %q, %v", got, err)
	}
	select {
	case err := <-writeDone:
		t.Fatalf("the write was answered (%v) before the device completed it", err)
	default:
	}
	complete()
	if err := <-writeDone; err != nil {
		t.Fatal(err)
	}
	if got := dev.snapshot()[:5]; string(got) != "first" {
		t.Fatalf("device holds %q", got)
	}
}

// TestAsyncWriteErrorsMapToErrnos: an error passed to an async write's
// completion reaches the client as the errno WriteAt's would.
func TestAsyncWriteErrorsMapToErrnos(t *testing.T) {
	dev := newAsyncDevice(1 << 20)
	dev.fail = func(op string) error {
		if op == "write" {
			return fmt.Errorf("disk full: %w", syscall.ENOSPC)
		}
		return nil
	}
	s := startServer(t, map[string]Device{"r0": dev})
	c := dial(t, s.spec, "r0")
	stop := make(chan struct{})
	longest := dev.completeAll(stop, nil)
	defer longest()
	defer close(stop)
	if err := c.WriteAt([]byte("x"), 0, false); err == nil || !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("write on a full device: %v, want ENOSPC", err)
	}
	// A request the server refuses before the device completes at once.
	if err := c.WriteAt([]byte("x"), 1<<20, false); err == nil || !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("write past the end: %v, want ENOSPC", err)
	}
}

// TestAsyncCompletionNeverBlocks: a client that sends writes one by one
// and does not read the replies fills the socket; the completions, which
// run on a goroutine that serves others too (a peer's link in georepl),
// still return at once, and every reply arrives once the client reads.
func TestAsyncCompletionNeverBlocks(t *testing.T) {
	dev := newAsyncDevice(1 << 20)
	s := startServer(t, map[string]Device{"r0": dev})
	r := rawHandshake(t, s.path, clientFixedNewstyle|clientNoZeroes)
	r.nc.SetDeadline(time.Now().Add(60 * time.Second))
	r.option(optGo, infoRequest("r0"))
	for {
		if typ, _ := r.reply(optGo); typ == repAck {
			break
		}
	}
	// Each request goes alone, so that it takes the WriteAsync path, and
	// each reply is its own write to the socket: a few hundred unread
	// 16-byte replies fill a unix socket.
	const writes = 2000
	for i := range writes {
		var req [requestHeaderSize + 1]byte
		putRequestHeader(req[:], 0, cmdWrite, uint64(i), uint64(i), 1)
		r.write(req[:])
		select {
		case done := <-dev.pending:
			returned := make(chan struct{})
			go func() {
				done()
				close(returned)
			}()
			select {
			case <-returned:
			case <-time.After(5 * time.Second):
				t.Fatalf("write %d: its completion did not return: it waits on the client's socket", i)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("write %d never reached WriteAsync", i)
		}
	}
	seen := make([]bool, writes)
	for range writes {
		reply := r.read(replyHeaderSize)
		if binary.BigEndian.Uint32(reply) != magicSimpleReply || binary.BigEndian.Uint32(reply[4:]) != 0 {
			t.Fatalf("reply % x", reply)
		}
		cookie := binary.BigEndian.Uint64(reply[8:])
		if cookie >= writes || seen[cookie] {
			t.Fatalf("reply for cookie %d: unknown or twice", cookie)
		}
		seen[cookie] = true
	}
}

// TestAsyncWritesUnderLoad runs writes and reads from several goroutines
// over one connection, with completions late and in their own goroutine,
// and checks every byte (under -race, also who touches what).
func TestAsyncWritesUnderLoad(t *testing.T) {
	dev := newAsyncDevice(1 << 20)
	s := startServer(t, map[string]Device{"r0": dev})
	c := dial(t, s.spec, "r0")
	stop := make(chan struct{})
	longest := dev.completeAll(stop, func() time.Duration { return time.Duration(rand.IntN(200)) * time.Microsecond })
	defer longest()
	defer close(stop)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 100 {
				off := int64(g)*64<<10 + int64(i%16)*4096
				want := randomBytes(uint64(g*1000+i), 4096)
				if err := c.WriteAt(want, off, i%7 == 0); err != nil {
					t.Errorf("goroutine %d write %d: %v", g, i, err)
					return
				}
				got := make([]byte, 4096)
				if _, err := c.ReadAt(got, off); err != nil || !bytes.Equal(got, want) {
					t.Errorf("goroutine %d read %d: %v, equal %v", g, i, err, bytes.Equal(got, want))
					return
				}
			}
		})
	}
	wg.Wait()
}

// asyncFlusher is an asyncDevice whose flushes complete later too, each
// after every write completion handed to the test before it.
type asyncFlusher struct {
	*asyncDevice
	flushes atomic.Int32
}

func (d *asyncFlusher) FlushAsync(ctx context.Context, done func(error)) {
	d.flushes.Add(1)
	err := d.memDevice.Flush(ctx)
	d.pending <- func() { done(err) }
}

// TestAsyncFlushFreesTheReader: a flush on an AsyncFlusher does not hold
// the connection's reader until it completes, as an async write does
// not: a read sent while the flush is pending is answered first, and the
// flush's reply comes when the device completes it.
func TestAsyncFlushFreesTheReader(t *testing.T) {
	defer func(g time.Duration) { inlineGrace = g }(inlineGrace)
	inlineGrace = time.Hour
	dev := &asyncFlusher{asyncDevice: newAsyncDevice(1 << 20)}
	copy(dev.data[4096:], "before")
	s := startServer(t, map[string]Device{"r0": dev})
	c := dial(t, s.spec, "r0")

	flushed := make(chan error, 1)
	go func() { flushed <- c.Flush() }()
	var complete func()
	select {
	case complete = <-dev.pending:
	case <-time.After(10 * time.Second):
		t.Fatal("the flush never reached FlushAsync")
	}
	got := make([]byte, 6)
	if _, err := c.ReadAt(got, 4096); err != nil || string(got) != "before" {
		t.Fatalf("read while a flush is pending: %q, %v", got, err)
	}
	select {
	case err := <-flushed:
		t.Fatalf("the flush was answered (%v) before the device completed it", err)
	default:
	}
	complete()
	if err := <-flushed; err != nil {
		t.Fatal(err)
	}
	if n := dev.flushes.Load(); n != 1 {
		t.Fatalf("%d calls of FlushAsync for one flush", n)
	}
}

// TestAsyncFlushErrorReachesTheClient: a failed async flush is EIO at the
// client.
func TestAsyncFlushErrorReachesTheClient(t *testing.T) {
	dev := &asyncFlusher{asyncDevice: newAsyncDevice(1 << 20)}
	dev.fail = func(op string) error {
		if op == "flush" {
			return fmt.Errorf("fdatasync: %w", syscall.EIO)
		}
		return nil
	}
	stop := make(chan struct{})
	defer close(stop)
	dev.completeAll(stop, nil)
	s := startServer(t, map[string]Device{"r0": dev})
	c := dial(t, s.spec, "r0")
	if err := c.Flush(); !errors.Is(err, syscall.EIO) {
		t.Fatalf("a failed async flush: %v, want EIO", err)
	}
}
