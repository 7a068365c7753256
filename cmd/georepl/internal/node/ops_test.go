package node

import (
	"bytes"
	"context"
	"errors"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/georepl/georepl/core"
	"github.com/georepl/georepl/kmod/nbd"
)

// TestPayloadsOwnership runs the ownership chain of pooled write payloads
// (see payloads) many times at once: a request holds its buffer and fills
// it, each "link" takes a reference and reads the buffer on its own
// goroutine after the request dropped its own, and a buffer may be handed
// out again only once every reference is gone. Under -race, a buffer reused
// while a link still reads it is reported as a data race; without it, the
// content check catches the overwrite.
func TestPayloadsOwnership(t *testing.T) {
	var ps payloads
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := range 500 {
				n := []int{4 << 10, 64 << 10, 1 << 20, 5000}[i%4]
				p := ps.get(n)
				if len(p) != n {
					t.Errorf("get(%d) returned %d bytes", n, len(p))
					return
				}
				fill := byte(w*31 + i)
				for j := range p {
					p[j] = fill
				}
				pl := ps.hold(p)
				var links sync.WaitGroup
				for range 2 {
					ref := ps.ref(p)
					if ref != pl {
						t.Errorf("ref found %p, want %p", ref, pl)
						return
					}
					links.Go(func() {
						if !bytes.Equal(p, bytes.Repeat([]byte{fill}, n)) {
							t.Errorf("a queued payload changed before its link released it")
						}
						ps.release(ref)
					})
				}
				ps.release(pl)
				links.Wait()
			}
		})
	}
	wg.Wait()
	if len(ps.inUse) != 0 {
		t.Fatalf("%d buffers still in use after every reference was released", len(ps.inUse))
	}
	if ps.ref(make([]byte, 10)) != nil {
		t.Fatal("ref found a buffer that is not pooled")
	}
}

// TestPayloadsPieces: the pieces of a split write are found by where they
// start, so that their frames and local writes hold the buffer, until the
// last reference is dropped.
func TestPayloadsPieces(t *testing.T) {
	var ps payloads
	p := ps.get(3 * core.MaxWriteLength)
	pl := ps.hold(p)
	ps.alias(pl, p[core.MaxWriteLength:2*core.MaxWriteLength])
	ps.alias(pl, p[2*core.MaxWriteLength:])
	frame := ps.ref(p[2*core.MaxWriteLength:])
	if frame != pl {
		t.Fatalf("ref of the last piece found %p, want %p", frame, pl)
	}
	ps.release(pl)
	if ps.ref(p[core.MaxWriteLength:]) != pl {
		t.Fatal("a piece is no longer found while a frame still holds its buffer")
	}
	ps.release(pl)
	ps.release(frame)
	if len(ps.inUse) != 0 || ps.ref(p[2*core.MaxWriteLength:]) != nil {
		t.Fatalf("%d entries still in use after the last reference was dropped", len(ps.inUse))
	}
}

func TestPayloadClass(t *testing.T) {
	for _, tc := range []struct{ n, class int }{
		{1, 0}, {4 << 10, 0}, {4<<10 + 1, 1}, {1 << 20, 8}, {32 << 20, 13}, {32<<20 + 1, -1},
	} {
		if got := payloadClass(tc.n); got != tc.class {
			t.Errorf("payloadClass(%d) = %d, want %d", tc.n, got, tc.class)
		}
	}
}

