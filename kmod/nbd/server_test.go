package nbd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/georepl/georepl/kmod"
)

func TestRoundTrip(t *testing.T) {
	store, _ := newBackingDevice(t, 8<<20)
	devices := map[string]Device{"memory": newMemDevice(8 << 20), "backing": store}
	for name, dev := range devices {
		t.Run(name, func(t *testing.T) {
			s := startServer(t, map[string]Device{"r0": dev})
			c := dial(t, s.spec, "r0")
			if c.Size() != 8<<20 || c.ReadOnly() {
				t.Fatalf("Size %d ReadOnly %v", c.Size(), c.ReadOnly())
			}
			data := randomBytes(1, 3<<20)
			if err := c.WriteAt(data, 12345, false); err != nil {
				t.Fatalf("WriteAt: %v", err)
			}
			if err := c.WriteAt(data[:4096], 1<<20, true); err != nil {
				t.Fatal(err)
			}
			copy(data[1<<20-12345:], data[:4096])
			if err := c.WriteZeroes(12345+100, 5000, false); err != nil {
				t.Fatal(err)
			}
			clear(data[100:5100])
			if err := c.Flush(); err != nil {
				t.Fatal(err)
			}
			got := make([]byte, len(data))
			if n, err := c.ReadAt(got, 12345); err != nil || n != len(got) {
				t.Fatalf("ReadAt = %d, %v", n, err)
			}
			if !bytes.Equal(got, data) {
				t.Fatal("read back differs from what was written")
			}
			if err := c.Trim(0, 1<<20); err != nil {
				t.Fatal(err)
			}
			// io.ReaderAt semantics at the end of the export.
			tail := make([]byte, 8192)
			if n, err := c.ReadAt(tail, c.Size()-4096); n != 4096 || err != io.EOF {
				t.Fatalf("ReadAt across the end = %d, %v; want 4096, io.EOF", n, err)
			}
		})
	}
}

func TestMultiConnFlag(t *testing.T) {
	single, multi := newMemDevice(4096), newMemDevice(4096)
	multi.multiConn = true
	store, _ := newBackingDevice(t, 4096)
	s := startServer(t, map[string]Device{"single": single, "multi": multi, "store": store})
	for name, want := range map[string]bool{"single": false, "multi": true, "store": true} {
		if got := dial(t, s.spec, name).MultiConn(); got != want {
			t.Errorf("%s: MultiConn = %v, want %v", name, got, want)
		}
	}
}

// TestRequestsRunConcurrently holds every read in the device until 16 are
// inside it at once: a server that ran requests one at a time would never
// get there.
func TestRequestsRunConcurrently(t *testing.T) {
	const parallel = 16
	dev := newMemDevice(1 << 20)
	var inside atomic.Int32
	allInside := make(chan struct{})
	dev.fail = func(op string) error {
		if op != "read" {
			return nil
		}
		if inside.Add(1) == parallel {
			close(allInside)
		}
		select {
		case <-allInside:
			return nil
		case <-time.After(10 * time.Second):
			return errors.New("reads were not run concurrently")
		}
	}
	s := startServer(t, map[string]Device{"r0": dev})
	c := dial(t, s.spec, "r0")
	var wg sync.WaitGroup
	for i := range parallel {
		wg.Go(func() {
			if _, err := c.ReadAt(make([]byte, 4096), int64(i)*4096); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
}

// TestRepliesOutOfOrder makes the first write wait for a later read, so its
// reply must come after the read's. The write runs on the connection's
// reader and waits without WillBlock: the reader role passes on after
// inlineGrace all the same.
func TestRepliesOutOfOrder(t *testing.T) {
	dev := newMemDevice(1 << 20)
	readDone := make(chan struct{})
	dev.beforeWrite = func(_ context.Context, off uint64) {
		if off == 0 {
			<-readDone
		}
	}
	s := startServer(t, map[string]Device{"r0": dev})
	c := dial(t, s.spec, "r0")
	writeDone := make(chan error, 1)
	go func() {
		err := c.WriteAt([]byte("first"), 0, false)
		writeDone <- err
	}()
	// Wait until the write is inside the device before sending the read.
	for dev.callCount() == 0 {
		time.Sleep(time.Millisecond)
	}
	if _, err := c.ReadAt(make([]byte, 512), 4096); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-writeDone:
		t.Fatalf("write finished (%v) before the read it waits for", err)
	default:
	}
	close(readDone)
	if err := <-writeDone; err != nil {
		t.Fatal(err)
	}
}

// TestFlushCoversCompletedWrites: every write whose reply arrived before a
// flush was sent is durable when that flush's reply arrives, while other
// clients keep writing.
func TestFlushCoversCompletedWrites(t *testing.T) {
	dev := newMemDevice(1 << 20)
	s := startServer(t, map[string]Device{"r0": dev})
	c := dial(t, s.spec, "r0")
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := range 8 {
				off := int64(w*8+i) * 4096
				block := randomBytes(uint64(off)+1, 4096)
				if err := c.WriteAt(block, off, false); err != nil {
					t.Error(err)
					return
				}
				if err := c.Flush(); err != nil {
					t.Error(err)
					return
				}
				dev.mu.Lock()
				durable := bytes.Equal(dev.durable[off:off+4096], block)
				dev.mu.Unlock()
				if !durable {
					t.Errorf("write at %d completed before a flush but is not durable after it", off)
					return
				}
			}
		})
	}
	wg.Wait()
}

