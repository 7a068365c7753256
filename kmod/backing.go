package kmod

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Errors returned (wrapped, with the path) by OpenBacking, CreateFile and
// the methods of Backing and Region.
var (
	// ErrLocked: another open file description (usually another georepl
	// daemon) holds the exclusive lock on the backing store.
	ErrLocked = errors.New("backing store is locked by another process")
	// ErrOutOfBounds: an access reaches outside the backing store or region.
	ErrOutOfBounds = errors.New("access outside the backing store")
	// ErrNotBlockStore: the path is neither a regular file nor a block device.
	ErrNotBlockStore = errors.New("not a regular file or block device")
	// ErrDurableWrite: a durable write (WriteAtFUA) failed in the call
	// that writes and flushes. Linux does not say which of the two
	// failed, and its flush, like fdatasync, reports a writeback error of
	// any part of the file, once: the failure is a failed flush of the
	// store. (A write refused before it reached the store, out of bounds
	// for one, or for want of space, does not wrap it.)
	ErrDurableWrite = errors.New("durable write failed")
)

// zeroChunkSize bounds the size of one write when zeroes are written by hand.
const zeroChunkSize = 1 << 20

// zeroChunk is never written to; it is the source of hand-written zeroes.
var zeroChunk [zeroChunkSize]byte

// Backing is an open backing store: a regular file or a block device, locked
// exclusively for this process. Its size is the one it had when it was
// opened, until Grow reads it again.
//
// All methods are safe for concurrent use.
type Backing struct {
	file        *os.File
	path        string
	size        atomic.Int64
	blockDevice bool
	// sectorSize is a block device's logical sector size: BLKDISCARD and
	// BLKZEROOUT take only ranges aligned to it.
	sectorSize int64
	faults     *Faults // test facility; nil in production
	// noDSync: the kernel refused RWF_DSYNC (before Linux 4.7), so
	// WriteAtFUA writes, then flushes the whole store.
	noDSync atomic.Bool
}

// OpenBacking opens the regular file or block device at path read-write and
// takes an exclusive advisory lock (flock) on it. A second OpenBacking of the
// same store, from this or another process, fails with an error wrapping
// ErrLocked until the first is closed. The size is the file's length or the
// block device's capacity at open time.
func OpenBacking(path string) (*Backing, error) {
	// os.OpenFile always sets O_CLOEXEC.
	file, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("kmod: open backing store: %w", err)
	}
	b := &Backing{file: file, path: path}
	if err := b.init(); err != nil {
		file.Close()
		return nil, err
	}
	return b, nil
}

func (b *Backing) init() error {
	info, err := b.file.Stat()
	if err != nil {
		return fmt.Errorf("kmod: open backing store: %w", err)
	}
	switch mode := info.Mode(); {
	case mode.IsRegular():
		b.size.Store(info.Size())
	case mode&fs.ModeDevice != 0 && mode&fs.ModeCharDevice == 0:
		b.blockDevice = true
		size, err := b.deviceSize()
		if err != nil {
			return err
		}
		b.size.Store(size)
		var sectorSize int
		err = b.control("ioctl BLKSSZGET", func(fd int) (err error) {
			sectorSize, err = unix.IoctlGetInt(fd, unix.BLKSSZGET)
			return err
		})
		if err != nil {
			return err
		}
		b.sectorSize = int64(max(sectorSize, 1))
	default:
		return fmt.Errorf("kmod: open backing store %s (mode %v): %w", b.path, mode, ErrNotBlockStore)
	}
	err = b.control("flock", func(fd int) error { return unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB) })
	if errors.Is(err, unix.EWOULDBLOCK) {
		return fmt.Errorf("kmod: open backing store %s: %w (is another georepl daemon using it?)", b.path, ErrLocked)
	}
	if err != nil {
		return err
	}
	// No readahead on the store: the daemon reads what it is asked for.
	// The kernel device above it (nbd, ublk) does its own readahead, and
	// a resync or verify reads the store in large chunks of its own.
	// Readahead here would fill the page cache with large folios (recent
	// kernels give ext4 files, among others, folios up to 2 MiB),
	// and every later small write into such a folio walks all of its
	// blocks: a 4 KiB write after a resync read the store cost 7-12 times
	// the CPU of one into a store read without readahead
	// (BenchmarkWriteAfterRead).
	return b.control("fadvise", func(fd int) error { return unix.Fadvise(fd, 0, 0, unix.FADV_RANDOM) })
}

