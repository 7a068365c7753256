package kmod

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

func newBacking(t *testing.T, size int64) *Backing {
	t.Helper()
	path := filepath.Join(t.TempDir(), "backing.img")
	if err := CreateFile(path, size); err != nil {
		t.Fatal(err)
	}
	b, err := OpenBacking(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

func randomBytes(seed uint64, n int) []byte {
	p := make([]byte, n)
	r := rand.New(rand.NewPCG(seed, seed))
	for i := range p {
		p[i] = byte(r.Uint32())
	}
	return p
}

func readBack(t *testing.T, r interface {
	ReadAt([]byte, int64) (int, error)
}, off int64, n int) []byte {
	t.Helper()
	p := make([]byte, n)
	if got, err := r.ReadAt(p, off); err != nil || got != n {
		t.Fatalf("ReadAt(%d bytes at %d) = %d, %v", n, off, got, err)
	}
	return p
}

func TestCreateFileIsSparseAndRefusesOverwrite(t *testing.T) {
	path := filepath.Join(t.TempDir(), "disk.img")
	if err := CreateFile(path, 1<<30); err != nil {
		t.Fatal(err)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	if st.Size != 1<<30 || st.Blocks*512 > 1<<20 {
		t.Fatalf("size %d, allocated %d bytes: want 1 GiB, sparse", st.Size, st.Blocks*512)
	}
	err := CreateFile(path, 4096)
	if !errors.Is(err, fs.ErrExist) {
		t.Fatalf("second CreateFile: %v, want fs.ErrExist", err)
	}
	if err := CreateFile(filepath.Join(t.TempDir(), "neg.img"), -1); err == nil || !strings.Contains(err.Error(), "negative size") {
		t.Fatalf("CreateFile(-1) = %v, want a negative-size error", err)
	}
}

func TestReadWriteSyncRoundTrip(t *testing.T) {
	b := newBacking(t, 1<<20)
	if b.Size() != 1<<20 {
		t.Fatalf("Size() = %d", b.Size())
	}
	data := randomBytes(1, 12345)
	if n, err := b.WriteAt(data, 4000); err != nil || n != len(data) {
		t.Fatalf("WriteAt = %d, %v", n, err)
	}
	if err := b.Sync(); err != nil {
		t.Fatal(err)
	}
	if got := readBack(t, b, 4000, len(data)); !bytes.Equal(got, data) {
		t.Fatal("read back differs from written data")
	}
	// The data reached the file, not just a cache of ours.
	raw, err := os.ReadFile(b.Path())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(raw[4000:4000+len(data)], data) {
		t.Fatal("file content differs from written data")
	}
}

func TestSecondOpenIsRefusedUntilClose(t *testing.T) {
	b := newBacking(t, 4096)
	_, err := OpenBacking(b.Path())
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), b.Path()) {
		t.Fatalf("second OpenBacking: %v, want ErrLocked naming %s", err, b.Path())
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	again, err := OpenBacking(b.Path())
	if err != nil {
		t.Fatalf("OpenBacking after Close: %v", err)
	}
	again.Close()
}

func TestOpenRefusesMissingAndNonBlockStores(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing.img")
	if _, err := OpenBacking(missing); !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), missing) {
		t.Fatalf("OpenBacking(missing) = %v", err)
	}
	if _, err := OpenBacking("/dev/null"); !errors.Is(err, ErrNotBlockStore) || !strings.Contains(err.Error(), "/dev/null") {
		t.Fatalf("OpenBacking(/dev/null) = %v, want ErrNotBlockStore naming it", err)
	}
}

func TestBoundsAreCheckedBeforeTouchingTheFile(t *testing.T) {
	b := newBacking(t, 8192)
	p := make([]byte, 4096)
	cases := []struct {
		name string
		do   func() error
	}{
		{"read past end", func() error { _, err := b.ReadAt(p, 4097); return err }},
		{"write past end", func() error { _, err := b.WriteAt(p, 8192); return err }},
		{"negative offset", func() error { _, err := b.WriteAt(p, -1); return err }},
		{"punch past end", func() error { return b.Punch(0, 8193) }},
		{"zeroes overflow", func() error { return b.WriteZeroes(1, 1<<63-1) }},
	}
	for _, tc := range cases {
		err := tc.do()
		if !errors.Is(err, ErrOutOfBounds) || !strings.Contains(err.Error(), b.Path()) {
			t.Errorf("%s: %v, want ErrOutOfBounds naming the path", tc.name, err)
		}
	}
	st, err := os.Stat(b.Path())
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() != 8192 {
		t.Fatalf("file grew to %d bytes", st.Size())
	}
}

