package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/georepl/georepl/transports"
)

// conn is one RDMA connection: a reliable-connected queue pair carrying
// both channels (messages tagged with their channel, credits per
// channel), and the TCP socket it was arranged over, kept open: its end
// tells the peer at once that this end closed or its process died.
type conn struct {
	v       *verbs
	id      cmID
	cm      cmChannel // the id's own event channel
	tcp     net.Conn
	pollFor time.Duration
	cc      *os.File // a duplicate of the completion channel, for the poller

	mu       sync.Mutex
	cond     *sync.Cond
	flow     flow
	in       [numChans]byteRing
	freeSend []int
	// posted are the send slots posted, oldest first, not yet known
	// complete. Only some sends ask for a completion (one completion
	// event less per message when traffic is light): a completion tells
	// that every send posted before it completed too.
	posted []int
	err    error // the connection failed: why
	local  bool  // err came from Close

	streams [numChans]stream
	done    chan struct{} // the completion loop ended and freed the verbs
}

// newConn starts a connection whose queue pair is set up and whose
// receives are posted. It owns v, id and cm from now on, and tcp unless
// it fails.
func newConn(v *verbs, id cmID, cm cmChannel, tcp net.Conn, pollFor time.Duration) (*conn, error) {
	dup, err := syscall.Dup(v.channelFD())
	if err == nil {
		if err = v.arm(); err != nil {
			syscall.Close(dup)
		}
	} else {
		err = fmt.Errorf("duplicate the completion channel: %w", err)
	}
	if err != nil {
		v.destroy()
		destroyID(id)
		cm.destroy()
		return nil, err
	}
	syscall.CloseOnExec(dup)
	c := &conn{v: v, id: id, cm: cm, tcp: tcp, pollFor: pollFor, cc: os.NewFile(uintptr(dup), "rdma-completions"),
		flow: newFlow(), done: make(chan struct{})}
	c.cond = sync.NewCond(&c.mu)
	for i := range c.in {
		c.in[i].buf = make([]byte, window)
		c.streams[i] = stream{c, i}
	}
	for i := range sendSlots {
		c.freeSend = append(c.freeSend, i)
	}
	go c.completions()
	go c.watchTCP()
	return c, nil
}

// postReceives posts every receive of a fresh queue pair.
func postReceives(v *verbs) error {
	for i := range numRecv {
		if err := v.postRecv(i); err != nil {
			return err
		}
	}
	return nil
}

func (c *conn) Stream(ch transports.Channel) io.ReadWriter {
	if ch >= numChans {
		panic(fmt.Sprintf("rdma: channel %d of %d", ch, numChans))
	}
	return &c.streams[ch]
}

func (c *conn) LocalAddr() net.Addr  { return c.tcp.LocalAddr() }
func (c *conn) RemoteAddr() net.Addr { return c.tcp.RemoteAddr() }

// Close fails the connection and waits until its resources are freed.
func (c *conn) Close() error {
	c.fail(net.ErrClosed, true)
	<-c.done
	return nil
}

// fail records the connection's first error, wakes every reader and
// writer, and starts the teardown: the TCP socket closes (the peer
// notices), the queue pair disconnects and the completion loop ends.
func (c *conn) fail(err error, local bool) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	c.err, c.local = err, local
	c.cond.Broadcast()
	c.mu.Unlock()
	c.tcp.Close()
	c.cc.SetReadDeadline(time.Unix(1, 0)) // the completion loop tears down
}

// watchTCP fails the connection when the peer's end of the TCP socket
// closes: nothing is sent on it after the set-up.
func (c *conn) watchTCP() {
	var b [1]byte
	_, err := c.tcp.Read(b[:])
	if err == nil {
		err = fmt.Errorf("%w: a byte on the set-up socket after the set-up", errProtocol)
	} else if errors.Is(err, io.EOF) {
		err = io.EOF
	}
	c.fail(err, false)
}

// completions handles the completion queue until the connection fails,
// then frees the verbs. It waits on the completion channel through Go's
// poller, after spinning on the queue for pollFor if that is set.
func (c *conn) completions() {
	defer close(c.done)
	// The loop ends once failed() saw c.err set, under c.mu: no writer
	// or reader posts from then on.
	defer func() {
		disconnectID(c.id)
		c.cc.Close()
		c.v.destroy()
		destroyID(c.id)
		c.cm.destroy()
	}()
	raw, err := c.cc.SyscallConn()
	if err != nil {
		c.fail(err, false)
		return
	}
	wcs := make([]wc, 32)
	var idleSince time.Time
	for {
		if n := c.v.poll(wcs); n > 0 {
			if err := c.handle(wcs[:n]); err != nil {
				c.fail(err, false)
			}
			idleSince = time.Time{}
			continue
		} else if n < 0 {
			c.fail(errors.New("poll the RDMA completion queue failed"), false)
		}
		if c.failed() {
			return
		}
		if c.pollFor > 0 {
			if idleSince.IsZero() {
				idleSince = time.Now()
			}
			if time.Since(idleSince) < c.pollFor {
				continue
			}
			idleSince = time.Time{}
		}
		// Wait for the next completion event, then re-arm and poll again:
		// the queue was armed before the polls that found it empty, so a
		// completion since then has raised an event.
		var evErr error
		waitErr := raw.Read(func(uintptr) bool {
			got, err := c.v.cqEvent()
			evErr = err
			return got || err != nil
		})
		if waitErr != nil || evErr != nil {
			if !c.failed() {
				c.fail(errors.Join(waitErr, evErr), false)
			}
			return
		}
		if err := c.v.arm(); err != nil {
			c.fail(err, false)
		}
	}
}

