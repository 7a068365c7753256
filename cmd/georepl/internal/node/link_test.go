package node

import (
	"errors"
	"io"
	"net"
	"runtime"
	"strings"
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

// TestLinkFailureAfterLoopExit: a link that fails while its resource goes
// down reports to a loop that may never read the report again. The
// report must not outlive that loop (a goroutine blocked for good), nor
// reach, or race with, the loop of the next Up, which replaces the
// resource's channels. Each round attaches a link, holds the loop busy,
// fails the link, takes the resource down and brings it up again; the
// loop's select picks the stop or the report at random, so several
// rounds go through both.
func TestLinkFailureAfterLoopExit(t *testing.T) {
	_, r := upNode(t, "detach", "dr") // dials nobody: a down does not wait for a dial
	p := sortedPeers(r.peers)[0]
	for round := range 20 {
		conn := newPipeConn()
		for ch := range conn.theirs {
			go io.Copy(io.Discard, conn.theirs[ch]) // the peer reads everything
		}
		ours, err := r.hello(p)
		if err != nil {
			t.Fatal(err)
		}
		theirs := ours
		theirs.From, theirs.To = uint8(p.id), uint8(r.self.ID)
		readers := [2]*wire.Reader{wire.NewReader(conn.ours[0]), wire.NewReader(conn.ours[1])}
		l := newLink(r, p.id, p.node.Name, "test", conn, readers, wire.CompressionNone, time.Hour, time.Hour, false)
		l.hello, l.ourHello = &theirs, &ours
		r.linkUp <- l
		if err := r.call(func() error { return nil }); err != nil { // attached
			t.Fatal(err)
		}

		busy, release := make(chan struct{}), make(chan struct{})
		go r.call(func() error {
			close(busy)
			<-release
			return nil
		})
		<-busy
		l.fail(errors.New("test: the connection broke"))
		down := make(chan error, 1)
		go func() { down <- r.forceDown() }()
		<-r.stop // the loop has both the stop and the report to take
		close(release)
		if err := <-down; err != nil {
			t.Fatal(err)
		}
		if err := r.Up(); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the link's report to end", func() bool { return !goroutineIn("(*link).closeWith") })
		if t.Failed() {
			t.Fatalf("round %d", round)
		}
	}
}

// goroutineIn reports whether a goroutine runs a function whose name
// contains fn.
func goroutineIn(fn string) bool {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return strings.Contains(string(buf[:n]), fn)
		}
		buf = make([]byte, 2*len(buf))
	}
}

// TestLinkReleasesFlushedPayloads: a batch of large data frames goes out
// in several flushes of the Writer (its buffer holds a few MiB). A frame's
// payload must go back to the pool once the flush that sent it returned,
// not when the whole batch is out: on a slow link a batch holds up to
// max_buffer, and keeping every payload until its end held up to twice
// max_buffer of memory.
func TestLinkReleasesFlushedPayloads(t *testing.T) {
	res := &resource{}
	conn := newPipeConn()
	defer conn.Close()
	readers := [2]*wire.Reader{wire.NewReader(conn.ours[0]), wire.NewReader(conn.ours[1])}
	l := newLink(res, 1, "peer", "test", conn, readers, wire.CompressionNone, time.Hour, time.Hour, false)
	defer l.close(errors.New("test over"))
	const frames, size = 16, 1 << 20
	for i := range frames {
		p := res.payloads.get(size)
		l.queue(&wire.Frame{Type: wire.TypeData, Seq: uint64(i + 1), Epoch: 1, Length: size, Payload: p}, res.payloads.hold(p))
	}
	inUse := func() int {
		res.payloads.mu.Lock()
		defer res.payloads.mu.Unlock()
		return len(res.payloads.inUse)
	}
	go l.writeLoop(wire.ChannelData)
	l.queues[wire.ChannelData].wake()

	// The peer reads a few frames, then stops: the writer is blocked in a
	// later flush of the same batch.
	r := wire.NewReader(conn.theirs[wire.ChannelData])
	const read = 6
	for range read {
		if _, err := r.ReadFrame(); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for inUse() > frames-read+wire.MaxBuffered/size {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d payloads still in use after the peer read %d frames; want those of flushed frames back in the pool", inUse(), frames, read)
		}
		time.Sleep(time.Millisecond)
	}
	for range frames - read {
		if _, err := r.ReadFrame(); err != nil {
			t.Fatal(err)
		}
	}
	for inUse() > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d payloads still in use after every frame was read", inUse())
		}
		time.Sleep(time.Millisecond)
	}
}