func TestPunchAndWriteZeroes(t *testing.T) {
	b := newBacking(t, 1<<20)
	data := randomBytes(2, 1<<20)
	if _, err := b.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	if err := b.Punch(4096, 65536); err != nil {
		t.Fatal(err)
	}
	if err := b.WriteZeroes(100000, 3000); err != nil {
		t.Fatal(err)
	}
	want := bytes.Clone(data)
	clear(want[4096 : 4096+65536])
	clear(want[100000:103000])
	if got := readBack(t, b, 0, 1<<20); !bytes.Equal(got, want) {
		t.Fatal("content after Punch/WriteZeroes differs")
	}
}

func TestRegion(t *testing.T) {
	b := newBacking(t, 1<<16)
	meta := b.Region(1<<15, 1<<15)
	data := b.Region(0, 1<<15)
	if meta.Err() != nil || data.Err() != nil || meta.Size() != 1<<15 || meta.Offset() != 1<<15 {
		t.Fatalf("regions: %v %v size %d", meta.Err(), data.Err(), meta.Size())
	}
	record := randomBytes(3, 512)
	if _, err := meta.WriteAt(record, 0); err != nil {
		t.Fatal(err)
	}
	if err := meta.Sync(); err != nil {
		t.Fatal(err)
	}
	if got := readBack(t, b, 1<<15, 512); !bytes.Equal(got, record) {
		t.Fatal("region write did not land at its offset in the store")
	}
	if _, err := data.WriteAt(record, 1<<15-511); !errors.Is(err, ErrOutOfBounds) || !strings.Contains(err.Error(), "region [0, +32768)") {
		t.Fatalf("write across the region's end: %v", err)
	}
	if got := readBack(t, b, 1<<15, 512); !bytes.Equal(got, record) {
		t.Fatal("refused region write touched the neighbouring region")
	}
	if err := meta.WriteZeroes(0, 256); err != nil {
		t.Fatal(err)
	}
	if err := meta.Punch(256, 256); err != nil {
		t.Fatal(err)
	}
	if got := readBack(t, meta, 0, 512); !bytes.Equal(got, make([]byte, 512)) {
		t.Fatal("region zeroes/punch did not zero the range")
	}

	unfit := b.Region(1<<15, 1<<15+1)
	if !errors.Is(unfit.Err(), ErrOutOfBounds) || unfit.Size() != 0 {
		t.Fatalf("unfit region: err %v size %d", unfit.Err(), unfit.Size())
	}
	if _, err := unfit.ReadAt(make([]byte, 1), 0); err != unfit.Err() {
		t.Fatalf("unfit region ReadAt: %v", err)
	}
	if err := unfit.Sync(); err != unfit.Err() {
		t.Fatalf("unfit region Sync: %v", err)
	}
}

func TestConcurrentWritersAndClose(t *testing.T) {
	b := newBacking(t, 1<<20)
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			block := randomBytes(uint64(w), 4096)
			for i := range 16 {
				off := int64(w*16+i) * 4096
				if _, err := b.WriteAt(block, off); err != nil {
					t.Error(err)
					return
				}
				if got := readBack(t, b, off, 4096); !bytes.Equal(got, block) {
					t.Error("concurrent write lost")
					return
				}
			}
		})
	}
	wg.Wait()
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := b.WriteAt(make([]byte, 1), 0); !errors.Is(err, os.ErrClosed) {
		t.Fatalf("WriteAt after Close: %v, want os.ErrClosed", err)
	}
	if err := b.Sync(); !errors.Is(err, os.ErrClosed) {
		t.Fatalf("Sync after Close: %v, want os.ErrClosed", err)
	}
}

// TestFullFileSystemSurfacesENOSPC fills a tiny tmpfs (which also lacks
// FALLOC_FL_ZERO_RANGE, so WriteZeroes takes its fallback path there).
func TestFullFileSystemSurfacesENOSPC(t *testing.T) {
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=256k"); err != nil {
		t.Skipf("cannot mount a small tmpfs (needs root): %v", err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	path := filepath.Join(dir, "full.img")
	if err := CreateFile(path, 1<<20); err != nil {
		t.Fatal(err)
	}
	b, err := OpenBacking(path)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := b.WriteZeroes(0, 64<<10); err != nil {
		t.Fatalf("WriteZeroes fallback on tmpfs: %v", err)
	}
	n, err := b.WriteAt(randomBytes(4, 1<<20), 0)
	if !errors.Is(err, syscall.ENOSPC) || !strings.Contains(err.Error(), path) {
		t.Fatalf("WriteAt on a full file system = %d, %v; want ENOSPC naming the path", n, err)
	}
	if n >= 1<<20 {
		t.Fatalf("WriteAt reported %d bytes written with ENOSPC", n)
	}
	if err := b.WriteZeroes(0, 1<<20); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("WriteZeroes on a full file system: %v, want ENOSPC", err)
	}
	// A durable write that finds no space is the write's failure, not a
	// failed flush: it flushed nothing.
	_, err = b.WriteAtFUA(randomBytes(5, 1<<20), 0)
	if !errors.Is(err, syscall.ENOSPC) || errors.Is(err, ErrDurableWrite) {
		t.Fatalf("WriteAtFUA on a full file system: %v; want ENOSPC, not ErrDurableWrite", err)
	}
}

