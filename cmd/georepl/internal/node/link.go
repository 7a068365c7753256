package node

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/georepl/georepl/core"
	"github.com/georepl/georepl/core/wire"
	"github.com/georepl/georepl/transports"
)

// link is one established, authenticated connection to a peer. It owns the
// connection: one writer goroutine per channel drains an unbounded queue
// (the engine bounds unacknowledged data per peer, see core.PeerConfig), one
// reader goroutine per channel hands frames to the engine, and a
// monitor sends pings and enforces the timeout.
//
// A link never reconnects: when anything fails it closes itself once and
// reports to the resource loop, which decides what comes next.
type link struct {
	peer      core.NodeID
	peerName  string
	transport string
	conn      transports.Conn
	res       *resource
	hello     *wire.Hello // the peer's hello

	queues  [2]*frameQueue
	writers [2]*wire.Writer
	readers [2]*wire.Reader

	pingInterval time.Duration
	timeout      time.Duration

	mu sync.Mutex
	// lastRecv is when anything last arrived from the peer.
	lastRecv time.Time
	// waitingSince is when we first sent something that expects an answer
	// (data, barrier, resync data, ping) after lastRecv; zero if nothing.
	waitingSince time.Time

	closeOnce sync.Once
	closed    chan struct{}
	err       error
}

func newLink(res *resource, peer core.NodeID, peerName, transport string, conn transports.Conn,
	rd [2]*wire.Reader, compression wire.Compression, pingInterval, timeout time.Duration) *link {
	l := &link{
		peer: peer, peerName: peerName, transport: transport, conn: conn, res: res,
		readers:      rd,
		pingInterval: pingInterval,
		timeout:      timeout,
		lastRecv:     time.Now(),
		closed:       make(chan struct{}),
	}
	for ch := range l.queues {
		// Data payloads are read into pooled buffers; see resource.receive
		// for when they return.
		rd[ch].SetPayloadAlloc(res.receiveBuffer)
		l.queues[ch] = newFrameQueue(res)
		c := wire.CompressionNone
		if wire.Channel(ch) == wire.ChannelData {
			c = compression // acks are tiny: compressing them only costs latency
		}
		l.writers[ch] = wire.NewWriter(conn.Stream(transports.Channel(ch)), c)
	}
	return l
}

func (l *link) start() {
	for ch := range l.queues {
		go l.writeLoop(wire.Channel(ch))
		go l.readLoop(wire.Channel(ch))
	}
	go l.monitor()
}

// send queues f for the peer. It never blocks; after close it drops f.
// pl, if not nil, is a reference to f's pooled payload, which the link
// releases once f is written or dropped.
func (l *link) send(f *wire.Frame, pl *payload) {
	switch f.Type {
	case wire.TypeData, wire.TypeBarrier, wire.TypeResyncData, wire.TypePing, wire.TypeReadRequest:
		l.mu.Lock()
		if l.waitingSince.IsZero() {
			l.waitingSince = time.Now()
		}
		l.mu.Unlock()
	}
	l.queues[wire.ChannelOf(f.Type)].push(queued{f, pl})
}

func (l *link) writeLoop(ch wire.Channel) {
	q, w := l.queues[ch], l.writers[ch]
	for {
		batch, ok := q.popAll()
		if !ok {
			return
		}
		err := l.writeBatch(w, ch, batch)
		// Flushed or failed: the Writer keeps no payload (see
		// wire.Writer.WriteFrameShared), so the references go.
		for _, it := range batch {
			l.res.payloads.release(it.pl)
		}
		if err != nil {
			l.fail(err)
			return
		}
	}
}

func (l *link) writeBatch(w *wire.Writer, ch wire.Channel, batch []queued) error {
	for _, it := range batch {
		// Payloads are read-only for everyone (core.Message), so the
		// Writer may send large ones from where they are.
		if err := w.WriteFrameShared(it.f); err != nil {
			return fmt.Errorf("sending %v frame on %s channel: %w", it.f.Type, channelName(ch), err)
		}
	}
	if err := w.Flush(); err != nil {
		return fmt.Errorf("sending on %s channel: %w", channelName(ch), err)
	}
	return nil
}

