package wire

import (
	"bytes"
	"io"
	"math/rand/v2"
	"testing"

	"pgregory.net/rapid"
)

// sendableTypes are the types a caller may give Writer.WriteFrame.
var sendableTypes = []Type{
	TypeHello, TypeAuth, TypeRefuse, TypePing, TypePingAck, TypeData,
	TypeRecvAck, TypeWriteAck, TypeBarrier, TypeBarrierAck, TypeOutOfSync,
	TypeResyncData, TypeStateChange, TypeResyncDone, TypeResyncCsum, TypeResyncCsumReply,
	TypeReadRequest, TypeReadReply,
	TypeVerifyCsum, TypeVerifyReply, TypeIntro, TypeInvalidateRequest,
}

// payloadKinds are the shapes of data a replicated disk carries.
var payloadKinds = []string{"exact", "random", "text", "zeroes"}

// textPayload is compressible like logs or source: words from a small
// vocabulary in a seeded order.
func textPayload(rng *rand.Rand, n int) []byte {
	words := []string{"block ", "write ", "epoch ", "barrier ", "primary ", "secondary ", "replica\n", "0x1f3a "}
	b := make([]byte, 0, n+16)
	for len(b) < n {
		b = append(b, words[rng.IntN(len(words))]...)
	}
	return b[:n]
}

func randomPayload(rng *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

// payloadGen draws payloads of one of kinds, of up to maxLen bytes: exact
// ones byte by byte (so that rapid can shrink them), the others from a
// seed. Half of the seeded ones are longer than maxLen/2, because rapid
// favours small numbers and batches need bulk.
func payloadGen(maxLen int, kinds []string) *rapid.Generator[[]byte] {
	return rapid.Custom(func(t *rapid.T) []byte {
		kind := rapid.SampledFrom(kinds).Draw(t, "kind")
		if kind == "exact" {
			return rapid.SliceOfN(rapid.Byte(), 0, min(maxLen, 64)).Draw(t, "bytes")
		}
		n := rapid.IntRange(0, maxLen/2).Draw(t, "len")
		if rapid.Bool().Draw(t, "long") {
			n += maxLen / 2
		}
		rng := rand.New(rand.NewPCG(rapid.Uint64().Draw(t, "seed"), 1))
		switch kind {
		case "random":
			return randomPayload(rng, n)
		case "text":
			return textPayload(rng, n)
		}
		return make([]byte, n)
	})
}

// frameGen draws well-formed frames that Writer.WriteFrame accepts, with
// payloads drawn by payloadGen.
func frameGen(maxPayload int, kinds []string) *rapid.Generator[Frame] {
	return rapid.Custom(func(t *rapid.T) Frame {
		f := Frame{
			Type:   rapid.SampledFrom(sendableTypes).Draw(t, "type"),
			Flags:  Flags(rapid.Uint16().Draw(t, "flags")) &^ FlagCompressed,
			Seq:    rapid.Uint64().Draw(t, "seq"),
			Epoch:  rapid.Uint64().Draw(t, "epoch"),
			Offset: rapid.Uint64().Draw(t, "offset"),
			Length: rapid.Uint32().Draw(t, "length"),
		}
		switch {
		case (f.Type == TypeData || f.Type == TypeResyncData) && f.Flags&(FlagZeroes|FlagTrim) != 0,
			f.Type == TypeReadRequest, f.Type == TypeReadReply && f.Flags&FlagNegative != 0:
			return f
		}
		if f.Type == TypeResyncCsum || f.Type == TypeVerifyCsum {
			c := rapid.SampledFrom([]Csum{CsumCRC32C, CsumXXH64, CsumSHA256}).Draw(t, "csum")
			digests := rapid.SliceOfN(rapid.Byte(), c.Size(), c.Size()).Draw(t, "digest")
			f.Payload = append([]byte{byte(c)}, bytes.Repeat(digests, rapid.IntRange(1, 8).Draw(t, "blocks"))...)
			return f
		}
		f.Payload = payloadGen(maxPayload, kinds).Draw(t, "payload")
		if f.Type == TypeData || f.Type == TypeResyncData || f.Type == TypeReadReply {
			f.Length = uint32(len(f.Payload))
		}
		return f
	})
}

// sameFrame reports whether two frames are equal, an empty payload being
// equal to a nil one.
func sameFrame(a, b *Frame) bool {
	return a.Type == b.Type && a.Flags == b.Flags && a.Seq == b.Seq && a.Epoch == b.Epoch &&
		a.Offset == b.Offset && a.Length == b.Length && bytes.Equal(a.Payload, b.Payload)
}

func TestAppendDecodeRoundTrip(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		frames := rapid.SliceOfN(frameGen(2048, payloadKinds), 1, 5).Draw(t, "frames")
		prefix := rapid.SliceOfN(rapid.Byte(), 0, 8).Draw(t, "prefix")
		b := append([]byte(nil), prefix...)
		for i := range frames {
			b = AppendFrame(b, &frames[i])
		}
		if !bytes.Equal(b[:len(prefix)], prefix) {
			t.Fatalf("AppendFrame changed the bytes before it")
		}
		rest := b[len(prefix):]
		for i := range frames {
			got, n, err := DecodeFrame(rest)
			if err != nil {
				t.Fatalf("frame %d (%s): %v", i, &frames[i], err)
			}
			if n != HeaderSize+len(frames[i].Payload) {
				t.Fatalf("frame %d: consumed %d bytes, want %d", i, n, HeaderSize+len(frames[i].Payload))
			}
			if !sameFrame(&got, &frames[i]) {
				t.Fatalf("frame %d: decoded %s, want %s", i, &got, &frames[i])
			}
			rest = rest[n:]
		}
		if len(rest) != 0 {
			t.Fatalf("%d bytes left after the last frame", len(rest))
		}
	})
}

