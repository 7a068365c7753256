// Package ring is the shared-memory data plane of transport plugins whose
// streams have no kernel socket to hand over: one single-producer,
// single-consumer byte ring per channel and direction, in a memfd both
// processes map, with two eventfd doorbells (data arrived, space freed).
//
// A ring is a 4 KiB header and Size bytes of data. The header holds the
// consumer's position (head), the producer's (tail), each side's waiting
// flag and each side's closed flag, at separate cache lines. The producer
// copies bytes in and advances tail; the consumer copies out and advances
// head. A side that finds nothing to do sets its waiting flag, looks
// again, and sleeps on its doorbell; the other side rings it after moving
// its position if the flag is set. Each side stores (its flag, its
// position) and then loads what the other side stores: this loses no
// wake-up only if the store cannot be ordered after the load, for then
// either the sleeper sees the new position or the other side sees the
// flag. Those stores are atomic swaps, not atomic stores: the language
// makes both sequentially consistent, but under the race detector a
// store is only a release store, which x86 lets a later load overtake, and
// the ring then lost wake-ups (both sides asleep; TestNoLostWakeup). A
// swap is a locked instruction, a full barrier in every build. Spurious
// rings only cost a loop. A side sleeps
// at once, without polling the ring first: on an oversubscribed machine a
// poller holds the core the other process needs to make progress, and
// polling measured no gain (docs/plugins.md, Measured).
//
// Closing: the producer's CloseWrite lets the consumer drain what is left
// and then read io.EOF; the consumer's CloseRead makes the producer's
// writes fail. Abort does both at once from either side and wakes any
// local goroutine blocked on the ring.
package ring

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	headerSize = 4096
	offHead    = 0
	offTail    = 64
	offCWait   = 128 // consumer waits for data
	offPWait   = 192 // producer waits for space
	offWClosed = 256 // producer closed (EOF after the data)
	offRClosed = 320 // consumer closed (writes fail)
	offSize    = 384
)

// ErrClosed is wrapped by errors of a ring the other side stopped reading.
var ErrClosed = errors.New("ring closed by the other side")

// Ring is one side's view of a ring: the producer's or the consumer's.
type Ring struct {
	mem       []byte
	data      []byte
	size      uint64
	dataBell  *os.File // rung by the producer
	spaceBell *os.File // rung by the consumer

	// The mapping is released when the ring is aborted and no Read or
	// Write runs: unmapping under a running call would crash the process.
	mu      sync.Mutex
	users   int
	aborted bool
}

// Files are the descriptors that make a ring: what one side creates and
// hands to the other.
type Files struct {
	Mem, DataBell, SpaceBell *os.File
}

// List returns the files in hand-off order.
func (f Files) List() []*os.File { return []*os.File{f.Mem, f.DataBell, f.SpaceBell} }

// FilesFrom takes a ring's files in hand-off order.
func FilesFrom(fs []*os.File) Files { return Files{Mem: fs[0], DataBell: fs[1], SpaceBell: fs[2]} }

// Close closes the files.
func (f Files) Close() {
	for _, file := range f.List() {
		if file != nil {
			file.Close()
		}
	}
}

// Create makes a new ring of size bytes (a power of two) and returns its
// files.
func Create(size int) (Files, error) {
	if size <= 0 || size&(size-1) != 0 {
		return Files{}, fmt.Errorf("ring size %d is not a power of two", size)
	}
	mfd, err := unix.MemfdCreate("georepl-ring", unix.MFD_CLOEXEC)
	if err != nil {
		return Files{}, fmt.Errorf("memfd: %w", err)
	}
	f := Files{Mem: os.NewFile(uintptr(mfd), "georepl-ring")}
	if err := unix.Ftruncate(mfd, int64(headerSize+size)); err != nil {
		f.Close()
		return Files{}, fmt.Errorf("memfd size: %w", err)
	}
	for _, bell := range []**os.File{&f.DataBell, &f.SpaceBell} {
		fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
		if err != nil {
			f.Close()
			return Files{}, fmt.Errorf("eventfd: %w", err)
		}
		*bell = os.NewFile(uintptr(fd), "georepl-ring-bell")
	}
	mem, err := unix.Mmap(int(f.Mem.Fd()), 0, headerSize+size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		f.Close()
		return Files{}, fmt.Errorf("mmap: %w", err)
	}
	atomic.StoreUint64(u64(mem, offSize), uint64(size))
	unix.Munmap(mem)
	return f, nil
}

