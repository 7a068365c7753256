package ublk

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/georepl/georepl/kmod/nbd"
	"golang.org/x/sys/unix"
)

// The tests in this file drive the real driver: they need root and a
// kernel with ublk_drv, and skip elsewhere. The VM rig (kmod/vmtest) runs
// them inside a guest with Debian's kernel.

// memDevice is an in-memory nbd.Device that counts what it is asked.
type memDevice struct {
	mu          sync.Mutex
	data        []byte
	flushes     int
	fuaWrites   int
	trims       int
	zeroes      int
	fail        error         // returned by writes when set
	block       chan struct{} // reads wait for it (or ctx) when set
	keptBuffers [][]byte      // every p WriteAt was given
}

func newMemDevice(size int) *memDevice { return &memDevice{data: make([]byte, size)} }

func (m *memDevice) Size() uint64 { return uint64(len(m.data)) }

func (m *memDevice) ReadAt(ctx context.Context, p []byte, off uint64) error {
	m.mu.Lock()
	block := m.block
	m.mu.Unlock()
	if block != nil {
		select {
		case <-block:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	copy(p, m.data[off:])
	return nil
}

func (m *memDevice) WriteAt(_ context.Context, p []byte, off uint64, fua bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail != nil {
		return m.fail
	}
	copy(m.data[off:], p)
	m.keptBuffers = append(m.keptBuffers, p)
	if fua {
		m.fuaWrites++
	}
	return nil
}

func (m *memDevice) Flush(context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.flushes++
	return nil
}

func (m *memDevice) Trim(_ context.Context, off, length uint64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.trims++
	clear(m.data[off : off+length])
	return nil
}

func (m *memDevice) WriteZeroes(_ context.Context, off, length uint64, _ bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.zeroes++
	clear(m.data[off : off+length])
	return nil
}

// snapshot copies [off, off+n) of the device.
func (m *memDevice) snapshot(off, n int) []byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	return bytes.Clone(m.data[off : off+n])
}

// asyncMem is a memDevice with the abilities the replicated device has:
// write buffers of its own, recycled once a write is done with them, and
// writes and flushes that complete later. Half the writes complete before
// WriteAsync returns, half on another goroutine after it returned (as a
// peer's acknowledgement would); either way the data is stored before
// done is called, and a buffer goes back to the pool only after done.
type asyncMem struct {
	*memDevice
	pool     sync.Map // buffer length: chan []byte of recycled buffers
	given    sync.Map // *byte: buffers WriteBuffer handed out and not yet recycled
	calls    atomic.Uint64
	async    atomic.Uint64 // WriteAsync calls
	foreign  atomic.Uint64 // WriteAsync calls with a buffer WriteBuffer did not give
	aflushes atomic.Uint64 // FlushAsync calls
}

func newAsyncMem(size int) *asyncMem { return &asyncMem{memDevice: newMemDevice(size)} }

var (
	_ nbd.AsyncWriter  = (*asyncMem)(nil)
	_ nbd.AsyncFlusher = (*asyncMem)(nil)
	_ nbd.WriteBuffers = (*asyncMem)(nil)
)

func (m *asyncMem) free(n int) chan []byte {
	c, _ := m.pool.LoadOrStore(n, make(chan []byte, 64))
	return c.(chan []byte)
}

func (m *asyncMem) WriteBuffer(n int) []byte {
	var p []byte
	select {
	case p = <-m.free(n):
	default:
		p = make([]byte, n)
	}
	m.given.Store(&p[0], true)
	return p
}

func (m *asyncMem) WriteAsync(ctx context.Context, p []byte, off uint64, fua bool, done func(error)) {
	m.async.Add(1)
	if _, ok := m.given.LoadAndDelete(&p[0]); !ok {
		m.foreign.Add(1)
	}
	finish := func() {
		err := m.memDevice.WriteAt(ctx, p, off, fua)
		m.memDevice.mu.Lock()
		m.keptBuffers = m.keptBuffers[:0] // p is recycled: keeping it proves nothing
		m.memDevice.mu.Unlock()
		done(err)
		// Scribble on the buffer before it is reused: a queue that read
		// it after handing it over would be caught by the contents.
		for i := range p {
			p[i] = 0xee
		}
		select {
		case m.free(len(p)) <- p:
		default:
		}
	}
	if m.calls.Add(1)%2 == 0 {
		finish()
		return
	}
	go finish()
}

func (m *asyncMem) FlushAsync(ctx context.Context, done func(error)) {
	m.aflushes.Add(1)
	go func() { done(m.memDevice.Flush(ctx)) }()
}

// small keeps a device's buffers small (2 MiB a queue) where a test does
// not need the defaults: the race detector and TCG make memory slow.
var small = Options{Depth: 16, MaxIO: 128 << 10}

// startKernel starts a ublk device over dev or skips the test where the
// kernel cannot.
func startKernel(t *testing.T, dev nbd.Device, opts Options) *Device {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	if !Available() {
		t.Skip("no ublk_drv on this kernel")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	d, err := Start(ctx, dev, opts)
	if errors.Is(err, ErrUnavailable) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := d.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return d
}

// alignedBuf returns page-aligned memory for O_DIRECT.
func alignedBuf(t *testing.T, n int) []byte {
	t.Helper()
	b, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(b) })
	return b
}