func TestFUAWriteIsDurableWhenAcknowledged(t *testing.T) {
	dev := newMemDevice(1 << 16)
	s := startServer(t, map[string]Device{"r0": dev})
	c := dial(t, s.spec, "r0")
	block := randomBytes(7, 4096)
	if err := c.WriteAt(block, 8192, true); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(dev.durable[8192:8192+4096], block) {
		t.Fatal("FUA write acknowledged but not durable")
	}
}

func TestDeviceErrorsMapToErrnos(t *testing.T) {
	cases := []struct {
		name   string
		err    error
		want   syscall.Errno
		logged bool
	}{
		{"read-only", ErrReadOnly, syscall.EPERM, false},
		{"out of range", fmt.Errorf("meta area: %w", ErrOutOfRange), syscall.EINVAL, false},
		{"disk full", fmt.Errorf("write /dev/sdb: %w", syscall.ENOSPC), syscall.ENOSPC, false},
		{"quota", syscall.EDQUOT, syscall.ENOSPC, false},
		{"device's choice", &ClientError{Errno: ENOTSUP, Err: errors.New("not now")}, syscall.ENOTSUP, false},
		{"zero errno is no success", &ClientError{Err: errors.New("forgot the errno")}, syscall.EIO, true},
		{"anything else", errors.New("peer r1 vanished mid-write"), syscall.EIO, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dev := newMemDevice(1 << 16)
			dev.fail = func(string) error { return tc.err }
			s := startServer(t, map[string]Device{"r0": dev})
			c := dial(t, s.spec, "r0")
			err := c.WriteAt(make([]byte, 512), 0, false)
			if !errors.Is(err, tc.want) {
				t.Fatalf("write error %v, want %v", err, tc.want)
			}
			if !errors.Is(c.Flush(), tc.want) {
				t.Fatalf("flush error does not match %v", tc.want)
			}
			if logged := strings.Contains(s.log.String(), "level=ERROR"); logged != tc.logged {
				t.Fatalf("error logged = %v, want %v; log:\n%s", logged, tc.logged, s.log)
			}
		})
	}
}