func (c *conn) failed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err != nil
}

// handle processes completions: a receive is checked, copied out, its
// slot reposted; a send frees its slot.
func (c *conn) handle(wcs []wc) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	defer c.cond.Broadcast()
	for _, w := range wcs {
		if w.status != 0 {
			if c.err != nil {
				return nil // flushed by the teardown
			}
			if w.status == wcFlushErr {
				return io.EOF // the peer disconnected the queue pair
			}
			what := "receive"
			if w.isSend() {
				what = "send"
			}
			return fmt.Errorf("rdma %s failed: %s", what, wcStatus(w.status))
		}
		if w.isSend() {
			if err := c.sendCompleted(w.slot()); err != nil {
				return err
			}
			continue
		}
		slot := w.slot()
		if slot >= numRecv {
			return fmt.Errorf("rdma: a completion for receive slot %d of %d", slot, numRecv)
		}
		msg := c.v.recvSlot(slot)
		h, err := parseHeader(msg, int(w.byteLen))
		if err == nil {
			err = c.flow.received(h)
		}
		if err != nil {
			return err
		}
		if h.typ == msgData {
			c.in[h.ch].write(msg[hdrSize : hdrSize+int(h.length)])
		}
		if c.err == nil {
			if err := c.v.postRecv(slot); err != nil {
				return err
			}
		}
	}
	return c.sendCreditLocked()
}

// sendCreditLocked sends a credit message if enough is owed and a send
// slot is free (else the next send completion tries again).
func (c *conn) sendCreditLocked() error {
	if c.err != nil || !c.flow.creditDue() || len(c.freeSend) == 0 {
		return nil
	}
	h := header{typ: msgCredit}
	c.flow.report(&h)
	return c.sendLocked(h, nil)
}

// sendLocked posts h and payload from a free send slot. It asks for a
// completion once half the slots are posted: the other half stays free
// until it comes.
func (c *conn) sendLocked(h header, payload []byte) error {
	slot := c.freeSend[len(c.freeSend)-1]
	c.freeSend = c.freeSend[:len(c.freeSend)-1]
	b := c.v.sendSlot(slot)
	h.put(b)
	copy(b[hdrSize:], payload)
	c.posted = append(c.posted, slot)
	return c.v.postSend(slot, hdrSize+len(payload), len(c.posted) >= sendSlots/2)
}

// sendCompleted frees slot and every slot posted before it.
func (c *conn) sendCompleted(slot int) error {
	for i, s := range c.posted {
		if s == slot {
			c.freeSend = append(c.freeSend, c.posted[:i+1]...)
			c.posted = append(c.posted[:0], c.posted[i+1:]...)
			return nil
		}
	}
	return fmt.Errorf("rdma: a completion for send slot %d, which is not posted", slot)
}

// stream is one channel of a conn.
type stream struct {
	c  *conn
	ch int
}

func (s *stream) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c := s.c
	c.mu.Lock()
	defer c.mu.Unlock()
	in := &c.in[s.ch]
	for in.n == 0 && c.err == nil {
		c.cond.Wait()
	}
	// Bytes that arrived stay readable after the peer closed, as on TCP;
	// not after our own Close.
	if in.n == 0 || c.local {
		return 0, c.err
	}
	n := in.read(p)
	c.flow.consumed(s.ch, n)
	if err := c.sendCreditLocked(); err != nil {
		c.mu.Unlock()
		c.fail(err, false)
		c.mu.Lock()
	}
	return n, nil
}

func (s *stream) Write(p []byte) (int, error) {
	c := s.c
	written := 0
	c.mu.Lock()
	defer c.mu.Unlock()
	for written < len(p) {
		var n int
		for c.err == nil {
			if len(c.freeSend) > 0 {
				if n = c.flow.sendable(s.ch, len(p)-written); n > 0 {
					break
				}
			}
			c.cond.Wait()
		}
		if c.err != nil {
			return written, c.err
		}
		h := header{typ: msgData, ch: uint8(s.ch), length: uint32(n)}
		c.flow.report(&h)
		c.flow.sent(s.ch, n)
		if err := c.sendLocked(h, p[written:written+n]); err != nil {
			c.mu.Unlock()
			c.fail(err, false)
			c.mu.Lock()
			return written, c.err
		}
		written += n
	}
	return written, nil
}

// byteRing is a channel's receive buffer: window bytes, which the byte
// credits never let the peer overrun.
type byteRing struct {
	buf  []byte
	r, n int
}

func (b *byteRing) write(p []byte) {
	w := (b.r + b.n) % len(b.buf)
	k := copy(b.buf[w:], p)
	copy(b.buf, p[k:])
	b.n += len(p)
}

func (b *byteRing) read(p []byte) int {
	n := min(len(p), b.n)
	k := copy(p[:n], b.buf[b.r:])
	copy(p[k:n], b.buf)
	b.r = (b.r + n) % len(b.buf)
	b.n -= n
	return n
}