func TestKernelReadWrite(t *testing.T) {
	mem := newMemDevice(16 << 20)
	d := startKernel(t, mem, Options{Queues: 2, Depth: 16, MaxIO: 128 << 10})
	t.Logf("serving %s", d.Path())

	f, err := os.OpenFile(d.Path(), os.O_RDWR|unix.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var size uint64
	if err := ioctlPtr(f, unix.BLKGETSIZE64, unsafe.Pointer(&size)); err != nil || size != mem.Size() {
		t.Fatalf("BLKGETSIZE64 = %d, %v; want %d", size, err, mem.Size())
	}

	// 1 MiB at an odd 4 KiB offset: more than MaxIO, so the kernel splits it.
	buf := alignedBuf(t, 1<<20)
	rand.NewChaCha8([32]byte{1}).Read(buf)
	const off = 3 * 4096
	if _, err := f.WriteAt(buf, off); err != nil {
		t.Fatal(err)
	}
	if got := mem.snapshot(off, len(buf)); !bytes.Equal(got, buf) {
		t.Fatal("device does not hold what was written through the block device")
	}
	// Every WriteAt got its own copy, not the tag buffer.
	mem.mu.Lock()
	seen := map[uintptr]bool{}
	for _, p := range mem.keptBuffers {
		a := uintptr(unsafe.Pointer(&p[0]))
		if seen[a] {
			t.Errorf("WriteAt was given the same buffer twice")
		}
		seen[a] = true
	}
	mem.mu.Unlock()

	back := alignedBuf(t, 1<<20)
	if _, err := f.ReadAt(back, off); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(back, buf) {
		t.Fatal("read back differs")
	}

	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	mem.mu.Lock()
	flushes := mem.flushes
	mem.mu.Unlock()
	if flushes == 0 {
		t.Error("fsync of the block device did not reach Flush")
	}

	// Discard and zero-out reach Trim and WriteZeroes.
	rng2 := [2]uint64{off, 64 << 10}
	if err := ioctlPtr(f, unix.BLKDISCARD, unsafe.Pointer(&rng2)); err != nil {
		t.Fatalf("BLKDISCARD: %v", err)
	}
	rng2 = [2]uint64{off + 64<<10, 64 << 10}
	if err := ioctlPtr(f, unix.BLKZEROOUT, unsafe.Pointer(&rng2)); err != nil {
		t.Fatalf("BLKZEROOUT: %v", err)
	}
	mem.mu.Lock()
	trims, zeroes := mem.trims, mem.zeroes
	mem.mu.Unlock()
	if trims == 0 || zeroes == 0 {
		t.Errorf("trims %d, write-zeroes %d; want both > 0", trims, zeroes)
	}
	if got := mem.snapshot(off, 128<<10); !bytes.Equal(got, make([]byte, 128<<10)) {
		t.Error("discarded and zeroed range is not zero")
	}

	// Errors reach the writer with their errno.
	for _, c := range []struct {
		err  error
		want unix.Errno
	}{
		{unix.ENOSPC, unix.ENOSPC},
		{errors.New("disk on fire"), unix.EIO},
	} {
		mem.mu.Lock()
		mem.fail = c.err
		mem.mu.Unlock()
		_, err := f.WriteAt(buf[:4096], 0)
		if !errors.Is(err, c.want) {
			t.Errorf("write with the Device failing %v: %v, want %v", c.err, err, c.want)
		}
	}
	mem.mu.Lock()
	mem.fail = nil
	mem.mu.Unlock()

	f.Close()
	if err := d.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, err := os.Stat(d.Path()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s still exists after Close: %v", d.Path(), err)
	}
}

func ioctlPtr(f *os.File, req uint, arg unsafe.Pointer) error {
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), uintptr(req), uintptr(arg))
	if errno != 0 {
		return errno
	}
	return nil
}

