package nbd

import (
	"context"
	"net"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/georepl/georepl/kmod/nbd/nbdtest"
)

// greedyReads negotiates export on a raw connection to the server at
// path and pipelines n READs of size bytes without ever reading a reply;
// stop closes the connection and waits for the sender.
func greedyReads(t *testing.T, path, export string, n int, size uint32) (stop func()) {
	t.Helper()
	nc, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	exp, err := Negotiate(ctx, nc, export)
	if err != nil {
		nc.Close()
		t.Fatal(err)
	}
	sent := make(chan struct{})
	go func() {
		defer close(sent)
		var req [requestHeaderSize]byte
		for i := range n {
			putRequestHeader(req[:], 0, cmdRead, uint64(i), uint64(i)*uint64(size)%(exp.Size-uint64(size)+1), size)
			if _, err := nc.Write(req[:]); err != nil {
				return // stop closed the connection
			}
		}
	}()
	return func() {
		nc.Close()
		<-sent
	}
}

// heapInUse is the heap's size in use after a collection.
func heapInUse() int64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapInuse)
}

// TestUnreadRepliesAreBounded: a client pipelines 150 READs of 4 MiB and
// reads no reply. The server stops reading its requests once what the
// connection holds reaches its bound, instead of queueing 600 MiB of
// replies; a second client of the same export is served meanwhile.
func TestUnreadRepliesAreBounded(t *testing.T) {
	const readSize = 4 << 20
	dev := newMemDevice(32 << 20)
	s := startServer(t, map[string]Device{"r0": dev})
	before := heapInUse()
	stop := greedyReads(t, s.path, "r0", 150, readSize)
	defer stop()

	polite := dial(t, s.spec, "r0")
	nbdtest.Served(t, polite, readSize)
	time.Sleep(time.Second) // what the server would take in, it has by now
	grown := heapInUse() - before
	t.Logf("heap in use grew by %d MiB", grown>>20)
	if grown > 3*64<<20 {
		t.Fatalf("the server holds %d MiB more for one client's unread replies", grown>>20)
	}
	greedy := slices.Max(connsQueued(s.Server))
	if greedy > DefaultConnQueueLimit || greedy <= DefaultConnQueueLimit-readSize-requestOverhead {
		t.Fatalf("the greedy connection holds %d bytes; want its bound %d, less than one more read", greedy, DefaultConnQueueLimit)
	}
}

// TestQueueTotalBound: three connections that read no replies together
// hold no more than the server's total, each no more than its own bound,
// and what they held is given back once they are gone, so that a
// well-behaved client is served again.
func TestQueueTotalBound(t *testing.T) {
	const perConn, total, readSize = 40 << 20, 100 << 20, 4 << 20
	s := startServer(t, map[string]Device{"r0": newMemDevice(32 << 20)}, WithQueueLimits(perConn, total))
	var stops []func()
	for range 3 {
		stops = append(stops, greedyReads(t, s.path, "r0", 30, readSize))
	}
	waitUntil(t, "the connections fill the total", func() bool {
		return s.total.used.Load() > total-readSize-requestOverhead
	})
	time.Sleep(200 * time.Millisecond) // and take no more
	if used := s.total.used.Load(); used > total {
		t.Fatalf("the connections hold %d bytes together, over the total of %d", used, total)
	}
	for _, q := range connsQueued(s.Server) {
		if q > perConn {
			t.Fatalf("a connection holds %d bytes, over its bound of %d", q, perConn)
		}
	}
	for _, stop := range stops {
		stop()
	}
	waitUntil(t, "the closed connections give their bytes back", func() bool {
		return s.total.used.Load() == 0
	})
	polite := dial(t, s.spec, "r0")
	if _, err := polite.ReadAt(make([]byte, readSize), 0); err != nil {
		t.Fatal(err)
	}
}

// connsQueued is what each of the server's connections holds.
func connsQueued(s *Server) []int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var held []int64
	for c := range s.conns {
		held = append(held, c.queued.used.Load())
	}
	return held
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 10s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestCloseWhileStalled: closing the connections of a server whose reader
// waits for room (its client reads no reply) does not wait for the
// client: the reader gives up, and the replies are dropped after
// shutdownWriteGrace.
func TestCloseWhileStalled(t *testing.T) {
	const readSize = 4 << 20
	s := startServer(t, map[string]Device{"r0": newMemDevice(32 << 20)})
	stop := greedyReads(t, s.path, "r0", 100, readSize)
	defer stop()
	waitUntil(t, "the connection fills its bound", func() bool {
		return s.total.used.Load() > DefaultConnQueueLimit-readSize-requestOverhead
	})
	closed := make(chan struct{})
	go func() {
		s.CloseConnections()
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(shutdownWriteGrace + 5*time.Second):
		t.Fatal("CloseConnections waits for a client that reads no reply")
	}
	if used := s.total.used.Load(); used != 0 {
		t.Fatalf("the closed connection still holds %d bytes", used)
	}
}