// CreateFile creates a sparse regular file of size bytes at path, for use
// as a backing store. It refuses to overwrite anything that exists at path
// (the error wraps fs.ErrExist), and removes its partial file if it fails.
func CreateFile(path string, size int64) error {
	if size < 0 {
		return fmt.Errorf("kmod: create backing file %s: negative size %d", path, size)
	}
	file, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("kmod: create backing file: %w", err)
	}
	err = file.Truncate(size)
	if err == nil {
		err = file.Sync()
	}
	if closeErr := file.Close(); err == nil {
		err = closeErr
	}
	if err == nil {
		err = syncDir(filepath.Dir(path))
	}
	if err != nil {
		os.Remove(path)
		return fmt.Errorf("kmod: create backing file %s of %d bytes: %w", path, size, err)
	}
	return nil
}

// syncDir makes a new directory entry in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if closeErr := d.Close(); err == nil {
		err = closeErr
	}
	return err
}

// Path returns the path the store was opened with.
func (b *Backing) Path() string { return b.path }

// Size returns the store's size in bytes, as read at open time or by the
// last Grow.
func (b *Backing) Size() int64 { return b.size.Load() }

// deviceSize asks a block device for its capacity.
func (b *Backing) deviceSize() (int64, error) {
	var size uint64
	if err := b.ioctl("ioctl BLKGETSIZE64", unix.BLKGETSIZE64, unsafe.Pointer(&size)); err != nil {
		return 0, err
	}
	if size > 1<<63-1 {
		return 0, fmt.Errorf("kmod: backing store %s: block device size %d overflows int64", b.path, size)
	}
	return int64(size), nil
}

// Grow reads the store's size again, after the operator grew the file or
// the block device, and returns it. A store that shrank keeps the size it
// had, and Grow says so: accesses up to that size would fail or read
// another device's data.
func (b *Backing) Grow() (int64, error) {
	var size int64
	if b.blockDevice {
		var err error
		if size, err = b.deviceSize(); err != nil {
			return 0, err
		}
	} else {
		info, err := b.file.Stat()
		if err != nil {
			return 0, fmt.Errorf("kmod: backing store %s: %w", b.path, err)
		}
		size = info.Size()
	}
	if old := b.size.Load(); size < old {
		return old, fmt.Errorf("kmod: backing store %s shrank from %d to %d bytes: %w", b.path, old, size, ErrOutOfBounds)
	}
	b.size.Store(size)
	return size, nil
}

// ReadAt reads len(p) bytes at off, with io.ReaderAt semantics: n < len(p)
// only with a non-nil error. A range outside [0, Size) fails with an error
// wrapping ErrOutOfBounds, without reading.
func (b *Backing) ReadAt(p []byte, off int64) (int, error) {
	if err := b.check("read", off, int64(len(p))); err != nil {
		return 0, err
	}
	if err := b.fault("read", off, int64(len(p))); err != nil {
		return 0, err
	}
	n, err := b.file.ReadAt(p, off)
	if err != nil {
		return n, fmt.Errorf("kmod: %w", err)
	}
	return n, nil
}

// WriteAt writes all of p at off, with io.WriterAt semantics: n < len(p)
// only with a non-nil error. A full file system fails with an error wrapping
// syscall.ENOSPC. A range outside [0, Size) fails with an error wrapping
// ErrOutOfBounds, without writing. The data is durable only after Sync.
// WriteAt does not keep p.
func (b *Backing) WriteAt(p []byte, off int64) (int, error) {
	if err := b.check("write", off, int64(len(p))); err != nil {
		return 0, err
	}
	if err := b.fault("write", off, int64(len(p))); err != nil {
		return 0, err
	}
	n, err := b.file.WriteAt(p, off)
	if err != nil {
		return n, fmt.Errorf("kmod: %w", err)
	}
	return n, nil
}