// TestBadRequestsDoNotReachTheDevice covers the server's own checks.
func TestBadRequestsDoNotReachTheDevice(t *testing.T) {
	dev := newMemDevice(1 << 20)
	s := startServer(t, map[string]Device{"r0": dev})
	c := dial(t, s.spec, "r0")
	cases := []struct {
		name string
		do   func() error
		want syscall.Errno
	}{
		{"read past end", func() error { return c.do(cmdRead, 0, 1<<20-512, 1024, nil, make([]byte, 1024)) }, syscall.EINVAL},
		{"read offset overflow", func() error { return c.do(cmdRead, 0, 1<<64-512, 1024, nil, make([]byte, 1024)) }, syscall.EINVAL},
		{"read above max payload", func() error { return c.do(cmdRead, 0, 0, MaxPayload+1, nil, nil) }, syscall.EINVAL},
		{"write past end", func() error { return c.WriteAt(make([]byte, 4096), 1<<20-512, false) }, syscall.ENOSPC},
		{"zeroes past end", func() error { return c.WriteZeroes(1<<20, 1, false) }, syscall.ENOSPC},
		{"trim past end", func() error { return c.Trim(1<<19, 1<<20) }, syscall.EINVAL},
		{"unknown command", func() error { return c.do(99, 0, 0, 0, nil, nil) }, syscall.EINVAL},
		{"no-hole on a read", func() error { return c.do(cmdRead, cmdFlagNoHole, 0, 512, nil, make([]byte, 512)) }, syscall.EINVAL},
		{"unknown flag on a write", func() error { return c.do(cmdWrite, 1<<9, 0, 512, make([]byte, 512), nil) }, syscall.EINVAL},
	}
	for _, tc := range cases {
		if err := tc.do(); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
	if n := dev.callCount(); n != 0 {
		t.Fatalf("the device was called %d times for requests the server must refuse", n)
	}
	// The connection is still in step after all that.
	if _, err := c.ReadAt(make([]byte, 512), 0); err != nil {
		t.Fatalf("read after refused requests: %v", err)
	}
}

func TestOversizedWritePayloadClosesConnection(t *testing.T) {
	dev := newMemDevice(64 << 20)
	s := startServer(t, map[string]Device{"r0": dev})
	c := dial(t, s.spec, "r0")
	// Only the header goes out: the server must not wait for 32 MiB+1.
	err := c.do(cmdWrite, 0, 0, MaxPayload+1, nil, nil)
	if err == nil || errors.Is(err, syscall.EINVAL) {
		t.Fatalf("oversized write: %v, want the connection closed", err)
	}
	if !strings.Contains(s.log.String(), "exceeds the maximum") {
		t.Fatalf("no log of the oversized write:\n%s", s.log)
	}
	if _, err := c.ReadAt(make([]byte, 512), 0); err == nil {
		t.Fatal("the connection still works after an oversized write")
	}
}

func TestReadOnlyExport(t *testing.T) {
	dev := newMemDevice(1 << 16)
	dev.readOnly = true
	copy(dev.data, "hello")
	s := startServer(t, map[string]Device{"r0": dev})
	c := dial(t, s.spec, "r0")
	if !c.ReadOnly() {
		t.Fatal("read-only device not exported with NBD_FLAG_READ_ONLY")
	}
	if err := c.WriteAt([]byte("x"), 0, false); !errors.Is(err, syscall.EPERM) {
		t.Fatalf("write: %v, want EPERM", err)
	}
	if err := c.Trim(0, 512); !errors.Is(err, syscall.EPERM) {
		t.Fatalf("trim: %v, want EPERM", err)
	}
	if err := c.WriteZeroes(0, 512, false); !errors.Is(err, syscall.EPERM) {
		t.Fatalf("write zeroes: %v, want EPERM", err)
	}
	if n := dev.callCount(); n != 0 {
		t.Fatalf("read-only device called %d times for writes", n)
	}
	got := make([]byte, 5)
	if _, err := c.ReadAt(got, 0); err != nil || string(got) != "hello" {
		t.Fatalf("read: %q, %v", got, err)
	}
	if err := c.Flush(); err != nil {
		t.Fatalf("flush of a read-only export: %v", err)
	}

	store, _ := newBackingDevice(t, 4096)
	roStore := NewStoreDevice(store.store, true)
	if err := roStore.WriteAt(context.Background(), []byte("x"), 0, false); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("read-only StoreDevice write: %v", err)
	}
}

func TestLookupRefusalReachesClient(t *testing.T) {
	s := startServer(t, nil)
	s.lookup = func(name string) (Device, error) {
		if name == "r0" {
			return nil, fmt.Errorf("resource %s is Secondary on this node; the Primary is node b", name)
		}
		return nil, fmt.Errorf("%w: %q is not a resource of this node", ErrNoSuchExport, name)
	}
	ctx := context.Background()
	_, err := Dial(ctx, s.spec, "r0")
	var exportErr *ExportError
	if !errors.As(err, &exportErr) || exportErr.Reply != repErrPolicy ||
		!strings.Contains(err.Error(), "resource r0 is Secondary on this node; the Primary is node b") {
		t.Fatalf("Dial(r0): %v, want the lookup's text with NBD_REP_ERR_POLICY", err)
	}
	_, err = Dial(ctx, s.spec, "nope")
	if !errors.Is(err, ErrNoSuchExport) || !strings.Contains(err.Error(), `"nope" is not a resource`) {
		t.Fatalf("Dial(nope): %v, want ErrNoSuchExport with the lookup's text", err)
	}
}

