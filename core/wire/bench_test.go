package wire

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"testing"
)

var benchSizes = []int{4 << 10, 1 << 20}

func BenchmarkAppendFrame(b *testing.B) {
	for _, size := range benchSizes {
		b.Run(fmt.Sprintf("%dKiB", size>>10), func(b *testing.B) {
			f := dataFrame(1, randomPayload(rand.New(rand.NewPCG(1, 1)), size))
			buf := make([]byte, 0, HeaderSize+size)
			b.SetBytes(int64(size))
			for b.Loop() {
				buf = AppendFrame(buf[:0], f)
			}
		})
	}
}

func BenchmarkDecodeFrame(b *testing.B) {
	for _, size := range benchSizes {
		b.Run(fmt.Sprintf("%dKiB", size>>10), func(b *testing.B) {
			encoded := AppendFrame(nil, dataFrame(1, randomPayload(rand.New(rand.NewPCG(1, 1)), size)))
			b.SetBytes(int64(size))
			for b.Loop() {
				if _, _, err := DecodeFrame(encoded); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkWriterReader streams 4 KiB and 1 MiB writes through a Writer
// and a Reader, flushing every 256 KiB as a busy connection would, and
// reports the payload throughput and the bytes on the wire per payload
// byte.
func BenchmarkWriterReader(b *testing.B) {
	rng := rand.New(rand.NewPCG(2, 2))
	data := map[string][]byte{
		"text":   textPayload(rng, 8<<20),
		"random": randomPayload(rng, 8<<20),
	}
	for _, c := range []Compression{CompressionNone, CompressionLZ4} {
		for _, kind := range []string{"text", "random"} {
			for _, size := range benchSizes {
				b.Run(fmt.Sprintf("%s/%s/%dKiB", c, kind, size>>10), func(b *testing.B) {
					benchmarkStream(b, c, data[kind], size)
				})
			}
		}
	}
}

func benchmarkStream(b *testing.B, c Compression, data []byte, size int) {
	const flushEvery = 256 << 10
	var stream bytes.Buffer
	w := NewWriter(&stream, c)
	r := NewReader(&stream)
	b.SetBytes(int64(size))
	var offset, unread int
	for b.Loop() {
		f := dataFrame(1, data[offset:offset+size])
		offset = (offset + size) % (len(data) - size + 1)
		if err := w.WriteFrame(f); err != nil {
			b.Fatal(err)
		}
		unread++
		if w.Buffered() < flushEvery {
			continue
		}
		if err := w.Flush(); err != nil {
			b.Fatal(err)
		}
		for ; unread > 0; unread-- {
			if _, err := r.ReadFrame(); err != nil {
				b.Fatal(err)
			}
		}
	}
	s := w.Stats()
	if s.RawBytes > 0 {
		b.ReportMetric(float64(s.Bytes)/float64(s.RawBytes), "wire/raw")
	}
}