// WriteAtFUA writes all of p at off, as WriteAt, and makes it durable
// before it returns: one pwritev2 with RWF_DSYNC, which writes back and
// flushes only p's range (a FUA write), where WriteAt and Sync would
// write back every dirty page of the store. A failure of that call wraps
// ErrDurableWrite: it counts as a failed Sync; except a write that found
// no space, which fails as WriteAt would (with ENOSPC, EDQUOT or EFBIG),
// having flushed nothing.
func (b *Backing) WriteAtFUA(p []byte, off int64) (int, error) {
	if err := b.check("write", off, int64(len(p))); err != nil {
		return 0, err
	}
	if err := b.fault("write", off, int64(len(p))); err != nil {
		return 0, err
	}
	if b.noDSync.Load() {
		return b.writeThenSync(p, off)
	}
	done := 0
	err := b.control("pwritev2 RWF_DSYNC", func(fd int) error {
		for done < len(p) {
			n, err := unix.Pwritev2(fd, [][]byte{p[done:]}, off+int64(done), unix.RWF_DSYNC)
			if err != nil {
				return err
			}
			if n == 0 {
				return io.ErrUnexpectedEOF
			}
			done += n
		}
		return nil
	})
	if done == 0 && (errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS)) {
		b.noDSync.Store(true)
		return b.writeThenSync(p, off)
	}
	if err != nil && isNoSpace(err) {
		// The write, or its flush (a writeback error of any part of the
		// file), found no space: Linux does not say which. A write
		// refused for want of space flushed nothing, and writing the
		// same range again is refused again; after a failed flush the
		// range's pages are in the page cache, written, and writing them
		// again takes no new space. So a second, plain write tells the
		// two apart: refused, the failure is the write's own.
		if _, werr := b.file.WriteAt(p[done:], off+int64(done)); werr != nil && isNoSpace(werr) {
			return done, fmt.Errorf("kmod: %w", werr)
		}
	}
	if err != nil {
		return done, fmt.Errorf("%w: %w", ErrDurableWrite, err)
	}
	return done, nil
}

// isNoSpace reports whether err says that the store had no room for a
// write.
func isNoSpace(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) || errors.Is(err, syscall.EFBIG)
}

// writeThenSync is WriteAtFUA where the kernel has no RWF_DSYNC.
func (b *Backing) writeThenSync(p []byte, off int64) (int, error) {
	n, err := b.file.WriteAt(p, off)
	if err != nil {
		return n, fmt.Errorf("kmod: %w", err)
	}
	if err := b.control("fdatasync", unix.Fdatasync); err != nil {
		return n, fmt.Errorf("%w: %w", ErrDurableWrite, err)
	}
	return n, nil
}

// Sync makes every write that completed before the call durable
// (fdatasync).
func (b *Backing) Sync() error {
	if err := b.fault("fdatasync", 0, -1); err != nil {
		return err
	}
	return b.control("fdatasync", unix.Fdatasync)
}

// Punch tells the store that [off, off+length) is no longer needed: it
// deallocates the range of a file (which then reads as zeroes) and discards
// it on a block device (whose contents there are then unspecified: use
// WriteZeroes for zeroes). Where neither is supported it writes zeroes.
func (b *Backing) Punch(off, length int64) error {
	if err := b.check("punch", off, length); err != nil || length == 0 {
		return err
	}
	if err := b.fault("punch", off, length); err != nil {
		return err
	}
	if !b.blockDevice {
		err := b.fallocate("fallocate PUNCH_HOLE", unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, length)
		if isUnsupported(err) {
			return b.writeZeroChunks(off, length)
		}
		return err
	}
	// The partial sectors at the edges keep their data, which the contract
	// allows: a discarded range's contents are unspecified.
	start, end := b.sectorInterior(off, length)
	if start >= end {
		return nil
	}
	span := [2]uint64{uint64(start), uint64(end - start)}
	err := b.ioctl("ioctl BLKDISCARD", unix.BLKDISCARD, unsafe.Pointer(&span))
	if isUnsupported(err) {
		return b.writeZeroChunks(off, length)
	}
	return err
}