func u64(mem []byte, off int) *uint64 { return (*uint64)(unsafe.Pointer(&mem[off])) }
func u32(mem []byte, off int) *uint32 { return (*uint32)(unsafe.Pointer(&mem[off])) }

// Open maps the ring of f. The Ring keeps duplicates of the doorbells;
// the caller keeps f and closes it.
func Open(f Files) (*Ring, error) {
	st, err := f.Mem.Stat()
	if err != nil {
		return nil, err
	}
	total := st.Size()
	if total <= headerSize || total > headerSize+1<<30 {
		return nil, fmt.Errorf("ring of %d bytes", total)
	}
	mem, err := unix.Mmap(int(f.Mem.Fd()), 0, int(total), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("mmap: %w", err)
	}
	size := atomic.LoadUint64(u64(mem, offSize))
	if size == 0 || size&(size-1) != 0 || int64(size)+headerSize != total {
		unix.Munmap(mem)
		return nil, fmt.Errorf("ring header says %d bytes of data in a %d-byte memfd", size, total)
	}
	r := &Ring{mem: mem, data: mem[headerSize:], size: size}
	if r.dataBell, err = dupBell(f.DataBell); err == nil {
		r.spaceBell, err = dupBell(f.SpaceBell)
	}
	if err != nil {
		r.release()
		return nil, err
	}
	return r, nil
}

// dupBell duplicates an eventfd as a non-blocking file that the runtime's
// poller serves, so that a goroutine waiting on it holds no thread.
func dupBell(f *os.File) (*os.File, error) {
	raw, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	fd, dupErr := -1, error(nil)
	if err := raw.Control(func(orig uintptr) { fd, dupErr = unix.FcntlInt(orig, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return nil, err
	}
	if dupErr != nil {
		return nil, dupErr
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return os.NewFile(uintptr(fd), "georepl-ring-bell"), nil
}

func ring(bell *os.File) {
	var one [8]byte
	one[0] = 1 // little-endian 1 on every architecture georepl builds for
	bell.Write(one[:])
}

// wait sleeps until bell rings.
func wait(bell *os.File) error {
	var b [8]byte
	_, err := bell.Read(b[:])
	return err
}

func (r *Ring) head() *uint64    { return u64(r.mem, offHead) }
func (r *Ring) tail() *uint64    { return u64(r.mem, offTail) }
func (r *Ring) cWait() *uint32   { return u32(r.mem, offCWait) }
func (r *Ring) pWait() *uint32   { return u32(r.mem, offPWait) }
func (r *Ring) wClosed() *uint32 { return u32(r.mem, offWClosed) }
func (r *Ring) rClosed() *uint32 { return u32(r.mem, offRClosed) }

func errAborted(op string) error { return fmt.Errorf("ring %s: %w", op, net.ErrClosed) }

// enter starts a call on the ring; it fails once the ring is aborted.
func (r *Ring) enter() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.aborted {
		return false
	}
	r.users++
	return true
}

// leave ends a call, releasing the ring if it was the last after Abort.
func (r *Ring) leave() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.users--
	if r.aborted && r.users == 0 {
		r.release()
	}
}

func (r *Ring) isAborted() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.aborted
}