// writeRecorder keeps each Write call apart, to check that every one holds
// whole frames.
type writeRecorder struct {
	writes [][]byte
	all    bytes.Buffer
}

func (w *writeRecorder) Write(p []byte) (int, error) {
	w.writes = append(w.writes, append([]byte(nil), p...))
	return w.all.Write(p)
}

func TestWriterReaderRoundTrip(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		compression := rapid.SampledFrom([]Compression{CompressionNone, CompressionLZ4}).Draw(t, "compression")
		var out writeRecorder
		w := NewWriter(&out, compression)
		// A small cap makes automatic flushes happen with little data.
		w.bufferCap = rapid.SampledFrom([]int{MaxBuffered, 160 << 10, 1000}).Draw(t, "bufferCap")

		// Some streams are all incompressible, some all compressible.
		kinds := rapid.SampledFrom([][]string{payloadKinds, {"random"}, {"text"}}).Draw(t, "kinds")

		var sent []Frame
		var rawBytes uint64
		steps := rapid.IntRange(1, 40).Draw(t, "steps")
		for range steps {
			if rapid.IntRange(0, 9).Draw(t, "flush?") == 0 {
				if err := w.Flush(); err != nil {
					t.Fatal(err)
				}
				if w.Buffered() != 0 {
					t.Fatalf("Buffered() = %d after Flush", w.Buffered())
				}
				continue
			}
			maxLen := rapid.SampledFrom([]int{512, 4096, 40 << 10}).Draw(t, "maxLen")
			f := frameGen(maxLen, kinds).Draw(t, "frame")
			// The caller reuses its buffer as soon as WriteFrame returns.
			scratch := append([]byte(nil), f.Payload...)
			send := f
			if f.Payload != nil {
				send.Payload = scratch
			}
			if err := w.WriteFrame(&send); err != nil {
				t.Fatalf("WriteFrame(%s): %v", &f, err)
			}
			for i := range scratch {
				scratch[i] ^= 0xa5
			}
			if w.Buffered() > max(w.bufferCap, HeaderSize+len(f.Payload)) {
				t.Fatalf("Buffered() = %d exceeds the cap %d", w.Buffered(), w.bufferCap)
			}
			sent = append(sent, f)
			rawBytes += uint64(HeaderSize + len(f.Payload))
		}
		if err := w.Flush(); err != nil {
			t.Fatal(err)
		}

		for i, write := range out.writes {
			for len(write) > 0 {
				_, n, err := DecodeFrame(write)
				if err != nil {
					t.Fatalf("Write call %d does not hold whole frames: %v", i, err)
				}
				write = write[n:]
			}
		}

		r := NewReader(bytes.NewReader(out.all.Bytes()))
		var received []*Frame
		for {
			f, err := r.ReadFrame()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("ReadFrame after %d frames: %v", len(received), err)
			}
			received = append(received, f)
		}
		if len(received) != len(sent) {
			t.Fatalf("read %d frames, wrote %d", len(received), len(sent))
		}
		// Compared only now: a frame must stay intact while later ones are read.
		for i := range sent {
			if !sameFrame(received[i], &sent[i]) {
				t.Fatalf("frame %d: read %s, wrote %s", i, received[i], &sent[i])
			}
		}

		ws, rs := w.Stats(), r.Stats()
		wire := uint64(out.all.Len())
		if ws.Frames != uint64(len(sent)) || rs.Frames != ws.Frames {
			t.Fatalf("frames: writer %d, reader %d, sent %d", ws.Frames, rs.Frames, len(sent))
		}
		if ws.Bytes != wire || rs.Bytes != wire {
			t.Fatalf("bytes: writer %d, reader %d, on the wire %d", ws.Bytes, rs.Bytes, wire)
		}
		if ws.RawBytes != rawBytes || rs.RawBytes != rawBytes {
			t.Fatalf("raw bytes: writer %d, reader %d, encoded %d", ws.RawBytes, rs.RawBytes, rawBytes)
		}
		if ws.CompressedBatches != rs.Batches || ws.CompressedBatches > ws.Batches {
			t.Fatalf("batches: writer %+v, reader %+v", ws, rs)
		}
		if compression == CompressionNone && (ws.Batches != 0 || wire != rawBytes) {
			t.Fatalf("CompressionNone made batches: %+v", ws)
		}
	})
}
