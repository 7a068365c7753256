package mem

import (
	"io"
	"net"
	"sync"
)

// pipe is one direction of one channel: a bounded ring buffer with one
// reading and one writing end.
type pipe struct {
	mu       sync.Mutex
	changed  sync.Cond // signalled on every change of the fields below
	ring     []byte
	start    int // index in ring of the oldest unread byte
	buffered int // number of unread bytes

	writerClosed bool  // the writing end closed: reads drain, then io.EOF
	readerClosed bool  // the reading end closed: writes fail
	broken       error // the link was cut: everything fails with it
}

func newPipe(capacity int) *pipe {
	p := &pipe{ring: make([]byte, capacity)}
	p.changed.L = &p.mu
	return p
}

// read implements the reading end's io.Reader.
func (p *pipe) read(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for {
		switch {
		case p.broken != nil:
			return 0, p.broken
		case p.readerClosed:
			return 0, net.ErrClosed
		case p.buffered > 0:
			n := p.copyOut(b)
			p.changed.Broadcast()
			return n, nil
		case p.writerClosed:
			return 0, io.EOF
		case len(b) == 0:
			return 0, nil
		}
		p.changed.Wait()
	}
}

// copyOut moves up to len(b) buffered bytes into b.
func (p *pipe) copyOut(b []byte) int {
	n := 0
	for n < len(b) && p.buffered > 0 {
		end := min(p.start+p.buffered, len(p.ring))
		c := copy(b[n:], p.ring[p.start:end])
		n += c
		p.start = (p.start + c) % len(p.ring)
		p.buffered -= c
	}
	if p.buffered == 0 {
		p.start = 0
	}
	return n
}

// write implements the writing end's io.Writer: it blocks while the ring
// is full and returns only when all of b is buffered or the pipe failed.
func (p *pipe) write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	written := 0
	for {
		switch {
		case p.broken != nil:
			return written, p.broken
		case p.writerClosed:
			return written, net.ErrClosed
		case p.readerClosed:
			return written, io.ErrClosedPipe
		case written == len(b):
			return written, nil
		}
		if p.buffered < len(p.ring) {
			written += p.copyIn(b[written:])
			p.changed.Broadcast()
			continue
		}
		p.changed.Wait()
	}
}

// copyIn appends as much of b as fits into the ring.
func (p *pipe) copyIn(b []byte) int {
	n := 0
	for n < len(b) && p.buffered < len(p.ring) {
		end := (p.start + p.buffered) % len(p.ring)
		limit := len(p.ring)
		if end < p.start {
			limit = p.start
		}
		c := copy(p.ring[end:limit], b[n:])
		n += c
		p.buffered += c
	}
	return n
}

// closeWriter is the writing end's clean close: the reader still gets what
// is buffered, then io.EOF.
func (p *pipe) closeWriter() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.writerClosed = true
	p.changed.Broadcast()
}

// closeReader is the reading end's close: buffered bytes are dropped and
// the writer gets io.ErrClosedPipe, like a TCP reset.
func (p *pipe) closeReader() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.readerClosed = true
	p.buffered = 0
	p.changed.Broadcast()
}

// breakWith fails both ends with err; the first cause is kept.
func (p *pipe) breakWith(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.broken == nil {
		p.broken = err
	}
	p.buffered = 0
	p.changed.Broadcast()
}
