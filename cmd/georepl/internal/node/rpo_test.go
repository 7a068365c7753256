package node

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/georepl/georepl/kmod/nbd"
	"github.com/georepl/georepl/transports"
)

// shapedTransport is a transport whose dialled connections send on the
// data channel at most rate bytes per second (a token bucket with a burst
// of 64 KiB), as a link shaped with tc's tbf would.
type shapedTransport struct {
	transports.Transport
	rate float64
}

func (s shapedTransport) Dial(ctx context.Context, addr string, opts transports.Options) (transports.Conn, error) {
	c, err := s.Transport.Dial(ctx, addr, opts)
	if err != nil {
		return nil, err
	}
	return &shapedConn{Conn: c, data: &shapedStream{ReadWriter: c.Stream(transports.ChannelData), rate: s.rate, last: time.Now()}}, nil
}

type shapedConn struct {
	transports.Conn
	data *shapedStream
}

// ChannelBinding passes the shaped connection's on: the handshake binds
// its authentication to it.
func (c *shapedConn) ChannelBinding() ([]byte, error) {
	if cb, ok := c.Conn.(transports.ChannelBinding); ok {
		return cb.ChannelBinding()
	}
	return nil, nil
}

func (c *shapedConn) Stream(ch transports.Channel) io.ReadWriter {
	if ch == transports.ChannelData {
		return c.data
	}
	return c.Conn.Stream(ch)
}

type shapedStream struct {
	io.ReadWriter
	rate   float64
	mu     sync.Mutex
	tokens float64
	last   time.Time
}

const shapedBurst = 64 << 10

func (s *shapedStream) Write(p []byte) (int, error) {
	done := 0
	for done < len(p) {
		s.mu.Lock()
		now := time.Now()
		s.tokens = min(s.tokens+now.Sub(s.last).Seconds()*s.rate, shapedBurst)
		s.last = now
		n := min(len(p)-done, int(s.tokens))
		if n == 0 {
			wait := time.Duration((1 - s.tokens) / s.rate * float64(time.Second))
			s.mu.Unlock()
			time.Sleep(max(wait, time.Millisecond))
			continue
		}
		s.tokens -= float64(n)
		s.mu.Unlock()
		w, err := s.ReadWriter.Write(p[done : done+n])
		done += w
		if err != nil {
			return done, err
		}
	}
	return done, nil
}

// TestRPOOnAShapedLink writes a burst much faster than the link to the
// protocol A DR peer carries (1 MiB/s, shaped on alpha's side): while the
// link drains, the RPO's bytes are what the link has not delivered (at
// most what was written, at least what the link could not have carried
// yet) and its age is the time since the burst; both fall to zero once
// the link caught up, not before it could have.
func TestRPOOnAShapedLink(t *testing.T) {
	const rate = 1 << 20
	daemons := demoCluster(t, func(_, src string) string {
		// Random data: lz4 must not make the link faster than its shape.
		return strings.Replace(src, "compression = \"lz4\"", "compression = \"none\"", 1)
	}, map[string]Options{"alpha": {Transports: func(name string) (transports.Transport, error) {
		tr, err := transports.Lookup(name)
		if err != nil || name != "quic" {
			return tr, err
		}
		return shapedTransport{Transport: tr, rate: rate}, nil
	}}})
	alpha := daemons["alpha"]
	ra := alpha.resources["r0"]
	for _, peer := range []string{"bravo", "dr"} {
		waitUntil(t, "alpha connects to "+peer, func() (bool, string) {
			p := peerStatus(t, alpha, peer)
			return p.Conn == "Connected", p.Conn
		})
	}
	if err := ra.Primary(true); err != nil {
		t.Fatal(err)
	}
	for _, peer := range []string{"bravo", "dr"} {
		waitUntil(t, peer+" in sync", func() (bool, string) {
			p := peerStatus(t, alpha, peer)
			return p.Repl == "Established" && p.Disk == "UpToDate" && p.OutOfSync == 0 && p.RPO != nil && p.RPO.Bytes == 0,
				fmt.Sprintf("%s %s %d out of sync, rpo %+v", p.Repl, p.Disk, p.OutOfSync, p.RPO)
		})
	}
	dev, err := alpha.LocalDevice("r0")
	if err != nil {
		t.Fatal(err)
	}
	const size, count = 64 << 10, 40 // 2.5 MiB: 2.5 s on the link
	const total = size * count
	start := time.Now()
	for i := range count {
		buf := dev.(nbd.WriteBuffers).WriteBuffer(size)
		rand.Read(buf)
		if err := dev.WriteAt(context.Background(), buf, uint64(i)*size, false); err != nil {
			t.Fatal(err)
		}
	}
	burst := time.Since(start)
	if burst > time.Second {
		t.Logf("the burst took %v: the link's backlog is smaller than planned", burst)
	}
	samples := 0
	for {
		p := peerStatus(t, alpha, "dr")
		since := time.Since(start)
		if p.RPO == nil {
			t.Fatalf("no RPO for dr on the Primary")
		}
		if p.RPO.Bytes == 0 {
			if p.RPO.AgeSeconds != 0 {
				t.Errorf("dr caught up but its RPO age is %.3fs", p.RPO.AgeSeconds)
			}
			// The link carries total bytes in total/rate seconds, less
			// its burst; the acknowledgements and the status lag a little.
			if least := time.Duration(float64(total-shapedBurst) / rate * float64(time.Second) * 0.9); since < least {
				t.Errorf("dr caught up after %v, faster than the link could carry %d bytes (%v)", since, total, least)
			}
			t.Logf("dr caught up after %v (%d samples)", since, samples)
			break
		}
		samples++
		// What the link cannot have carried yet is still missing.
		carried := rate*since.Seconds() + shapedBurst
		if p.RPO.Bytes > total || float64(p.RPO.Bytes) < float64(total)-carried*1.2-4*size {
			t.Errorf("after %v: RPO %d bytes; want at most %d written, at least %d minus what the link carried (%.0f)",
				since, p.RPO.Bytes, total, total, carried)
		}
		if age := p.RPO.AgeSeconds; age > since.Seconds()+0.05 || age < since.Seconds()-burst.Seconds()-0.4 {
			t.Errorf("after %v (burst %v): RPO age %.3fs; want the age of the burst's unacknowledged writes", since, burst, age)
		}
		if since > 30*time.Second {
			t.Fatalf("dr did not catch up in %v: RPO %+v", since, p.RPO)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if samples < 5 {
		t.Errorf("only %d samples while the link drained: the shape did not hold the data back", samples)
	}
}
