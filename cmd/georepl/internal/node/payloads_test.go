package node

import (
	"bytes"
	"sync"
	"testing"

	"github.com/georepl/georepl/core"
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