// Write copies p into the ring, waiting for space as needed. It fails once
// the consumer closed the ring or this side aborted it.
func (r *Ring) Write(p []byte) (int, error) {
	if !r.enter() {
		return 0, errAborted("write")
	}
	defer r.leave()
	written := 0
	for len(p) > 0 {
		if r.isAborted() {
			return written, errAborted("write")
		}
		if atomic.LoadUint32(r.rClosed()) != 0 {
			return written, fmt.Errorf("ring write: %w", ErrClosed)
		}
		head, tail := atomic.LoadUint64(r.head()), atomic.LoadUint64(r.tail())
		free := r.size - (tail - head)
		if free == 0 {
			atomic.SwapUint32(r.pWait(), 1)
			if atomic.LoadUint64(r.head()) == head && atomic.LoadUint32(r.rClosed()) == 0 && !r.isAborted() {
				if err := wait(r.spaceBell); err != nil {
					return written, errAborted("write")
				}
			}
			atomic.StoreUint32(r.pWait(), 0)
			continue
		}
		n := int(min(free, uint64(len(p))))
		at := tail & (r.size - 1)
		c := copy(r.data[at:], p[:n])
		copy(r.data, p[c:n])
		atomic.SwapUint64(r.tail(), tail+uint64(n))
		if atomic.LoadUint32(r.cWait()) != 0 {
			ring(r.dataBell)
		}
		p, written = p[n:], written+n
	}
	return written, nil
}

// Read copies what the ring holds into p, waiting for data if it holds
// none. After the producer's CloseWrite it returns io.EOF once drained.
func (r *Ring) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if !r.enter() {
		return 0, errAborted("read")
	}
	defer r.leave()
	for {
		if r.isAborted() {
			return 0, errAborted("read")
		}
		head, tail := atomic.LoadUint64(r.head()), atomic.LoadUint64(r.tail())
		if avail := tail - head; avail > 0 {
			n := int(min(avail, uint64(len(p))))
			at := head & (r.size - 1)
			c := copy(p[:n], r.data[at:])
			copy(p[c:n], r.data)
			atomic.SwapUint64(r.head(), head+uint64(n))
			if atomic.LoadUint32(r.pWait()) != 0 {
				ring(r.spaceBell)
			}
			return n, nil
		}
		if atomic.LoadUint32(r.wClosed()) != 0 {
			if atomic.LoadUint64(r.tail()) != tail {
				continue // written just before the close
			}
			return 0, io.EOF
		}
		atomic.SwapUint32(r.cWait(), 1)
		if atomic.LoadUint64(r.tail()) == tail && atomic.LoadUint32(r.wClosed()) == 0 && !r.isAborted() {
			if err := wait(r.dataBell); err != nil {
				return 0, errAborted("read")
			}
		}
		atomic.StoreUint32(r.cWait(), 0)
	}
}

// CloseWrite is the producer's end of stream: the consumer reads what is
// left, then io.EOF.
func (r *Ring) CloseWrite() {
	if r.enter() {
		defer r.leave()
		atomic.StoreUint32(r.wClosed(), 1)
		ring(r.dataBell)
	}
}

// CloseRead is the consumer's: the producer's writes fail from now on.
func (r *Ring) CloseRead() {
	if r.enter() {
		defer r.leave()
		atomic.StoreUint32(r.rClosed(), 1)
		ring(r.spaceBell)
	}
}

// Abort closes the ring both ways and wakes every goroutine waiting on it,
// here (whose calls return errors wrapping net.ErrClosed) and on the other
// side. The mapping goes once the last call here has returned.
func (r *Ring) Abort() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.aborted {
		return
	}
	r.aborted = true
	atomic.StoreUint32(r.wClosed(), 1)
	atomic.StoreUint32(r.rClosed(), 1)
	ring(r.dataBell)
	ring(r.spaceBell)
	if r.users == 0 {
		r.release()
	}
}

// release unmaps the ring and closes its doorbells.
func (r *Ring) release() {
	if r.dataBell != nil {
		r.dataBell.Close()
	}
	if r.spaceBell != nil {
		r.spaceBell.Close()
	}
	unix.Munmap(r.mem)
}
