package nbd

import (
	"sync"
	"sync/atomic"
)

// Bounds on the memory that client connections hold: the payloads of
// write requests read and not yet carried out, and replies (read data
// above all) not yet written to the client's socket. A connection that
// reaches its bound stops reading requests until replies are written, so
// that a client that does not read its replies stalls only itself; the
// total bounds what many such clients hold together.
const (
	// DefaultConnQueueLimit is what one connection may hold.
	DefaultConnQueueLimit = 64 << 20
	// DefaultTotalQueueLimit is what the connections of every Server of
	// the process may hold together (see WithQueueLimits).
	DefaultTotalQueueLimit = 256 << 20
)

// requestOverhead is charged to every request on top of its data: the
// reply header and what a queued reply costs besides (its allocation,
// its queue entry), so that a flood of small requests whose replies are
// not read is bounded too.
const requestOverhead = 128

// minQueueLimit is the smallest limit that still lets the largest request
// through.
const minQueueLimit = MaxPayload + requestOverhead

// processQueue is the total budget of the Servers created without
// WithQueueLimits: one per process, whatever the number of exports.
var processQueue = newBudget(DefaultTotalQueueLimit)

// WithQueueLimits bounds what one connection (perConn) and the server's
// connections together (total) may hold, in bytes, instead of
// DefaultConnQueueLimit and the process-wide DefaultTotalQueueLimit
// shared with the other Servers; a limit below MaxPayload plus a small
// overhead is raised to it, so that every request can run.
func WithQueueLimits(perConn, total int64) ServerOption {
	return func(s *Server) {
		s.connLimit = max(perConn, minQueueLimit)
		s.total = newBudget(max(total, minQueueLimit))
	}
}

// budget counts bytes held against a limit.
type budget struct {
	limit   int64
	used    atomic.Int64
	waiters atomic.Int32

	mu   sync.Mutex
	room chan struct{} // closed by give when someone waits, then replaced
}

func newBudget(limit int64) *budget {
	return &budget{limit: limit, room: make(chan struct{})}
}

// tryTake takes n bytes if they fit.
func (b *budget) tryTake(n int64) bool {
	for {
		used := b.used.Load()
		if used+n > b.limit {
			return false
		}
		if b.used.CompareAndSwap(used, used+n) {
			return true
		}
	}
}

// take takes n bytes (at most the limit), waiting until they fit; it
// gives up, returning false, once stop is closed.
func (b *budget) take(n int64, stop <-chan struct{}) bool {
	if b.tryTake(n) {
		return true
	}
	// A give either sees waiters and closes the room this waiter looked
	// up first, or gave its bytes back before the tryTake that follows.
	b.waiters.Add(1)
	defer b.waiters.Add(-1)
	for {
		b.mu.Lock()
		room := b.room
		b.mu.Unlock()
		if b.tryTake(n) {
			return true
		}
		select {
		case <-room:
		case <-stop:
			return false
		}
	}
}

// give returns n bytes taken before.
func (b *budget) give(n int64) {
	if n == 0 {
		return
	}
	b.used.Add(-n)
	if b.waiters.Load() > 0 {
		b.mu.Lock()
		close(b.room)
		b.room = make(chan struct{})
		b.mu.Unlock()
	}
}