// TestDisconnectKeepsAcceptedWrite: the client vanishes while its write is
// inside the device; the write still completes, only its reply is lost.
func TestDisconnectKeepsAcceptedWrite(t *testing.T) {
	dev := newMemDevice(1 << 16)
	entered, release := make(chan struct{}), make(chan struct{})
	dev.beforeWrite = func(context.Context, uint64) {
		close(entered)
		<-release
	}
	s := startServer(t, map[string]Device{"r0": dev})
	c := dial(t, s.spec, "r0")
	go c.WriteAt([]byte("survives"), 100, false)
	<-entered
	c.nc.Close() // a hard disconnect, as if the client crashed
	time.Sleep(20 * time.Millisecond)
	close(release)
	s.Close() // waits for the write in flight
	if got := dev.snapshot()[100:108]; string(got) != "survives" {
		t.Fatalf("accepted write lost when the client disconnected: %q", got)
	}
}

func TestCloseConnectionsKeepsListening(t *testing.T) {
	dev := newMemDevice(1 << 16)
	s := startServer(t, map[string]Device{"r0": dev})
	old := dial(t, s.spec, "r0")
	if err := old.WriteAt([]byte("x"), 0, false); err != nil {
		t.Fatal(err)
	}
	s.CloseConnections()
	if _, err := old.ReadAt(make([]byte, 1), 0); err == nil {
		t.Fatal("a dropped connection still works")
	}
	fresh := dial(t, s.spec, "r0")
	got := make([]byte, 1)
	if _, err := fresh.ReadAt(got, 0); err != nil || got[0] != 'x' {
		t.Fatalf("new connection after CloseConnections: %q, %v", got, err)
	}
}

