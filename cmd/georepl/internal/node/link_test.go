package node

import (
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/georepl/georepl/core/wire"
	"github.com/georepl/georepl/transports"
)

// pipeConn is a transports.Conn over in-process pipes, one per channel.
type pipeConn struct {
	ours, theirs [transports.NumChannels]net.Conn
}

func newPipeConn() *pipeConn {
	c := &pipeConn{}
	for ch := range c.ours {
		c.ours[ch], c.theirs[ch] = net.Pipe()
	}
	return c
}

func (c *pipeConn) Stream(ch transports.Channel) io.ReadWriter { return c.ours[ch] }
func (c *pipeConn) LocalAddr() net.Addr                        { return c.ours[0].LocalAddr() }
func (c *pipeConn) RemoteAddr() net.Addr                       { return c.ours[0].RemoteAddr() }
func (c *pipeConn) Close() error {
	for ch := range c.ours {
		c.ours[ch].Close()
		c.theirs[ch].Close()
	}
	return nil
}

// TestLinkWritersKeepOrder has several goroutines queue frames on one
// channel and write them the two ways a link allows: inline (flush, with
// the writing role passing between goroutines and the writer goroutine,
// large batches left to the latter) and by waking the writer. Every frame
// must arrive once, each goroutine's frames in the order it queued them.
func TestLinkWritersKeepOrder(t *testing.T) {
	for _, inline := range []bool{true, false} {
		res := &resource{}
		conn := newPipeConn()
		readers := [2]*wire.Reader{wire.NewReader(conn.ours[0]), wire.NewReader(conn.ours[1])}
		l := newLink(res, 1, "peer", "test", conn, readers, wire.CompressionNone, time.Hour, time.Hour, inline)
		for ch := range l.queues {
			go l.writeLoop(wire.Channel(ch))
		}
		const senders, perSender = 4, 300
		got := make(chan *wire.Frame, senders*perSender)
		go func() {
			r := wire.NewReader(conn.theirs[wire.ChannelData])
			for {
				f, err := r.ReadFrame()
				if err != nil {
					close(got)
					return
				}
				got <- f
			}
		}()
		var wg sync.WaitGroup
		for s := range senders {
			wg.Go(func() {
				for i := range perSender {
					size := 512
					if i%50 == 0 {
						size = inlineLimit + 1 // left to the writer goroutine
					}
					f := &wire.Frame{Type: wire.TypeData, Seq: uint64(s*perSender + i + 1), Epoch: 1,
						Length: uint32(size), Payload: make([]byte, size)}
					ch := l.queue(f, nil)
					if i%3 == 0 {
						l.queues[ch].wake()
					} else {
						l.flush(ch)
					}
				}
			})
		}
		wg.Wait()
		next := make([]uint64, senders)
		for n := 0; n < senders*perSender; n++ {
			var f *wire.Frame
			select {
			case f = <-got:
			case <-time.After(30 * time.Second):
				t.Fatalf("inline %v: %d of %d frames arrived", inline, n, senders*perSender)
			}
			if f == nil {
				t.Fatalf("inline %v: stream ended after %d frames: %v", inline, n, l.err)
			}
			s, i := (f.Seq-1)/perSender, (f.Seq-1)%perSender
			if i != next[s] {
				t.Fatalf("inline %v: sender %d: frame %d arrived, want %d", inline, s, i, next[s])
			}
			next[s]++
		}
		l.close(nil)
	}
}