// TestKernelExt4 puts a file system on the device: mke2fs, mount, write
// and fsync a file, unmount, e2fsck -f -n, and the file's contents again
// after a second mount.
func TestKernelExt4(t *testing.T) {
	t.Run("sync", func(t *testing.T) { kernelExt4(t, newMemDevice(64<<20)) })
	t.Run("async", func(t *testing.T) { kernelExt4(t, newAsyncMem(64<<20)) })
}

func kernelExt4(t *testing.T, dev nbd.Device) {
	d := startKernel(t, dev, Options{})
	for _, tool := range []string{"mke2fs", "e2fsck"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not found", tool)
		}
	}
	if out, err := exec.Command("mke2fs", "-q", "-F", "-t", "ext4", d.Path()).CombinedOutput(); err != nil {
		t.Fatalf("mke2fs: %v\n%s", err, out)
	}
	dir := t.TempDir()
	if err := unix.Mount(d.Path(), dir, "ext4", 0, ""); err != nil {
		t.Skipf("mount ext4: %v", err)
	}
	content := bytes.Repeat([]byte("georepl over ublk\n"), 100000)
	name := filepath.Join(dir, "file")
	f, err := os.Create(name)
	if err == nil {
		_, err = f.Write(content)
		if err == nil {
			err = f.Sync()
		}
		f.Close()
	}
	if uerr := unix.Unmount(dir, 0); uerr != nil {
		t.Fatalf("umount: %v", uerr)
	}
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("e2fsck", "-f", "-n", d.Path()).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck -f -n: %v\n%s", err, out)
	}
	if err := unix.Mount(d.Path(), dir, "ext4", unix.MS_RDONLY, ""); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(name)
	unix.Unmount(dir, 0)
	if err != nil || !bytes.Equal(got, content) {
		t.Fatalf("file after remount: %d bytes, %v; want the %d written", len(got), err, len(content))
	}
	if err := d.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

// TestKernelCloseFailsStuckIO: a Device that never answers a read does
// not make Close hang; the read fails.
func TestKernelCloseFailsStuckIO(t *testing.T) {
	mem := newMemDevice(16 << 20)
	d := startKernel(t, mem, Options{Depth: 4, StopTimeout: time.Second})
	// Let the kernel's partition scan through before reads start to hang.
	time.Sleep(200 * time.Millisecond)
	mem.mu.Lock()
	mem.block = make(chan struct{})
	mem.mu.Unlock()

	readErr := make(chan error, 1)
	go func() {
		f, err := os.OpenFile(d.Path(), os.O_RDONLY|unix.O_DIRECT, 0)
		if err != nil {
			readErr <- err
			return
		}
		defer f.Close()
		b := alignedBuf(t, 4096)
		_, err = f.ReadAt(b, 1<<20)
		readErr <- err
	}()
	time.Sleep(300 * time.Millisecond)
	start := time.Now()
	closed := make(chan error, 1)
	go func() { closed <- d.Close() }()
	select {
	case err := <-closed:
		t.Logf("Close returned after %v: %v", time.Since(start), err)
	case <-time.After(60 * time.Second):
		t.Fatal("Close hangs on a stuck request")
	}
	select {
	case err := <-readErr:
		if err == nil {
			t.Error("the stuck read succeeded")
		}
		t.Logf("stuck read: %v", err)
	case <-time.After(60 * time.Second):
		t.Error("the stuck read never returned")
	}
}

