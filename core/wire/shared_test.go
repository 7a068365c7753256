package wire

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"
)

// TestWriteFrameShared checks that frames written with WriteFrameShared,
// large and small, mixed with WriteFrame, read back as they were sent, in
// order, and that the stream is byte for byte what WriteFrame makes.
func TestWriteFrameShared(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 3))
	sizes := []int{0, 4 << 10, MinSharedPayload - 1, MinSharedPayload, 1 << 20, 100, 3 << 20, MaxPayload}
	for _, bufferCap := range []int{MaxBuffered, 160 << 10} {
		t.Run(fmt.Sprint(bufferCap), func(t *testing.T) {
			var shared, copied bytes.Buffer
			ws, wc := NewWriter(&shared, CompressionNone), NewWriter(&copied, CompressionNone)
			ws.bufferCap, wc.bufferCap = bufferCap, bufferCap
			var sent []*Frame
			for i, size := range sizes {
				f := dataFrame(uint64(i+1), randomPayload(rng, size))
				if size == 0 {
					f = &Frame{Type: TypeBarrier, Epoch: uint64(i)}
				}
				if err := ws.WriteFrameShared(f); err != nil {
					t.Fatal(err)
				}
				if err := wc.WriteFrame(f); err != nil {
					t.Fatal(err)
				}
				if ws.Buffered() != wc.Buffered() {
					t.Fatalf("frame %d: Buffered() = %d, WriteFrame's Writer has %d", i, ws.Buffered(), wc.Buffered())
				}
				sent = append(sent, f)
				if i%3 == 2 {
					if err := ws.Flush(); err != nil {
						t.Fatal(err)
					}
					if err := wc.Flush(); err != nil {
						t.Fatal(err)
					}
				}
			}
			if err := ws.Flush(); err != nil {
				t.Fatal(err)
			}
			if err := wc.Flush(); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(shared.Bytes(), copied.Bytes()) {
				t.Fatal("WriteFrameShared's stream differs from WriteFrame's")
			}
			if ss, sc := ws.Stats(), wc.Stats(); ss != sc {
				t.Fatalf("stats %+v, WriteFrame's Writer %+v", ss, sc)
			}
			r := NewReader(&shared)
			for i, want := range sent {
				got, err := r.ReadFrame()
				if err != nil {
					t.Fatalf("frame %d: %v", i, err)
				}
				if got.Type != want.Type || got.Seq != want.Seq || !bytes.Equal(got.Payload, want.Payload) {
					t.Fatalf("frame %d: got %s, want %s", i, got, want)
				}
			}
		})
	}
}

// TestWriteFrameSharedError checks that a failed Flush makes the error
// sticky and lets go of the shared payloads.
func TestWriteFrameSharedError(t *testing.T) {
	w := NewWriter(&failingWriter{err: errors.New("broken")}, CompressionNone)
	if err := w.WriteFrameShared(dataFrame(1, make([]byte, 1<<20))); err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(); err == nil {
		t.Fatal("Flush succeeded on a failing writer")
	}
	if len(w.shared) != 0 || w.sharedBytes != 0 {
		t.Fatalf("after a failed Flush: %d shared payloads, %d bytes kept", len(w.shared), w.sharedBytes)
	}
	if err := w.WriteFrameShared(dataFrame(2, make([]byte, 1<<20))); err == nil {
		t.Fatal("WriteFrameShared succeeded after a failed Flush")
	}
}

// BenchmarkWriteFrameShared compares sending a 1 MiB data frame with
// WriteFrame (copied into the buffer) and WriteFrameShared (written in
// place), to a writer that discards.
func BenchmarkWriteFrameShared(b *testing.B) {
	f := dataFrame(1, randomPayload(rand.New(rand.NewPCG(1, 1)), 1<<20))
	for _, shared := range []bool{false, true} {
		b.Run(fmt.Sprintf("shared=%v", shared), func(b *testing.B) {
			w := NewWriter(discard{}, CompressionNone)
			b.SetBytes(int64(len(f.Payload)))
			for b.Loop() {
				var err error
				if shared {
					err = w.WriteFrameShared(f)
				} else {
					err = w.WriteFrame(f)
				}
				if err == nil {
					err = w.Flush()
				}
				if err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

// TestReaderPayloadAlloc checks that a Reader with SetPayloadAlloc reads
// payloads into the memory alloc gives, for plain and batched frames, and
// allocates itself when alloc returns nil.
func TestReaderPayloadAlloc(t *testing.T) {
	rng := rand.New(rand.NewPCG(4, 4))
	for _, c := range []Compression{CompressionNone, CompressionLZ4} {
		t.Run(c.String(), func(t *testing.T) {
			var stream bytes.Buffer
			w := NewWriter(&stream, c)
			var sent []*Frame
			for i, size := range []int{4 << 10, 100 << 10, 1 << 20, 4 << 10} {
				f := dataFrame(uint64(i+1), textPayload(rng, size))
				if err := w.WriteFrame(f); err != nil {
					t.Fatal(err)
				}
				sent = append(sent, f)
			}
			state := &Frame{Type: TypeStateChange, Payload: []byte("not from alloc")}
			if err := w.WriteFrame(state); err != nil {
				t.Fatal(err)
			}
			sent = append(sent, state)
			if err := w.Flush(); err != nil {
				t.Fatal(err)
			}
			given := map[*byte]bool{}
			r := NewReader(&stream)
			r.SetPayloadAlloc(func(t Type, n int) []byte {
				if t != TypeData {
					return nil
				}
				b := make([]byte, n, n+10)
				given[&b[0]] = true
				return b
			})
			for i, want := range sent {
				got, err := r.ReadFrame()
				if err != nil {
					t.Fatalf("frame %d: %v", i, err)
				}
				if !bytes.Equal(got.Payload, want.Payload) {
					t.Fatalf("frame %d: payload differs", i)
				}
				if fromAlloc := given[&got.Payload[0]]; fromAlloc != (want.Type == TypeData) {
					t.Fatalf("frame %d (%s): payload from alloc = %v", i, want.Type, fromAlloc)
				}
			}
		})
	}
}