// TestBlockDevice runs the block-device paths (BLKGETSIZE64, BLKDISCARD,
// BLKZEROOUT) on a loop device.
func TestBlockDevice(t *testing.T) {
	img := filepath.Join(t.TempDir(), "loop.img")
	if err := CreateFile(img, 4<<20); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("losetup", "--find", "--show", img).Output()
	if err != nil {
		t.Skipf("cannot attach a loop device (needs root and losetup): %v", err)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() { exec.Command("losetup", "--detach", dev).Run() })

	b, err := OpenBacking(dev)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if b.Size() != 4<<20 {
		t.Fatalf("block device size %d, want %d", b.Size(), 4<<20)
	}
	data := randomBytes(5, 1<<20)
	if _, err := b.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	if err := b.WriteZeroes(4096, 8192); err != nil {
		t.Fatal(err)
	}
	if err := b.Punch(1<<19, 1<<16); err != nil {
		t.Fatal(err)
	}
	if err := b.Sync(); err != nil {
		t.Fatal(err)
	}
	// Unaligned ranges: the ioctls take whole sectors only.
	if err := b.WriteZeroes(100000, 5000); err != nil {
		t.Fatal(err)
	}
	if err := b.WriteZeroes(300001, 17); err != nil {
		t.Fatal(err)
	}
	if err := b.Punch(1<<19+100, 5000); err != nil {
		t.Fatal(err)
	}
	got := readBack(t, b, 0, 1<<19)
	want := bytes.Clone(data[:1<<19])
	clear(want[4096 : 4096+8192])
	clear(want[100000:105000])
	clear(want[300001:300018])
	if !bytes.Equal(got, want) {
		t.Fatal("block device content after WriteZeroes differs")
	}
	if _, err := OpenBacking(dev); !errors.Is(err, ErrLocked) {
		t.Fatalf("second open of the block device: %v, want ErrLocked", err)
	}
}

// TestWriteAtFUA: a durable write reaches the file, through a region too;
// one refused before it reaches the store is not a failed flush
// (ErrDurableWrite), one that fails in the kernel is, whatever its errno.
func TestWriteAtFUA(t *testing.T) {
	b := newBacking(t, 1<<20)
	data := randomBytes(5, 12345)
	if n, err := b.WriteAtFUA(data, 4000); err != nil || n != len(data) {
		t.Fatalf("WriteAtFUA = %d, %v", n, err)
	}
	r := b.Region(64<<10, 64<<10)
	if n, err := r.WriteAtFUA(data[:4096], 4096); err != nil || n != 4096 {
		t.Fatalf("Region.WriteAtFUA = %d, %v", n, err)
	}
	raw, err := os.ReadFile(b.Path())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(raw[4000:4000+len(data)], data) || !bytes.Equal(raw[68<<10:72<<10], data[:4096]) {
		t.Fatal("file content differs from the durable writes")
	}
	if _, err := r.WriteAtFUA(data, 64<<10-100); !errors.Is(err, ErrOutOfBounds) || errors.Is(err, ErrDurableWrite) {
		t.Fatalf("a durable write out of the region: %v, want ErrOutOfBounds only", err)
	}
	b.Close()
	if _, err := b.WriteAtFUA(data, 0); !errors.Is(err, ErrDurableWrite) || !errors.Is(err, os.ErrClosed) {
		t.Fatalf("a durable write to a closed store: %v, want ErrDurableWrite wrapping os.ErrClosed", err)
	}
}