// TestKernelConcurrent has several writers and readers on two queues of a
// shallow depth, so that tags are reused many times over, each checking
// its own region, and the device ends holding what they last wrote.
func TestKernelConcurrent(t *testing.T) {
	kernelConcurrent(t, newMemDevice(workers*region), nil)
}

// TestKernelAsync: writes and flushes to a Device with WriteAsync,
// FlushAsync and WriteBuffers start on the queue's thread, in the
// Device's buffers, and complete when the Device says, sooner or later:
// many concurrent writers read back what they wrote, an O_DSYNC write
// still arrives with FUA, and fsync reaches FlushAsync.
func TestKernelAsync(t *testing.T) {
	am := newAsyncMem(workers * region)
	d := kernelConcurrent(t, am.memDevice, am)
	if n := am.async.Load(); n == 0 {
		t.Fatal("no write reached WriteAsync")
	}
	if n := am.foreign.Load(); n != 0 {
		t.Errorf("%d of %d writes came in a buffer that WriteBuffer did not give", n, am.async.Load())
	}
	f := dsyncWrite(t, d)
	defer f.Close()
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	am.mu.Lock()
	fua := am.fuaWrites
	am.mu.Unlock()
	if fua == 0 || am.aflushes.Load() == 0 {
		t.Errorf("FUA writes %d, FlushAsync calls %d; want both > 0", fua, am.aflushes.Load())
	}
}

const (
	workers = 8
	region  = 1 << 20
	rounds  = 40
)

