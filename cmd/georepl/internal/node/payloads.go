package node

import (
	"sync"
	"unsafe"
)

// Buffers for write payloads: the NBD server reads each write's payload
// into a buffer from payloads.get (device.WriteBuffer), and the buffer goes
// back to the pool when nothing can read it any more. Without the pool,
// every write allocates its payload afresh, which the kernel then faults
// in page by page and the garbage collector frees again.
//
// The ownership chain of a payload p that WriteAt receives:
//
//  1. WriteAt holds p (one reference) until the write completed (every
//     piece of it, for a split write). The engine completes a write (or
//     fails it) only after every local write and data frame carrying p
//     was handed to the driver: the engine emits them in the Ready that
//     starts the write, and completes it at the earliest on the local
//     write's LocalDone.
//  2. process takes one reference per local write of p it collects
//     (localOp), dropped when that write is done or dropped, and one per
//     data frame it queues on a link, dropped once the link's writer has
//     flushed the frame (or the link closed; on a connection with path
//     blocks, once the peer confirmed the frame, see paths.go); it finds p by where the
//     write's data starts, which for the pieces of a split write after
//     the first is an alias. process runs with emu held
//     and while WriteAt's reference is held, so the count never climbs
//     back from zero. A request failed early (the resource going down)
//     so cannot release p while its local write still reads it.
//  3. Nothing else keeps p: the engine forgets Request.Data once the write
//     is started (core.Request.Data, core.Message), and resync reads the
//     disk, never a payload.
//
// When the last reference is dropped, p returns to the pool.
type payloads struct {
	mu    sync.Mutex
	inUse map[*byte]*payload
	free  [payloadClasses]sync.Pool // []byte of capacity minPayloadClass<<i
}

// payload counts the references to one buffer in use.
type payload struct {
	buf []byte // the whole buffer, its capacity a class size
	// aliases are where the pieces of a split write start, after the
	// first (device.beginWrite): ref finds the buffer by them too.
	aliases []*byte
	refs    int // guarded by payloads.mu
}

const (
	minPayloadClass = 4 << 10
	payloadClasses  = 14 // up to 32 MiB, nbd.MaxPayload
)

// payloadClass is the index of the smallest class holding n bytes, or -1
// if n is larger than any class.
func payloadClass(n int) int {
	for c := range payloadClasses {
		if n <= minPayloadClass<<c {
			return c
		}
	}
	return -1
}

// get returns a buffer of n bytes; its content is undefined.
func (ps *payloads) get(n int) []byte {
	c := payloadClass(n)
	if c < 0 {
		return make([]byte, n)
	}
	if b, ok := ps.free[c].Get().([]byte); ok {
		return b[:n]
	}
	return make([]byte, n, minPayloadClass<<c)
}

// hold records p as in use, with one reference, and returns its handle.
// p must come from get and not be in use.
func (ps *payloads) hold(p []byte) *payload {
	pl := &payload{buf: p[:cap(p)], refs: 1}
	ps.mu.Lock()
	if ps.inUse == nil {
		ps.inUse = map[*byte]*payload{}
	}
	ps.inUse[unsafe.SliceData(pl.buf)] = pl
	ps.mu.Unlock()
	return pl
}

// alias makes ref find pl by piece too: piece is a part of pl's buffer
// that a request of its own carries (a piece of a split write). Called
// while pl is held.
func (ps *payloads) alias(pl *payload, piece []byte) {
	key := unsafe.SliceData(piece)
	ps.mu.Lock()
	ps.inUse[key] = pl
	pl.aliases = append(pl.aliases, key)
	ps.mu.Unlock()
}

// ref takes one more reference to the buffer that p starts (or a piece of
// it that alias named), if it is in use, and returns its handle; nil
// otherwise (p is not pooled).
func (ps *payloads) ref(p []byte) *payload {
	if cap(p) == 0 {
		return nil
	}
	ps.mu.Lock()
	defer ps.mu.Unlock()
	pl := ps.inUse[unsafe.SliceData(p)]
	if pl != nil {
		pl.refs++
	}
	return pl
}

// release drops one reference; the last one returns the buffer to the
// pool. A nil handle is ignored.
func (ps *payloads) release(pl *payload) {
	if pl == nil {
		return
	}
	ps.mu.Lock()
	pl.refs--
	last := pl.refs == 0
	if last {
		delete(ps.inUse, unsafe.SliceData(pl.buf))
		for _, key := range pl.aliases {
			delete(ps.inUse, key)
		}
	}
	ps.mu.Unlock()
	if last {
		ps.put(pl.buf)
	}
}

// put returns p, which nothing may use any more, to the pool, if it has a
// class's capacity.
func (ps *payloads) put(p []byte) {
	if c := payloadClass(cap(p)); c >= 0 && minPayloadClass<<c == cap(p) {
		//lint:ignore SA6002 a slice header per write costs nothing next to its payload
		ps.free[c].Put(p[:cap(p)])
	}
}
