package nbd

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/georepl/georepl/kmod"
)

// memDevice is an in-memory Device that tells volatile from durable data:
// writes land in data, and only Flush (or FUA) copies them to durable.
type memDevice struct {
	mu        sync.Mutex
	data      []byte
	durable   []byte
	readOnly  bool
	multiConn bool
	calls     int // device methods called, to prove the server refused early

	// fail, if set, decides the error each call returns (nil: carry on).
	fail func(op string) error
	// beforeWrite, if set, runs at the start of WriteAt, outside the lock.
	beforeWrite func(ctx context.Context, off uint64)
}

func newMemDevice(size int) *memDevice {
	return &memDevice{data: make([]byte, size), durable: make([]byte, size)}
}

func (d *memDevice) Size() uint64     { return uint64(len(d.data)) }
func (d *memDevice) ReadOnly() bool   { return d.readOnly }
func (d *memDevice) MultiConn() bool  { return d.multiConn }
func (d *memDevice) callCount() int   { d.mu.Lock(); defer d.mu.Unlock(); return d.calls }
func (d *memDevice) snapshot() []byte { d.mu.Lock(); defer d.mu.Unlock(); return bytes.Clone(d.data) }

func (d *memDevice) enter(op string) error {
	d.mu.Lock()
	d.calls++
	d.mu.Unlock()
	if d.fail != nil {
		return d.fail(op)
	}
	return nil
}

func (d *memDevice) ReadAt(_ context.Context, p []byte, off uint64) error {
	if err := d.enter("read"); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	copy(p, d.data[off:])
	return nil
}

func (d *memDevice) WriteAt(ctx context.Context, p []byte, off uint64, fua bool) error {
	if err := d.enter("write"); err != nil {
		return err
	}
	if d.beforeWrite != nil {
		d.beforeWrite(ctx, off)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	copy(d.data[off:], p)
	if fua {
		copy(d.durable[off:], p)
	}
	return nil
}

func (d *memDevice) Flush(context.Context) error {
	if err := d.enter("flush"); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	copy(d.durable, d.data)
	return nil
}

func (d *memDevice) Trim(_ context.Context, off, length uint64) error {
	if err := d.enter("trim"); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	clear(d.data[off : off+length])
	return nil
}

func (d *memDevice) WriteZeroes(_ context.Context, off, length uint64, fua bool) error {
	if err := d.enter("write-zeroes"); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	clear(d.data[off : off+length])
	if fua {
		clear(d.durable[off : off+length])
	}
	return nil
}

// logBuffer collects a server's log output for assertions.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// testServer is a Server listening on a unix socket in a temp dir.
type testServer struct {
	*Server
	spec string
	path string
	log  *logBuffer
}

// startServer serves the devices in exports (by name) on a unix socket.
func startServer(t testing.TB, exports map[string]Device, opts ...ServerOption) *testServer {
	t.Helper()
	path := filepath.Join(t.TempDir(), "nbd.sock")
	spec := "unix:" + path
	l, err := Listen(spec)
	if err != nil {
		t.Fatal(err)
	}
	logs := &logBuffer{}
	lookup := func(name string) (Device, error) {
		if dev, ok := exports[name]; ok {
			return dev, nil
		}
		return nil, ErrNoSuchExport
	}
	// A budget of its own, so that the server's can be checked at the end.
	opts = append([]ServerOption{WithQueueLimits(DefaultConnQueueLimit, DefaultTotalQueueLimit)}, opts...)
	srv := NewServer(lookup, slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})), opts...)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	t.Cleanup(func() {
		if err := srv.Close(); err != nil {
			t.Errorf("Server.Close: %v", err)
		}
		if err := <-served; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
		if held := srv.total.used.Load(); held != 0 {
			t.Errorf("the closed server's connections still hold %d bytes of their budget", held)
		}
	})
	return &testServer{Server: srv, spec: spec, path: path, log: logs}
}

func dial(t testing.TB, spec, export string) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, spec, export)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// newBackingDevice returns a StoreDevice over a fresh sparse backing file.
func newBackingDevice(t testing.TB, size int64) (*StoreDevice, *kmod.Backing) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "backing.img")
	if err := kmod.CreateFile(path, size); err != nil {
		t.Fatal(err)
	}
	b, err := kmod.OpenBacking(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return NewStoreDevice(b, false), b
}

func randomBytes(seed uint64, n int) []byte {
	p := make([]byte, n)
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	for i := 0; i+8 <= n; i += 8 {
		v := r.Uint64()
		for j := range 8 {
			p[i+j] = byte(v >> (8 * j))
		}
	}
	for i := n &^ 7; i < n; i++ {
		p[i] = byte(r.Uint32())
	}
	return p
}