func (l *link) readLoop(ch wire.Channel) {
	r := l.readers[ch]
	for {
		f, err := r.ReadFrame()
		if err != nil {
			l.fail(fmt.Errorf("receiving on %s channel: %w", channelName(ch), err))
			return
		}
		l.mu.Lock()
		l.lastRecv = time.Now()
		l.waitingSince = time.Time{}
		l.mu.Unlock()
		switch f.Type {
		case wire.TypePing:
			l.queues[wire.ChannelControl].push(queued{f: &wire.Frame{Type: wire.TypePingAck, Seq: f.Seq}})
			continue
		case wire.TypePingAck:
			continue
		case wire.TypeRefuse:
			l.fail(fmt.Errorf("peer refused: %s", f.Payload))
			return
		}
		l.res.receive(l, f)
	}
}

// monitor sends a ping after pingInterval of silence and declares the peer
// dead when something that expects an answer got none within timeout.
func (l *link) monitor() {
	tick := time.NewTicker(l.tickInterval())
	defer tick.Stop()
	for {
		select {
		case <-l.closed:
			return
		case now := <-tick.C:
			l.mu.Lock()
			silent := now.Sub(l.lastRecv)
			waiting := !l.waitingSince.IsZero()
			overdue := waiting && now.Sub(l.waitingSince) > l.timeout
			l.mu.Unlock()
			if overdue {
				l.fail(fmt.Errorf("%w: no answer from the peer within %v", errTimeout, l.timeout))
				return
			}
			if silent >= l.pingInterval && !waiting {
				l.send(&wire.Frame{Type: wire.TypePing}, nil)
			}
		}
	}
}

func (l *link) tickInterval() time.Duration {
	d := min(l.timeout, l.pingInterval) / 10
	return max(d, 10*time.Millisecond)
}

var errTimeout = errors.New("timeout")

// fail closes the link with err and tells the resource loop, once.
func (l *link) fail(err error) {
	l.closeWith(err, true)
}

// close closes the link without reporting to the resource loop (the loop
// itself decided to close it).
func (l *link) close(err error) {
	l.closeWith(err, false)
}

func (l *link) closeWith(err error, report bool) {
	l.closeOnce.Do(func() {
		l.err = err
		close(l.closed)
		for _, q := range l.queues {
			q.close()
		}
		l.conn.Close()
		if report {
			go func() { l.res.linkDown <- linkDown{link: l, err: err} }()
		}
	})
}

func (l *link) stats() (sent, received uint64) {
	for ch := range l.writers {
		sent += l.writers[ch].Stats().Bytes
		received += l.readers[ch].Stats().Bytes
	}
	return sent, received
}

func channelName(ch wire.Channel) string {
	if ch == wire.ChannelData {
		return "data"
	}
	return "control"
}

// frameQueue is an unbounded FIFO of frames with a blocking popAll.
type frameQueue struct {
	res    *resource
	mu     sync.Mutex
	cond   *sync.Cond
	frames []queued
	done   bool
}

// queued is a frame in a frameQueue, with the reference to its pooled
// payload (nil if none) that the queue holds for it.
type queued struct {
	f  *wire.Frame
	pl *payload
}

func newFrameQueue(res *resource) *frameQueue {
	q := &frameQueue{res: res}
	q.cond = sync.NewCond(&q.mu)
	return q
}

func (q *frameQueue) push(it queued) {
	q.mu.Lock()
	if q.done {
		q.mu.Unlock()
		q.res.payloads.release(it.pl)
		return
	}
	q.frames = append(q.frames, it)
	q.cond.Signal()
	q.mu.Unlock()
}

// popAll waits for frames and takes all of them; ok is false once closed.
func (q *frameQueue) popAll() (frames []queued, ok bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for len(q.frames) == 0 && !q.done {
		q.cond.Wait()
	}
	if q.done {
		return nil, false
	}
	frames, q.frames = q.frames, nil
	return frames, true
}

// close drops the queued frames and makes later pushes drop theirs.
func (q *frameQueue) close() {
	q.mu.Lock()
	q.done = true
	dropped := q.frames
	q.frames = nil
	q.cond.Broadcast()
	q.mu.Unlock()
	for _, it := range dropped {
		q.res.payloads.release(it.pl)
	}
}