// kernelConcurrent has workers write and read back random extents of
// their own regions at once through a device over dev (mem's, or mem
// itself if dev is nil) with few tags, then compares mem with what they
// last wrote.
func kernelConcurrent(t *testing.T, mem *memDevice, dev nbd.Device) *Device {
	if dev == nil {
		dev = mem
	}
	d := startKernel(t, dev, Options{Queues: 2, Depth: 4, MaxIO: 64 << 10})
	f, err := os.OpenFile(d.Path(), os.O_RDWR|unix.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	want := make([][]byte, workers)
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wbuf, rbuf := alignedBuf(t, region), alignedBuf(t, region)
		want[w] = make([]byte, region)
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			data := rand.NewChaCha8([32]byte{byte(w)})
			base := int64(w * region)
			for range rounds {
				// A random aligned extent of 4 KiB to 256 KiB.
				n := (1 + rng.IntN(64)) * 4096
				off := rng.IntN(region/4096-n/4096+1) * 4096
				data.Read(wbuf[:n])
				if _, err := f.WriteAt(wbuf[:n], base+int64(off)); err != nil {
					errs <- err
					return
				}
				copy(want[w][off:], wbuf[:n])
				// Read back the extent and the block after it (the
				// block before or after a request must not change).
				end := min(off+n+4096, region)
				if _, err := f.ReadAt(rbuf[:end-off], base+int64(off)); err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(rbuf[:end-off], want[w][off:end]) {
					errs <- errors.New("extent read back differs from what was written")
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if !bytes.Equal(mem.snapshot(0, len(mem.data)), bytes.Join(want, nil)) {
		t.Error("device contents differ from what the writers last wrote")
	}
	return d
}

// dsyncWrite opens d with O_DIRECT|O_DSYNC and writes its first block.
func dsyncWrite(t *testing.T, d *Device) *os.File {
	t.Helper()
	f, err := os.OpenFile(d.Path(), os.O_RDWR|unix.O_DIRECT|unix.O_DSYNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(alignedBuf(t, 4096), 0); err != nil {
		f.Close()
		t.Fatal(err)
	}
	return f
}

// TestKernelFUA: an O_DSYNC write on a device with a volatile cache and
// FUA arrives as a FUA write.
func TestKernelFUA(t *testing.T) {
	mem := newMemDevice(8 << 20)
	d := startKernel(t, mem, small)
	f := dsyncWrite(t, d)
	defer f.Close()
	mem.mu.Lock()
	defer mem.mu.Unlock()
	if mem.fuaWrites == 0 && mem.flushes == 0 {
		t.Error("an O_DSYNC write reached the Device neither as FUA nor with a flush")
	}
	t.Logf("FUA writes %d, flushes %d", mem.fuaWrites, mem.flushes)
}

type readOnlyMem struct{ *memDevice }

func (readOnlyMem) ReadOnly() bool { return true }

// TestKernelReadOnlyAndPath: a read-only Device makes a read-only disk, and
// Options.Path picks the device number.
func TestKernelReadOnlyAndPath(t *testing.T) {
	mem := newMemDevice(8 << 20)
	copy(mem.data, "hello")
	opts := small
	opts.Path = "/dev/ublkb7"
	d := startKernel(t, readOnlyMem{mem}, opts)
	if d.Path() != "/dev/ublkb7" {
		t.Fatalf("Path %s, want /dev/ublkb7", d.Path())
	}
	other := startKernel(t, newMemDevice(8<<20), small)
	if other.Path() == d.Path() {
		t.Fatalf("two devices share %s", d.Path())
	}
	ro, err := os.ReadFile("/sys/block/" + filepath.Base(d.Path()) + "/ro")
	if err != nil || string(bytes.TrimSpace(ro)) != "1" {
		t.Errorf("sysfs ro = %q, %v; want 1", ro, err)
	}
	if f, err := os.OpenFile(d.Path(), os.O_RDWR, 0); err == nil {
		_, err = f.WriteAt([]byte("x"), 0)
		f.Close()
		if !errors.Is(err, unix.EPERM) {
			t.Errorf("write to the read-only device: %v, want EPERM", err)
		}
	}
	got, err := os.ReadFile(d.Path())
	if err != nil || !bytes.HasPrefix(got, []byte("hello")) || len(got) != len(mem.data) {
		t.Errorf("read %d bytes, %v", len(got), err)
	}
}

// TestKernelCloseWhileOpen: Close with the block device still open does
// not hang; it reports the holder, and a new device can be added once the
// holder lets go.
func TestKernelCloseWhileOpen(t *testing.T) {
	mem := newMemDevice(8 << 20)
	if os.Geteuid() != 0 || !Available() {
		t.Skip("needs root and ublk_drv")
	}
	opts := small
	opts.StopTimeout = time.Second
	d, err := Start(context.Background(), mem, opts)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(d.Path())
	if err != nil {
		d.Close()
		t.Fatal(err)
	}
	start := time.Now()
	err = d.Close()
	t.Logf("Close after %v: %v", time.Since(start), err)
	if err == nil {
		t.Error("Close reported success with the device still open")
	}
	f.Close()
	again := startKernel(t, mem, small)
	t.Logf("next device: %s", again.Path())
}

// TestHelperServe is not a test of its own: TestKernelStaleDevice runs the
// test binary with it as a child that serves a device until it is killed.
func TestHelperServe(t *testing.T) {
	path := os.Getenv("UBLK_TEST_HELPER_DEVICE")
	if path == "" {
		t.Skip("only as TestKernelStaleDevice's child")
	}
	opts := small
	opts.Path = path
	mem := newMemDevice(8 << 20)
	if _, err := Start(context.Background(), mem, opts); err != nil {
		os.Stdout.WriteString("HELPER-ERR " + err.Error() + "\n")
		os.Exit(1)
	}
	if os.Getenv("UBLK_TEST_HELPER_BLOCK") != "" {
		// Every read from now on hangs (not earlier: START_DEV waits
		// for the kernel's partition scan).
		time.Sleep(200 * time.Millisecond)
		mem.mu.Lock()
		mem.block = make(chan struct{})
		mem.mu.Unlock()
	}
	os.Stdout.WriteString("HELPER-READY\n")
	select {}
}

// TestKernelStaleDevice: a device number served by a live process is
// refused; once that process is killed (no Close), Start takes the number
// over, as a restarted daemon would.
func TestKernelStaleDevice(t *testing.T) {
	if os.Geteuid() != 0 || !Available() {
		t.Skip("needs root and ublk_drv")
	}
	const path = "/dev/ublkb5"
	child := exec.Command(os.Args[0], "-test.run=^TestHelperServe$")
	child.Env = append(os.Environ(), "UBLK_TEST_HELPER_DEVICE="+path)
	out, err := child.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	defer child.Process.Kill()
	line := make([]byte, 256)
	n, _ := out.Read(line)
	if !bytes.HasPrefix(line[:n], []byte("HELPER-READY")) {
		t.Fatalf("helper: %q", line[:n])
	}

	opts := small
	opts.Path = path
	_, err = Start(context.Background(), newMemDevice(8<<20), opts)
	if err == nil {
		t.Fatal("Start took a device number a live process serves")
	}
	t.Logf("while the helper lives: %v", err)

	child.Process.Kill()
	child.Wait()
	d := startKernel(t, newMemDevice(8<<20), opts)
	if d.Path() != path {
		t.Fatalf("got %s, want %s", d.Path(), path)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Read(make([]byte, 4096)); err != nil {
		t.Errorf("read from the new device: %v", err)
	}
}

// BenchmarkKernelRead4K reads random 4 KiB blocks with O_DIRECT through
// /dev/ublkbN from several goroutines: the kernel path's overhead over an
// in-memory Device.
func BenchmarkKernelRead4K(b *testing.B) {
	if os.Geteuid() != 0 || !Available() {
		b.Skip("needs root and ublk_drv")
	}
	mem := newMemDevice(64 << 20)
	d, err := Start(context.Background(), mem, Options{Queues: 2, Depth: 64})
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	f, err := os.OpenFile(d.Path(), os.O_RDONLY|unix.O_DIRECT, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	b.SetBytes(4096)
	b.RunParallel(func(pb *testing.PB) {
		buf, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
		if err != nil {
			b.Error(err)
			return
		}
		defer unix.Munmap(buf)
		rng := rand.New(rand.NewPCG(rand.Uint64(), 1))
		for pb.Next() {
			if _, err := f.ReadAt(buf, int64(rng.IntN(len(mem.data)/4096))*4096); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// TestKernelStartCancelled: a Start whose context ends fails and leaves
// no device behind.
func TestKernelStartCancelled(t *testing.T) {
	if os.Geteuid() != 0 || !Available() {
		t.Skip("needs root and ublk_drv")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	d, err := Start(ctx, newMemDevice(8<<20), small)
	if err == nil {
		d.Close()
		t.Fatal("Start succeeded with a cancelled context")
	}
	t.Logf("Start: %v", err)
	if left, _ := filepath.Glob("/dev/ublk[bc]*"); len(left) > 0 {
		t.Errorf("left behind: %v", left)
	}
}

// TestKernelServerKilled: when the serving process dies with a request in
// flight, the request fails instead of hanging, and the device number can
// be taken again.
func TestKernelServerKilled(t *testing.T) {
	if os.Geteuid() != 0 || !Available() {
		t.Skip("needs root and ublk_drv")
	}
	const path = "/dev/ublkb6"
	child := exec.Command(os.Args[0], "-test.run=^TestHelperServe$")
	child.Env = append(os.Environ(), "UBLK_TEST_HELPER_DEVICE="+path, "UBLK_TEST_HELPER_BLOCK=1")
	out, err := child.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	defer child.Process.Kill()
	line := make([]byte, 256)
	n, _ := out.Read(line)
	if !bytes.HasPrefix(line[:n], []byte("HELPER-READY")) {
		t.Fatalf("helper: %q", line[:n])
	}
	readErr := make(chan error, 1)
	go func() {
		f, err := os.OpenFile(path, os.O_RDONLY|unix.O_DIRECT, 0)
		if err != nil {
			readErr <- err
			return
		}
		defer f.Close()
		_, err = f.ReadAt(alignedBuf(t, 4096), 1<<20)
		readErr <- err
	}()
	time.Sleep(300 * time.Millisecond)
	child.Process.Kill()
	child.Wait()
	start := time.Now()
	select {
	case err := <-readErr:
		if err == nil {
			t.Error("the read in flight when the server died succeeded")
		}
		t.Logf("read failed %v after the kill: %v", time.Since(start), err)
	case <-time.After(90 * time.Second):
		t.Fatal("the read in flight when the server died still hangs after 90 s")
	}
	opts := small
	opts.Path = path
	startKernel(t, newMemDevice(8<<20), opts)
}