// TestDeviceLargeWrites: the export advertises nbd.MaxPayload and the
// engine takes writes of up to core.MaxWriteLength, so the device splits
// longer writes. Through WriteAt and WriteAsync, with FUA and without, the
// whole range is written; a write whose last piece lies past the end fails
// as a whole; no piece's buffer stays in use.
func TestDeviceLargeWrites(t *testing.T) {
	_, r := upResource(t, "detach")
	if err := r.Primary(true); err != nil {
		t.Fatal(err)
	}
	dev := device{r}
	ctx := context.Background()
	const n = core.MaxWriteLength + core.MaxWriteLength/2
	if r.st.DataSize < n+4096 {
		t.Fatalf("the test disk holds %d bytes of data, too few for a %d-byte write", r.st.DataSize, n)
	}
	payload := func(seed byte) []byte {
		p := dev.WriteBuffer(n)
		for i := range p {
			p[i] = seed + byte(i>>12)
		}
		return p
	}
	check := func(off uint64, want []byte) {
		t.Helper()
		got := make([]byte, len(want))
		if err := dev.ReadAt(ctx, got, off); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("the %d bytes at %d differ from what was written", len(want), off)
		}
	}

	want := bytes.Clone(payload('a')) // WriteAt gives its buffer back to the pool
	p := payload('a')
	if err := dev.WriteAt(ctx, p, 0, true); err != nil {
		t.Fatalf("a FUA write of %d bytes: %v", n, err)
	}
	check(0, want)

	want = bytes.Clone(payload('b'))
	done := make(chan error, 1)
	dev.WriteAsync(ctx, payload('b'), 4096, false, func(err error) { done <- err })
	if err := <-done; err != nil {
		t.Fatalf("an asynchronous write of %d bytes: %v", n, err)
	}
	check(4096, want)

	off := (r.st.DataSize - core.MaxWriteLength - 4096) &^ 4095
	if err := dev.WriteAt(ctx, payload('c'), off, false); !errors.Is(err, nbd.ErrOutOfRange) {
		t.Fatalf("a write whose last piece lies past the end: %v, want an error for nbd.ErrOutOfRange", err)
	}
	r.payloads.mu.Lock()
	inUse := len(r.payloads.inUse)
	r.payloads.mu.Unlock()
	if inUse != 0 {
		t.Fatalf("%d payload buffers (or pieces) still in use after every write completed", inUse)
	}
}

// TestDeviceLargeWriteOrder: the pieces of a split write reach the engine
// together. A later write that overlaps only the last piece, submitted
// while the first piece waits to be submitted, lands after the whole
// write: the engine orders overlapping writes by submission.
func TestDeviceLargeWriteOrder(t *testing.T) {
	_, r := upResource(t, "detach")
	if err := r.Primary(true); err != nil {
		t.Fatal(err)
	}
	dev := device{r}
	ctx := context.Background()
	const n = core.MaxWriteLength + 64<<10
	late := uint64(core.MaxWriteLength + 4096)
	waitStarting := func(count int) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for goroutinesIn("node.(*resource).start(") < count {
			if time.Now().After(deadline) {
				t.Fatalf("fewer than %d requests wait to be submitted", count)
			}
			time.Sleep(time.Millisecond)
		}
	}

	r.emu.Lock() // nothing is submitted until the two writes wait for it
	big := dev.WriteBuffer(n)
	for i := range big {
		big[i] = 'B'
	}
	results := make(chan error, 2)
	go func() { results <- dev.WriteAt(ctx, big, 0, false) }()
	waitStarting(1)
	small := dev.WriteBuffer(4096)
	for i := range small {
		small[i] = 'S'
	}
	go func() { results <- dev.WriteAt(ctx, small, late, false) }()
	waitStarting(2)
	r.emu.Unlock()
	for range 2 {
		if err := <-results; err != nil {
			t.Fatal(err)
		}
	}
	got := make([]byte, 4096)
	if err := dev.ReadAt(ctx, got, late); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, bytes.Repeat([]byte{'S'}, 4096)) {
		t.Fatalf("the later write was overtaken by a piece of the earlier one: read %q...", got[:8])
	}
}

// goroutinesIn counts the goroutines whose stacks hold fn.
func goroutinesIn(fn string) int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return strings.Count(string(buf[:n]), fn)
		}
		buf = make([]byte, 2*len(buf))
	}
}
