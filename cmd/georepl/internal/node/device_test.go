package node

import (
	"bytes"
	"context"
	"errors"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/georepl/georepl/core"
	"github.com/georepl/georepl/kmod/nbd"
)

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
// together. A small write that straddles the boundary between the first
// and the last piece, started while the split write waits to be
// submitted, lands wholly before or wholly after it (the engine orders
// overlapping writes by submission), never between the two pieces, which
// would leave its first half overwritten and its second half standing.
// Which of the two goes first is up to the engine's mutex: both are
// correct.
func TestDeviceLargeWriteOrder(t *testing.T) {
	_, r := upResource(t, "detach")
	if err := r.Primary(true); err != nil {
		t.Fatal(err)
	}
	dev := device{r}
	ctx := context.Background()
	const n = core.MaxWriteLength + 64<<10
	straddle := uint64(core.MaxWriteLength - 2048)
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
	go func() { results <- dev.WriteAt(ctx, small, straddle, false) }()
	waitStarting(2)
	r.emu.Unlock()
	for range 2 {
		if err := <-results; err != nil {
			t.Fatal(err)
		}
	}
	got := make([]byte, 4096)
	if err := dev.ReadAt(ctx, got, straddle); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, bytes.Repeat([]byte{'S'}, 4096)) && !bytes.Equal(got, bytes.Repeat([]byte{'B'}, 4096)) {
		t.Fatalf("the small write came between the pieces of the split write: its first half reads %q..., its second half %q...", got[:8], got[2048:2056])
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
