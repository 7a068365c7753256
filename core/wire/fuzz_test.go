package wire

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"strings"
	"testing"
)

// addEncodedSeeds seeds f with every golden input, valid and corrupt, and
// with Writer output under both compressions.
func addEncodedSeeds(f *testing.F) {
	for _, c := range goldenCases {
		f.Add(c.input(f))
	}
	rng := rand.New(rand.NewPCG(7, 8))
	for _, c := range []Compression{CompressionNone, CompressionLZ4} {
		var out bytes.Buffer
		w := NewWriter(&out, c)
		for i := range 18 {
			payload := textPayload(rng, 4096)
			if i%3 == 0 {
				payload = randomPayload(rng, 4096)
			}
			if err := w.WriteFrame(dataFrame(uint64(i), payload)); err != nil {
				f.Fatal(err)
			}
		}
		if err := w.WriteFrame(&Frame{Type: TypeBarrier, Flags: FlagFlush, Epoch: 1}); err != nil {
			f.Fatal(err)
		}
		if err := w.Flush(); err != nil {
			f.Fatal(err)
		}
		f.Add(out.Bytes())
	}
}

// FuzzDecodeFrame checks that DecodeFrame never panics, and that whatever
// it accepts re-encodes to exactly the bytes it consumed: every header bit
// means something, so two encodings cannot decode alike.
func FuzzDecodeFrame(f *testing.F) {
	addEncodedSeeds(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		fr, n, err := DecodeFrame(b)
		if err != nil {
			if n != 0 {
				t.Fatalf("error %v with %d bytes consumed", err, n)
			}
			return
		}
		if n < HeaderSize || n > len(b) {
			t.Fatalf("consumed %d bytes of %d", n, len(b))
		}
		if again := AppendFrame(nil, &fr); !bytes.Equal(again, b[:n]) {
			t.Fatalf("%s re-encodes differently:\n got % x\nwant % x", &fr, again, b[:n])
		}
	})
}

// FuzzReader checks that a Reader never panics on any stream, returns only
// frames a Writer would accept, and ends with io.EOF or one of the errors
// it documents.
func FuzzReader(f *testing.F) {
	addEncodedSeeds(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		r := NewReader(bytes.NewReader(b))
		var frames []*Frame
		var err error
		for {
			var fr *Frame
			if fr, err = r.ReadFrame(); err != nil {
				break
			}
			frames = append(frames, fr)
		}
		if err != io.EOF && !isFormatError(err) {
			t.Fatalf("unexpected error after %d frames: %v", len(frames), err)
		}
		var out bytes.Buffer
		w := NewWriter(&out, CompressionNone)
		for _, fr := range frames {
			if werr := w.WriteFrame(fr); werr != nil {
				t.Fatalf("Reader returned %s, which the Writer refuses: %v", fr, werr)
			}
		}
		if err := w.Flush(); err != nil {
			t.Fatal(err)
		}
		if r.Stats().Frames != uint64(len(frames)) {
			t.Fatalf("Stats().Frames = %d, returned %d", r.Stats().Frames, len(frames))
		}
	})
}

func isFormatError(err error) bool {
	for _, sentinel := range []error{ErrBadMagic, ErrVersion, ErrChecksum, ErrTooLarge, ErrTruncated, ErrUnknownType, ErrMalformed} {
		if errors.Is(err, sentinel) {
			return true
		}
	}
	return false
}

// FuzzHelloUnmarshal checks that Hello decoding never panics and that a
// decoded Hello re-encodes to the bytes it came from (the rest being a
// later version's fields).
func FuzzHelloUnmarshal(f *testing.F) {
	for _, h := range []Hello{goldenHello, {}, {Resource: strings.Repeat("n", MaxResourceLen)}} {
		b, err := h.MarshalBinary()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
		f.Add(b[:len(b)/2])
		f.Add(append(b, 1, 2, 3))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var h Hello
		if err := h.UnmarshalBinary(b); err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v is not ErrMalformed", err)
			}
			return
		}
		again, err := h.MarshalBinary()
		if err != nil {
			t.Fatalf("decoded %+v does not encode: %v", h, err)
		}
		// An earlier version's hello gains zero split-brain fields and a
		// zero term, or only the term.
		older := zeroExtended(again, b, termSize) || zeroExtended(again, b, splitBrainSize+termSize)
		if !bytes.HasPrefix(b, again) && !older {
			t.Fatalf("%+v re-encodes as % x, not a prefix of % x", h, again, b)
		}
	})
}

// FuzzIntroUnmarshal is FuzzHelloUnmarshal for Intro.
func FuzzIntroUnmarshal(f *testing.F) {
	for _, in := range []Intro{goldenIntro, {}, {Resource: strings.Repeat("n", MaxResourceLen)}} {
		b, err := in.MarshalBinary()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
		f.Add(b[:len(b)/2])
		f.Add(append(b, 1, 2, 3))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var in Intro
		if err := in.UnmarshalBinary(b); err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v is not ErrMalformed", err)
			}
			return
		}
		again, err := in.MarshalBinary()
		if err != nil || !bytes.HasPrefix(b, again) {
			t.Fatalf("%+v re-encodes as % x (%v), not a prefix of % x", in, again, err, b)
		}
	})
}

// FuzzStateUnmarshal is FuzzHelloUnmarshal for State.
func FuzzStateUnmarshal(f *testing.F) {
	b, err := goldenState.MarshalBinary()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	f.Add(b[:stateSize-1])
	f.Add(append(b, 9))
	f.Fuzz(func(t *testing.T, b []byte) {
		var s State
		if err := s.UnmarshalBinary(b); err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v is not ErrMalformed", err)
			}
			return
		}
		again, err := s.MarshalBinary()
		// An earlier version's state gains a zero term.
		if err != nil || !bytes.HasPrefix(b, again) && !zeroExtended(again, b, termSize) {
			t.Fatalf("%+v re-encodes as % x (%v), not a prefix of % x", s, again, err, b)
		}
	})
}

// zeroExtended reports whether again is b followed by n zero bytes: the
// encoding of a payload of an earlier version, whose missing trailing
// fields decode as zero.
func zeroExtended(again, b []byte, n int) bool {
	return len(again) == len(b)+n && bytes.HasPrefix(again, b) && bytes.Count(again[len(b):], []byte{0}) == n
}