// BenchmarkFUAWrite: a 4 KiB FUA write (a journal commit) after 16 MiB of
// plain writes elsewhere on the store, still dirty in the page cache: as
// a write and a Sync, which writes back the whole store, and as one
// WriteAtFUA, which writes back its own range.
func BenchmarkFUAWrite(b *testing.B) {
	const dirty = 16 << 20
	for _, way := range []struct {
		name string
		fua  func(s *Backing, p []byte, off int64) error
	}{
		{"WriteAt+Sync", func(s *Backing, p []byte, off int64) error {
			if _, err := s.WriteAt(p, off); err != nil {
				return err
			}
			return s.Sync()
		}},
		{"WriteAtFUA", func(s *Backing, p []byte, off int64) error {
			_, err := s.WriteAtFUA(p, off)
			return err
		}},
	} {
		b.Run(way.name, func(b *testing.B) {
			path := filepath.Join(b.TempDir(), "disk.img")
			if err := CreateFile(path, dirty+1<<20); err != nil {
				b.Fatal(err)
			}
			s, err := OpenBacking(path)
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			bulk, commit := randomBytes(6, 1<<20), randomBytes(7, 4096)
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				for off := int64(0); off < dirty; off += int64(len(bulk)) {
					if _, err := s.WriteAt(bulk, off); err != nil {
						b.Fatal(err)
					}
				}
				b.StartTimer()
				if err := way.fua(s, commit, dirty); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestBackingDoesNoReadahead: a read of the store brings into the page
// cache what it asked for and no more (see init): readahead here would
// fill the cache with large folios that make later small writes costly.
func TestBackingDoesNoReadahead(t *testing.T) {
	const size, page = 4 << 20, 4096
	path := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(path, randomBytes(8, size), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := OpenBacking(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// Out of the page cache first; a file system that keeps its pages
	// there (tmpfs) has no readahead to speak of.
	if err := s.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := s.control("fadvise", func(fd int) error { return unix.Fadvise(fd, 0, 0, unix.FADV_DONTNEED) }); err != nil {
		t.Fatal(err)
	}
	if n := residentPages(t, path, size); n != 0 {
		t.Skipf("the file system of %s keeps %d pages of a synced file in memory after FADV_DONTNEED (tmpfs?): readahead cannot be observed there", path, n)
	}
	if _, err := s.ReadAt(make([]byte, page), 0); err != nil {
		t.Fatal(err)
	}
	if n := residentPages(t, path, size); n != 1 {
		t.Fatalf("a read of one page left %d pages of the store in the page cache, want 1 (no readahead)", n)
	}
}

// residentPages counts the pages of the file's first size bytes that
// are in the page cache (mincore).
func residentPages(t *testing.T, path string, size int) int {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m, err := unix.Mmap(int(f.Fd()), 0, size, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	vec := make([]byte, (size+os.Getpagesize()-1)/os.Getpagesize())
	if _, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&m[0])), uintptr(len(m)), uintptr(unsafe.Pointer(&vec[0]))); errno != 0 {
		t.Fatal(errno)
	}
	n := 0
	for _, v := range vec {
		n += int(v & 1)
	}
	return n
}

// BenchmarkWriteAfterRead: random 4 KiB writes into a store that was read
// whole first, as a resync source or a verify reads it, through a Backing
// and, for comparison, through a plain file with the kernel's default
// readahead. On kernels that give the file large folios (ext4 since Linux
// 6.16) the plain file's writes cost several times the CPU.
func BenchmarkWriteAfterRead(b *testing.B) {
	const size = 256 << 20
	for _, way := range []struct {
		name string
		open func(path string) (io.ReaderAt, io.WriterAt, func() error, error)
	}{
		{"Backing", func(path string) (io.ReaderAt, io.WriterAt, func() error, error) {
			s, err := OpenBacking(path)
			if err != nil {
				return nil, nil, nil, err
			}
			return s, s, s.Close, nil
		}},
		{"plain-file", func(path string) (io.ReaderAt, io.WriterAt, func() error, error) {
			f, err := os.OpenFile(path, os.O_RDWR, 0)
			if err != nil {
				return nil, nil, nil, err
			}
			return f, f, f.Close, nil
		}},
	} {
		b.Run(way.name, func(b *testing.B) {
			path := filepath.Join(b.TempDir(), "disk.img")
			if err := CreateFile(path, size); err != nil {
				b.Fatal(err)
			}
			r, w, closeFn, err := way.open(path)
			if err != nil {
				b.Fatal(err)
			}
			defer closeFn()
			chunk := make([]byte, 1<<20)
			for off := int64(0); off < size; off += int64(len(chunk)) {
				if _, err := r.ReadAt(chunk, off); err != nil {
					b.Fatal(err)
				}
			}
			p := randomBytes(9, 4096)
			rnd := rand.New(rand.NewPCG(1, 2))
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := w.WriteAt(p, rnd.Int64N(size/4096)*4096); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
