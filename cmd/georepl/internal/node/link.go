package node

import (
	"errors"
	"fmt"
	"io"
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
// A link without paths (rt nil) never reconnects: when anything fails it
// closes itself once and reports to the resource loop, which decides what
// comes next. A link of a connection with path blocks outlives its
// transport connections (see paths.go): when the one in use fails, the
// link is suspended, its frames stay queued, and it resumes on a new
// transport connection, re-sending what the peer did not receive.
type link struct {
	peer        core.NodeID
	peerName    string
	transport   string
	res         *resource
	hello       *wire.Hello // the peer's hello
	ourHello    *wire.Hello // the hello we sent on this connection
	compression wire.Compression

	queues [2]*frameQueue

	// pmu guards the path state: cur, suspended and the fields of rt
	// that say so.
	pmu sync.Mutex
	// cur is the transport connection in use, or the one that failed
	// while suspended.
	cur       *pathConn
	suspended bool
	// suspendedAt is when the link was suspended, and pathErr why; it
	// fails once it stayed so for timeout.
	suspendedAt time.Time
	pathErr     error
	// resumeMu makes resumptions one at a time.
	resumeMu sync.Mutex
	// suspend is closed when the link is suspended, then replaced.
	suspend chan struct{}
	// started is closed once start ran: its readers read cur.
	started chan struct{}
	// rt keeps written frames until the peer confirms them, so that the
	// link can move to another transport connection; nil for a link
	// that cannot (its connection has no path blocks, or the peer does
	// not support it).
	rt *retransmit
	// sentBefore and recvBefore are the bytes of the transport
	// connections before cur.
	sentBefore, recvBefore uint64

	pingInterval time.Duration
	timeout      time.Duration
	// resumeWithin is how long a suspended link waits to continue on a
	// new transport connection before it fails: timeout, or at most
	// singlePathGrace on a connection without path blocks.
	resumeWithin time.Duration
	// inline: the goroutine that queued a small frame may write it itself
	// (flush) instead of waking the channel's writer. Only for protocols
	// B and C, where the application waits for the peer's answer anyway:
	// a write to a peer that stopped reading can block until the timeout,
	// which must never hold up a protocol A write.
	inline bool

	mu sync.Mutex
	// lastRecv is when anything last arrived from the peer.
	lastRecv time.Time
	// waitingSince is when we first sent something that expects an answer
	// (data, barrier, resync data, ping) after lastRecv; zero if nothing.
	waitingSince time.Time

	closeOnce sync.Once
	closed    chan struct{}
	err       error

	// down and loopDone are the resource loop that attached the link
	// (attach): a failure is reported to that loop, and to no later
	// one, until it has ended.
	down     chan<- linkDown
	loopDone <-chan struct{}
}

func newLink(res *resource, peer core.NodeID, peerName, transport string, conn transports.Conn,
	rd [2]*wire.Reader, compression wire.Compression, pingInterval, timeout time.Duration, inline bool) *link {
	l := &link{
		peer: peer, peerName: peerName, transport: transport, res: res,
		compression:  compression,
		pingInterval: pingInterval,
		timeout:      timeout,
		inline:       inline,
		lastRecv:     time.Now(),
		closed:       make(chan struct{}),
		suspend:      make(chan struct{}),
		started:      make(chan struct{}),
	}
	for ch := range l.queues {
		l.queues[ch] = newFrameQueue(res)
	}
	l.cur = l.newPathConn(conn, rd, 0, nil)
	return l
}

// pathConn is one transport connection of a link, on one of the
// connection's paths.
type pathConn struct {
	conn    transports.Conn
	path    int // index in the connection's paths
	readers [2]*wire.Reader
	writers [2]*wire.Writer
	// readersDone is done once both reader goroutines ended: no frame of
	// this connection reaches the engine after that.
	readersDone sync.WaitGroup
	closeOnce   sync.Once
	// records counts the TLS records of conn (rekey.go); nil if not.
	records *recordCount
}

// newPathConn is conn on path, read by rd; records, if not nil, counts
// the records of conn's streams (rd must read through it already).
func (l *link) newPathConn(conn transports.Conn, rd [2]*wire.Reader, path int, records *recordCount) *pathConn {
	pc := &pathConn{conn: conn, path: path, readers: rd, records: records}
	for ch := range pc.writers {
		// Data payloads are read into pooled buffers; see resource.receive
		// for when they return.
		rd[ch].SetPayloadAlloc(l.res.receiveBuffer)
		c := wire.CompressionNone
		if wire.Channel(ch) == wire.ChannelData {
			c = l.compression // acks are tiny: compressing them only costs latency
		}
		var stream io.ReadWriter = conn.Stream(transports.Channel(ch))
		if records != nil {
			stream = countedStream{stream, records}
		}
		pc.writers[ch] = wire.NewWriter(stream, c)
	}
	return pc
}

func (pc *pathConn) close() { pc.closeOnce.Do(func() { pc.conn.Close() }) }

func (pc *pathConn) stats() (sent, received uint64) {
	for ch := range pc.writers {
		sent += pc.writers[ch].Stats().Bytes
		received += pc.readers[ch].Stats().Bytes
	}
	return sent, received
}

// current is the transport connection in use.
func (l *link) current() *pathConn {
	l.pmu.Lock()
	defer l.pmu.Unlock()
	return l.cur
}

// attach makes the link report its failure to the loop that owns down
// and loopDone. Called by that loop, before the link is started or seen
// by anyone else.
func (l *link) attach(down chan<- linkDown, loopDone <-chan struct{}) {
	l.down, l.loopDone = down, loopDone
}

func (l *link) start() {
	for ch := range l.queues {
		go l.writeLoop(wire.Channel(ch))
	}
	l.startReaders(l.cur)
	go l.monitor()
	close(l.started)
}

func (l *link) startReaders(pc *pathConn) {
	pc.readersDone.Add(len(pc.readers))
	for ch := range pc.readers {
		go l.readLoop(pc, wire.Channel(ch))
	}
}

// send queues f for the peer and wakes the channel's writer. It never
// blocks; after close it drops f. pl, if not nil, is a reference to f's
// pooled payload, which the link releases once f is written or dropped.
func (l *link) send(f *wire.Frame, pl *payload) {
	l.queue(f, pl)
	l.queues[wire.ChannelOf(f.Type)].wake()
}

// queue queues f like send but leaves the writer asleep: the caller must
// call flush (or wake) for f's channel soon, once it holds no lock. It
// reports f's channel.
func (l *link) queue(f *wire.Frame, pl *payload) wire.Channel {
	switch f.Type {
	case wire.TypeData, wire.TypeBarrier, wire.TypeResyncData, wire.TypePing, wire.TypeReadRequest:
		l.mu.Lock()
		if l.waitingSince.IsZero() {
			l.waitingSince = time.Now()
		}
		l.mu.Unlock()
	}
	ch := wire.ChannelOf(f.Type)
	l.queues[ch].push(queued{f, pl})
	return ch
}

// inlineLimit is the most bytes a flush writes on the caller's goroutine;
// more is the writer's: a large frame should go out while the caller does
// its local write, not before it.
const inlineLimit = 64 << 10

// flush writes what is queued on ch on the calling goroutine, unless the
// link is not inline, a write is under way (which takes the frames too),
// or more than inlineLimit bytes are queued; then it wakes the writer.
// Saving the writer's wake-up matters for latency: with protocol C, a
// write's round trip has a frame to send at each end.
func (l *link) flush(ch wire.Channel) {
	q := l.queues[ch]
	if !l.inline {
		q.wake()
		return
	}
	batch, ok := q.takeSmall(inlineLimit)
	if ok {
		l.drain(ch, batch)
	}
}

// wake leaves what is queued on ch to the channel's writer.
func (l *link) wake(ch wire.Channel) { l.queues[ch].wake() }

// flushAll flushes every channel of l.
func (l *link) flushAll() {
	for ch := range l.queues {
		l.flush(wire.Channel(ch))
	}
}

func (l *link) writeLoop(ch wire.Channel) {
	q := l.queues[ch]
	for {
		batch, ok := q.popAll()
		if !ok {
			return
		}
		l.drain(ch, batch)
	}
}

// drain writes batch and whatever is queued after it, until the queue is
// empty, then gives up the writing role that came with batch.
//
// The writing role keeps the transport connection from changing under it
// (see link.resume), so that a batch goes out on one.
func (l *link) drain(ch wire.Channel, batch []queued) {
	q, pc := l.queues[ch], l.current()
	for {
		err := l.writeBatch(pc, ch, batch)
		if err != nil {
			q.doneWriting()
			l.pathFailed(pc, err)
			return
		}
		var ok bool
		if batch, ok = q.next(); !ok {
			return
		}
	}
}

// writeBatch writes and flushes batch, and drops the queue's reference to
// each frame's payload as soon as the Writer is done with it: once a flush
// sent the frame, or the Writer failed. A batch can hold up to a peer's
// max_buffer of data, and on a slow link a flush of the Writer's buffer
// returns long before the batch is out; holding every payload to the end
// of the batch held up to twice max_buffer.
//
// On a link that can move (rt), the frames the peer counts are kept, with
// their payloads, until it confirms them (retransmit.keep): only the
// others are released here.
func (l *link) writeBatch(pc *pathConn, ch wire.Channel, batch []queued) error {
	w := pc.writers[ch]
	released := 0
	releaseTo := func(n int) {
		for ; released < n; released++ {
			if l.rt == nil || !counted(batch[released].f.Type) {
				l.res.payloads.release(batch[released].pl)
			}
		}
	}
	defer releaseTo(len(batch)) // flushed or failed: the Writer keeps none
	if l.rt != nil {
		l.pmu.Lock()
		err := l.rt.keep(ch, batch)
		l.pmu.Unlock()
		if err != nil {
			return err
		}
	}
	for i, it := range batch {
		// Payloads are read-only for everyone (core.Message), so the
		// Writer may send large ones from where they are.
		if err := w.WriteFrameShared(it.f); err != nil {
			return fmt.Errorf("sending %v frame on %s channel: %w", it.f.Type, channelName(ch), err)
		}
		releaseTo(i + 1 - w.Unflushed())
	}
	if err := w.Flush(); err != nil {
		return fmt.Errorf("sending on %s channel: %w", channelName(ch), err)
	}
	return nil
}

func (l *link) readLoop(pc *pathConn, ch wire.Channel) {
	defer pc.readersDone.Done()
	r := pc.readers[ch]
	for {
		f, err := r.ReadFrame()
		if err != nil {
			l.pathFailed(pc, fmt.Errorf("receiving on %s channel: %w", channelName(ch), err))
			return
		}
		l.mu.Lock()
		l.lastRecv = time.Now()
		l.waitingSince = time.Time{}
		l.mu.Unlock()
		switch f.Type {
		case wire.TypePing, wire.TypePingAck, wire.TypePathAck:
			switch f.Type {
			case wire.TypePing:
				l.send(&wire.Frame{Type: wire.TypePingAck, Seq: f.Seq}, nil)
			case wire.TypePathAck:
				if err := l.confirmed(f); err != nil {
					l.fail(err)
					return
				}
			}
			// A receive that found this frame buffered left its frames
			// queued for the next receive to write (executor); this
			// frame is not one, and may be the last for a while.
			if !r.Buffered() {
				l.flushAll()
			}
			continue
		case wire.TypeRefuse:
			l.fail(fmt.Errorf("peer refused: %s", f.Payload))
			return
		}
		if l.rt != nil {
			if l.rt.received(ch, len(f.Payload)) {
				l.sendPathAck()
			}
		}
		l.res.receive(l, f, r.Buffered())
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
			if l.rt != nil {
				if err := l.pathTick(now); err != nil {
					l.fail(err)
					return
				}
				if l.isSuspended() {
					continue
				}
			}
			l.mu.Lock()
			silent := now.Sub(l.lastRecv)
			waiting := !l.waitingSince.IsZero()
			overdue := waiting && now.Sub(l.waitingSince) > l.timeout
			l.mu.Unlock()
			if overdue {
				l.pathFailed(l.current(), fmt.Errorf("%w: no answer from the peer within %v", errTimeout, l.timeout))
				continue
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
		l.pmu.Lock()
		l.cur.close()
		if l.rt != nil {
			l.rt.drop(l.res)
		}
		l.pmu.Unlock()
		if report {
			// On its own goroutine, so that the caller (whichever
			// goroutine wrote or read on the link) never waits for the
			// loop; a loop that has ended forgot the link.
			go func() {
				select {
				case l.down <- linkDown{link: l, err: err}:
				case <-l.loopDone:
				}
			}()
		}
	})
}

func (l *link) stats() (sent, received uint64) {
	l.pmu.Lock()
	defer l.pmu.Unlock()
	sent, received = l.cur.stats()
	return l.sentBefore + sent, l.recvBefore + received
}

func channelName(ch wire.Channel) string {
	if ch == wire.ChannelData {
		return "data"
	}
	return "control"
}

// frameQueue is an unbounded FIFO of frames for one channel. Whoever
// writes its frames holds the writing role: the channel's writer
// goroutine (popAll), or a goroutine that flushes inline (takeSmall). The
// role passes on with the frames queued meanwhile (next), so frames go
// out in queue order and one goroutine writes at a time.
type frameQueue struct {
	res     *resource
	mu      sync.Mutex
	cond    *sync.Cond
	frames  []queued
	bytes   int  // payload bytes in frames
	writing bool // a goroutine holds the writing role
	// paused: the link is suspended (no transport connection to write
	// on); nobody takes the writing role until it resumes.
	paused bool
	done   bool
	// idlers counts the goroutines waiting in idle. Giving the writing
	// role up wakes the cond's waiters only if there are such: the
	// writer goroutine waits on it too (popAll), and a broadcast at every
	// inline write would wake it for nothing, a thread wake-up per frame.
	idlers int
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

// push appends it; nobody is woken (see wake).
func (q *frameQueue) push(it queued) {
	q.mu.Lock()
	if q.done {
		q.mu.Unlock()
		q.res.payloads.release(it.pl)
		return
	}
	q.frames = append(q.frames, it)
	q.bytes += len(it.f.Payload)
	q.mu.Unlock()
}

// wake makes the writer goroutine write what is queued, unless a write is
// under way, which takes it too.
func (q *frameQueue) wake() {
	q.mu.Lock()
	if len(q.frames) > 0 && !q.writing {
		q.cond.Signal()
	}
	q.mu.Unlock()
}

// popAll waits for frames that nobody writes and takes them all, with the
// writing role; ok is false once closed.
func (q *frameQueue) popAll() (frames []queued, ok bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for (len(q.frames) == 0 || q.writing || q.paused) && !q.done {
		q.cond.Wait()
	}
	if q.done {
		return nil, false
	}
	return q.takeLocked(), true
}

// takeSmall takes the queued frames with the writing role if nobody
// writes and they hold at most limit payload bytes; otherwise, it wakes
// the writer goroutine if nobody writes, and ok is false.
func (q *frameQueue) takeSmall(limit int) (frames []queued, ok bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	switch {
	case q.done || q.writing || q.paused || len(q.frames) == 0:
		return nil, false
	case q.bytes > limit:
		q.cond.Signal()
		return nil, false
	}
	return q.takeLocked(), true
}

// next passes the writing role on: it takes the frames queued meanwhile,
// or gives the role up (ok false) when there are none.
func (q *frameQueue) next() (frames []queued, ok bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.done || q.paused || len(q.frames) == 0 {
		q.writing = false
		if q.idlers > 0 {
			q.cond.Broadcast()
		}
		return nil, false
	}
	return q.takeLocked(), true
}

// doneWriting gives the writing role up after a failed write.
func (q *frameQueue) doneWriting() {
	q.mu.Lock()
	q.writing = false
	q.cond.Broadcast() // for idle
	q.mu.Unlock()
}

// pause keeps frames from being taken for writing until unpause.
func (q *frameQueue) pause() {
	q.mu.Lock()
	q.paused = true
	q.mu.Unlock()
}

// idle waits until nobody holds the writing role of a paused queue, or
// the queue is closed; it reports whether it is still open.
func (q *frameQueue) idle() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.idlers++
	for q.writing && !q.done {
		q.cond.Wait()
	}
	q.idlers--
	return !q.done
}

// unpause puts frames back before those queued, and lets the writer take
// them all.
func (q *frameQueue) unpause(first []queued) {
	q.mu.Lock()
	if q.done {
		q.mu.Unlock()
		for _, it := range first {
			q.res.payloads.release(it.pl)
		}
		return
	}
	for _, it := range first {
		q.bytes += len(it.f.Payload)
	}
	q.frames = append(first[:len(first):len(first)], q.frames...)
	q.paused = false
	q.cond.Broadcast()
	q.mu.Unlock()
}

func (q *frameQueue) takeLocked() []queued {
	frames := q.frames
	q.frames, q.bytes, q.writing = nil, 0, true
	return frames
}

// close drops the queued frames and makes later pushes drop theirs.
func (q *frameQueue) close() {
	q.mu.Lock()
	q.done = true
	dropped := q.frames
	q.frames, q.bytes = nil, 0
	q.cond.Broadcast()
	q.mu.Unlock()
	for _, it := range dropped {
		q.res.payloads.release(it.pl)
	}
}