// TestStopConnectionsDoesNotWait: StopConnections drops the clients at
// once, and its channel closes only when the request in flight, which
// the caller releases after it returned, has ended and been replied to.
func TestStopConnectionsDoesNotWait(t *testing.T) {
	dev := newMemDevice(1 << 16)
	entered, release := make(chan struct{}), make(chan struct{})
	dev.beforeWrite = func(context.Context, uint64) {
		close(entered)
		<-release
	}
	s := startServer(t, map[string]Device{"r0": dev})
	c := dial(t, s.spec, "r0")
	result := make(chan error, 1)
	go func() { result <- c.WriteAt([]byte("held"), 0, false) }()
	<-entered
	ended := s.StopConnections()
	select {
	case <-ended:
		t.Fatal("the stopped connections ended while a request of theirs was still running")
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	<-ended
	if err := <-result; err != nil {
		t.Fatalf("the request running when the connection was stopped: %v", err)
	}
	fresh := dial(t, s.spec, "r0")
	got := make([]byte, 4)
	if _, err := fresh.ReadAt(got, 0); err != nil || string(got) != "held" {
		t.Fatalf("after StopConnections: %q, %v", got, err)
	}
}

func TestCloseWaitsForRequestsAndRepliesToThem(t *testing.T) {
	dev := newMemDevice(1 << 16)
	entered, release := make(chan struct{}), make(chan struct{})
	dev.beforeWrite = func(context.Context, uint64) {
		close(entered)
		<-release
	}
	s := startServer(t, map[string]Device{"r0": dev})
	c := dial(t, s.spec, "r0")
	writeErr := make(chan error, 1)
	go func() {
		err := c.WriteAt([]byte("last"), 0, false)
		writeErr <- err
	}()
	<-entered
	closed := make(chan struct{})
	go func() {
		s.Close()
		close(closed)
	}()
	select {
	case <-closed:
		t.Fatal("Close returned while a write was still in the device")
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	<-closed
	if err := <-writeErr; err != nil {
		t.Fatalf("the write in flight at Close got %v, want its reply", err)
	}
	if _, err := Dial(context.Background(), s.spec, "r0"); err == nil {
		t.Fatal("Dial succeeded after Close")
	}
}

func TestClientCloseWaitsForPendingReplies(t *testing.T) {
	dev := newMemDevice(1 << 16)
	entered, release := make(chan struct{}), make(chan struct{})
	dev.beforeWrite = func(context.Context, uint64) {
		close(entered)
		<-release
	}
	s := startServer(t, map[string]Device{"r0": dev})
	c := dial(t, s.spec, "r0")
	writeErr := make(chan error, 1)
	go func() {
		err := c.WriteAt([]byte("w"), 0, false)
		writeErr <- err
	}()
	<-entered
	go func() {
		time.Sleep(20 * time.Millisecond)
		close(release)
	}()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-writeErr; err != nil {
		t.Fatalf("write pending at Close: %v, want its reply", err)
	}
	if err := c.Flush(); !errors.Is(err, ErrClientClosed) {
		t.Fatalf("Flush after Close: %v, want ErrClientClosed", err)
	}
}

func TestDialHonoursContext(t *testing.T) {
	path := t.TempDir() + "/silent.sock"
	l, err := Listen("unix:" + path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() { // accepts, then says nothing
		for {
			nc, err := l.Accept()
			if err != nil {
				return
			}
			defer nc.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := Dial(ctx, "unix:"+path, "r0"); err == nil {
		t.Fatal("Dial to a silent server succeeded")
	}
	if waited := time.Since(start); waited > 5*time.Second {
		t.Fatalf("Dial ignored its context for %v", waited)
	}
}

// Both of kmod's stores can be exported.
var (
	_ Store = (*kmod.Backing)(nil)
	_ Store = (*kmod.Region)(nil)
)

// TestFullDiskReachesClientAsENOSPC serves a backing file on a tiny tmpfs:
// the client must see ENOSPC, not success and not EIO.
func TestFullDiskReachesClientAsENOSPC(t *testing.T) {
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=256k"); err != nil {
		t.Skipf("cannot mount a small tmpfs (needs root): %v", err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	path := filepath.Join(dir, "full.img")
	if err := kmod.CreateFile(path, 4<<20); err != nil {
		t.Fatal(err)
	}
	b, err := kmod.OpenBacking(path)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	s := startServer(t, map[string]Device{"r0": NewStoreDevice(b.Region(0, 2<<20), false)})
	c := dial(t, s.spec, "r0")
	if c.Size() != 2<<20 {
		t.Fatalf("region export size %d", c.Size())
	}
	err = c.WriteAt(make([]byte, 1<<20), 0, false)
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("write to a full disk: %v, want ENOSPC", err)
	}
	if strings.Contains(s.log.String(), "level=ERROR") {
		t.Fatalf("ENOSPC logged as a device error:\n%s", s.log)
	}
}

// TestWillBlockHandsOff has a write that waits for a later read on the same
// connection, saying so with WillBlock first. With the watchdog made too
// slow to matter, only WillBlock can let the read in.
func TestWillBlockHandsOff(t *testing.T) {
	defer func(g time.Duration) { inlineGrace = g }(inlineGrace)
	inlineGrace = time.Hour
	dev := newMemDevice(1 << 20)
	readDone := make(chan struct{})
	dev.beforeWrite = func(ctx context.Context, off uint64) {
		if off == 0 {
			WillBlock(ctx)
			WillBlock(ctx) // a second call does nothing
			<-readDone
		}
	}
	s := startServer(t, map[string]Device{"r0": dev})
	c := dial(t, s.spec, "r0")
	writeDone := make(chan error, 1)
	go func() { writeDone <- c.WriteAt([]byte("first"), 0, false) }()
	for dev.callCount() == 0 {
		time.Sleep(time.Millisecond)
	}
	if _, err := c.ReadAt(make([]byte, 512), 4096); err != nil {
		t.Fatal(err)
	}
	close(readDone)
	if err := <-writeDone; err != nil {
		t.Fatal(err)
	}
	// The connection still serves, from the new reader.
	if err := c.WriteAt([]byte("second"), 8192, false); err != nil {
		t.Fatal(err)
	}
	if got := dev.snapshot()[8192:8198]; string(got) != "second" {
		t.Fatalf("second write: %q", got)
	}
}

// TestWatchdogRace has requests that end right around inlineGrace, so the
// watchdog often fires as the reader finishes its request: exactly one of
// them may go on reading, or requests are misread (or, under -race, two
// goroutines read the connection at once).
func TestWatchdogRace(t *testing.T) {
	defer func(g time.Duration) { inlineGrace = g }(inlineGrace)
	inlineGrace = 200 * time.Microsecond
	dev := newMemDevice(1 << 20)
	dev.beforeWrite = func(_ context.Context, off uint64) {
		time.Sleep(time.Duration(off/4096%5) * 100 * time.Microsecond)
	}
	s := startServer(t, map[string]Device{"r0": dev})
	c := dial(t, s.spec, "r0")
	for i := range 300 {
		off := int64(i%64) * 4096
		want := bytes.Repeat([]byte{byte(i)}, 4096)
		if err := c.WriteAt(want, off, false); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
		got := make([]byte, 4096)
		if _, err := c.ReadAt(got, off); err != nil {
			t.Fatalf("read %d: %v", i, err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("read %d: wrong data", i)
		}
	}
}
