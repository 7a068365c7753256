package transporttest

import (
	"io"
	"testing"

	"github.com/georepl/georepl/transports"
)

// Bench runs the transport benchmarks on one connection through tr,
// listening on listenAddr:
//
//   - Throughput: 1 MiB writes on the data channel, read on the other end;
//     b.SetBytes makes `go test -bench` report MB/s.
//   - PingPong4KiB: 4 KiB sent on the control channel and echoed back;
//     ns/op is one round trip.
func Bench(b *testing.B, tr transports.Transport, listenAddr string) {
	b.Run("Throughput", func(b *testing.B) { benchThroughput(b, tr, listenAddr) })
	b.Run("PingPong4KiB", func(b *testing.B) { benchPingPong(b, tr, listenAddr) })
}

func benchThroughput(b *testing.B, tr transports.Transport, listenAddr string) {
	const writeSize = 1 << 20
	p := connect(b, tr, listenAddr)
	chunk := make([]byte, writeSize)
	reader := goErr(func() error {
		buf := make([]byte, writeSize)
		total := int64(b.N) * writeSize
		if _, err := io.CopyBuffer(io.Discard, io.LimitReader(p.accepted.Stream(transports.ChannelData), total), buf); err != nil {
			return err
		}
		_, err := p.accepted.Stream(transports.ChannelControl).Write([]byte{1})
		return err
	})
	b.SetBytes(writeSize)
	b.ResetTimer()
	for range b.N {
		if _, err := p.dialed.Stream(transports.ChannelData).Write(chunk); err != nil {
			b.Fatal(err)
		}
	}
	// Count until the last byte arrived, not until it was buffered.
	var done [1]byte
	if _, err := io.ReadFull(p.dialed.Stream(transports.ChannelControl), done[:]); err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	if err := <-reader; err != nil {
		b.Fatal(err)
	}
}

func benchPingPong(b *testing.B, tr transports.Transport, listenAddr string) {
	const size = 4 << 10
	p := connect(b, tr, listenAddr)
	ctrl := transports.ChannelControl
	echo := goErr(func() error {
		_, err := io.CopyN(p.accepted.Stream(ctrl), p.accepted.Stream(ctrl), int64(b.N)*size)
		return err
	})
	msg := make([]byte, size)
	reply := make([]byte, size)
	b.ResetTimer()
	for range b.N {
		if _, err := p.dialed.Stream(ctrl).Write(msg); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(p.dialed.Stream(ctrl), reply); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	if err := <-echo; err != nil {
		b.Fatal(err)
	}
}