// WriteZeroes makes [off, off+length) read as zeroes and leaves it allocated:
// FALLOC_FL_ZERO_RANGE on files, BLKZEROOUT on block devices, and plain
// writes of zeroes (at most 1 MiB each) where those are not supported. Like
// WriteAt it fails with an error wrapping syscall.ENOSPC on a full file
// system and is durable only after Sync.
func (b *Backing) WriteZeroes(off, length int64) error {
	if err := b.check("write zeroes", off, length); err != nil || length == 0 {
		return err
	}
	if err := b.fault("write zeroes", off, length); err != nil {
		return err
	}
	if !b.blockDevice {
		err := b.fallocate("fallocate ZERO_RANGE", unix.FALLOC_FL_ZERO_RANGE|unix.FALLOC_FL_KEEP_SIZE, off, length)
		if isUnsupported(err) {
			return b.writeZeroChunks(off, length)
		}
		return err
	}
	start, end := b.sectorInterior(off, length)
	if start >= end {
		return b.writeZeroChunks(off, length)
	}
	span := [2]uint64{uint64(start), uint64(end - start)}
	err := b.ioctl("ioctl BLKZEROOUT", unix.BLKZEROOUT, unsafe.Pointer(&span))
	if isUnsupported(err) {
		return b.writeZeroChunks(off, length)
	}
	if err != nil {
		return err
	}
	// The partial sectors at the edges are written by hand.
	if err := b.writeZeroChunks(off, start-off); err != nil {
		return err
	}
	return b.writeZeroChunks(end, off+length-end)
}

// sectorInterior returns the largest sector-aligned range [start, end)
// inside [off, off+length); start >= end when there is none.
func (b *Backing) sectorInterior(off, length int64) (start, end int64) {
	start = (off + b.sectorSize - 1) / b.sectorSize * b.sectorSize
	end = (off + length) / b.sectorSize * b.sectorSize
	return start, end
}

// Close releases the lock and closes the store. It does not Sync.
func (b *Backing) Close() error {
	if err := b.file.Close(); err != nil {
		return fmt.Errorf("kmod: close backing store: %w", err)
	}
	return nil
}

// Region returns a view of [off, off+size) of the store; see NewRegion.
func (b *Backing) Region(off, size int64) *Region { return NewRegion(b, off, size) }

// check validates [off, off+length) against the store's size.
func (b *Backing) check(op string, off, length int64) error {
	if size := b.size.Load(); off < 0 || length < 0 || off > size || length > size-off {
		return fmt.Errorf("kmod: %s %s at [%d, +%d): size is %d: %w", op, b.path, off, length, size, ErrOutOfBounds)
	}
	return nil
}

// writeZeroChunks writes zeroes over [off, off+length) in bounded chunks.
func (b *Backing) writeZeroChunks(off, length int64) error {
	for length > 0 {
		chunk := min(length, zeroChunkSize)
		if _, err := b.file.WriteAt(zeroChunk[:chunk], off); err != nil {
			return fmt.Errorf("kmod: write zeroes: %w", err)
		}
		off += chunk
		length -= chunk
	}
	return nil
}

func (b *Backing) fallocate(op string, mode uint32, off, length int64) error {
	return b.control(op, func(fd int) error { return unix.Fallocate(fd, mode, off, length) })
}

// ioctl performs an ioctl whose argument is a pointer. x/sys/unix has no
// typed helper for the block-device requests used here.
func (b *Backing) ioctl(op string, request uint, arg unsafe.Pointer) error {
	return b.control(op, func(fd int) error {
		if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uintptr(request), uintptr(arg)); errno != 0 {
			return errno
		}
		return nil
	})
}

// control runs fn on the store's descriptor (kept open meanwhile) and wraps
// its error with op and the path, retrying on EINTR.
func (b *Backing) control(op string, fn func(fd int) error) error {
	raw, err := b.file.SyscallConn()
	if err != nil {
		return fmt.Errorf("kmod: %s %s: %w", op, b.path, err)
	}
	var opErr error
	if err := raw.Control(func(fd uintptr) {
		for {
			opErr = fn(int(fd))
			if opErr != unix.EINTR {
				return
			}
		}
	}); err != nil {
		// Control fails only when the file is closed (or closing); its
		// error is not os.ErrClosed itself, so say it plainly.
		return fmt.Errorf("kmod: %w", &fs.PathError{Op: op, Path: b.path, Err: os.ErrClosed})
	}
	if opErr != nil {
		return fmt.Errorf("kmod: %w", &fs.PathError{Op: op, Path: b.path, Err: opErr})
	}
	return nil
}

// isUnsupported reports whether err says that the file system or device
// cannot do the operation at all, as opposed to failing at it.
func isUnsupported(err error) bool {
	return errors.Is(err, syscall.EOPNOTSUPP) || errors.Is(err, syscall.ENOSYS) ||
		errors.Is(err, syscall.ENOTTY)
}
