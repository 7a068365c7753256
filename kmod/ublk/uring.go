package ublk

import (
	"errors"
	"fmt"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// io_uring's uapi (include/uapi/linux/io_uring.h), the part this package
// uses. Sizes and offsets are golden-tested in uapi_test.go.
const (
	opNop         = 0
	opPollAdd     = 6
	opAsyncCancel = 14
	opURingCmd    = 46

	setupSQE128 = 1 << 10

	enterGetEvents = 1 << 0

	offSQRing = 0
	offCQRing = 0x8000000
	offSQEs   = 0x10000000
)

// sqe is a 128-byte submission queue entry (IORING_SETUP_SQE128): the
// 64-byte struct io_uring_sqe whose last 16 bytes, cmd, run on into the
// 64 extra bytes. Only the fields this package sets are named.
type sqe struct {
	opcode   uint8
	flags    uint8
	ioprio   uint16
	fd       int32
	off      uint64 // cmd_op in its low 32 bits for IORING_OP_URING_CMD
	addr     uint64
	len      uint32
	opFlags  uint32 // poll32_events for IORING_OP_POLL_ADD
	userData uint64
	bufIndex uint16
	_        uint16
	_        int32
	cmd      [80]byte // the uring_cmd payload
}

// cqe is struct io_uring_cqe (16 bytes; IORING_SETUP_CQE32 is not used).
type cqe struct {
	userData uint64
	res      int32
	flags    uint32
}

type sqringOffsets struct {
	head, tail, ringMask, ringEntries, flags, dropped, array, resv1 uint32
	userAddr                                                        uint64
}

type cqringOffsets struct {
	head, tail, ringMask, ringEntries, overflow, cqes, flags, resv1 uint32
	userAddr                                                        uint64
}

// uringParams is struct io_uring_params.
type uringParams struct {
	sqEntries, cqEntries, flags, sqThreadCPU, sqThreadIdle, features, wqFD uint32
	resv                                                                   [3]uint32
	sqOff                                                                  sqringOffsets
	cqOff                                                                  cqringOffsets
}

// ring is one io_uring instance with 128-byte SQEs. It is not safe for
// concurrent use: one goroutine submits and reaps. SQ and CQ indices are
// read and written with sync/atomic, whose sequential consistency covers
// the acquire/release pairs the io_uring ABI asks for.
type ring struct {
	fd int

	sqMem, cqMem, sqeMem []byte

	sqHead, sqTail *uint32
	sqMask         uint32
	sqEntries      uint32
	sqArray        []uint32
	sqes           []sqe

	cqHead, cqTail *uint32
	cqMask         uint32
	cqes           []cqe

	// tail is the next SQ slot to fill; entries up to tail are published
	// to the kernel by flush.
	tail uint32
}

// newRing sets up an io_uring with at least entries submission slots.
func newRing(entries uint32) (*ring, error) {
	var p uringParams
	p.flags = setupSQE128
	fd, _, errno := unix.Syscall(unix.SYS_IO_URING_SETUP, uintptr(entries), uintptr(unsafe.Pointer(&p)), 0)
	if errno != 0 {
		return nil, fmt.Errorf("io_uring_setup: %w", errno)
	}
	r := &ring{fd: int(fd)}
	if err := r.mmap(&p); err != nil {
		r.close()
		return nil, err
	}
	return r, nil
}

func (r *ring) mmap(p *uringParams) error {
	var err error
	sqSize := int(p.sqOff.array) + int(p.sqEntries)*4
	cqSize := int(p.cqOff.cqes) + int(p.cqEntries)*int(unsafe.Sizeof(cqe{}))
	if r.sqMem, err = unix.Mmap(r.fd, offSQRing, sqSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE); err != nil {
		return fmt.Errorf("mmap io_uring SQ ring: %w", err)
	}
	if r.cqMem, err = unix.Mmap(r.fd, offCQRing, cqSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE); err != nil {
		return fmt.Errorf("mmap io_uring CQ ring: %w", err)
	}
	sqeSize := int(p.sqEntries) * int(unsafe.Sizeof(sqe{}))
	if r.sqeMem, err = unix.Mmap(r.fd, offSQEs, sqeSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE); err != nil {
		return fmt.Errorf("mmap io_uring SQEs: %w", err)
	}
	r.sqHead = (*uint32)(unsafe.Pointer(&r.sqMem[p.sqOff.head]))
	r.sqTail = (*uint32)(unsafe.Pointer(&r.sqMem[p.sqOff.tail]))
	r.sqMask = *(*uint32)(unsafe.Pointer(&r.sqMem[p.sqOff.ringMask]))
	r.sqEntries = p.sqEntries
	r.sqArray = unsafe.Slice((*uint32)(unsafe.Pointer(&r.sqMem[p.sqOff.array])), p.sqEntries)
	r.sqes = unsafe.Slice((*sqe)(unsafe.Pointer(&r.sqeMem[0])), p.sqEntries)
	r.cqHead = (*uint32)(unsafe.Pointer(&r.cqMem[p.cqOff.head]))
	r.cqTail = (*uint32)(unsafe.Pointer(&r.cqMem[p.cqOff.tail]))
	r.cqMask = *(*uint32)(unsafe.Pointer(&r.cqMem[p.cqOff.ringMask]))
	r.cqes = unsafe.Slice((*cqe)(unsafe.Pointer(&r.cqMem[p.cqOff.cqes])), p.cqEntries)
	r.tail = atomic.LoadUint32(r.sqTail)
	return nil
}

// errRingFull is returned by next when every SQ slot holds an entry the
// kernel has not consumed yet.
var errRingFull = errors.New("io_uring submission queue full")

// next returns a zeroed SQE in the next free slot. The entry is handed to
// the kernel by the next submit.
func (r *ring) next() (*sqe, error) {
	if r.tail-atomic.LoadUint32(r.sqHead) >= r.sqEntries {
		return nil, errRingFull
	}
	idx := r.tail & r.sqMask
	e := &r.sqes[idx]
	*e = sqe{}
	r.sqArray[idx] = idx
	r.tail++
	return e, nil
}

// pending is the number of filled SQEs the kernel has not consumed.
func (r *ring) pending() uint32 {
	atomic.StoreUint32(r.sqTail, r.tail)
	return r.tail - atomic.LoadUint32(r.sqHead)
}

// submit hands every filled SQE to the kernel and, if wait is positive,
// blocks until at least wait completions are in the CQ. EINTR is retried:
// a signal may interrupt the wait, and entries the kernel did not consume
// are submitted again.
func (r *ring) submit(wait uint32) error {
	for {
		n := r.pending()
		flags := uintptr(0)
		if wait > 0 {
			flags = enterGetEvents
		}
		if n == 0 && wait == 0 {
			return nil
		}
		_, _, errno := unix.Syscall6(unix.SYS_IO_URING_ENTER, uintptr(r.fd), uintptr(n), uintptr(wait), flags, 0, 0)
		switch errno {
		case 0:
			if r.pending() == 0 || wait > 0 {
				return nil
			}
		case unix.EINTR:
			if wait > 0 && r.ready() >= wait && r.pending() == 0 {
				return nil
			}
		default:
			return fmt.Errorf("io_uring_enter: %w", errno)
		}
	}
}

// ready is the number of completions waiting in the CQ.
func (r *ring) ready() uint32 {
	return atomic.LoadUint32(r.cqTail) - atomic.LoadUint32(r.cqHead)
}

// reap calls f for every completion in the CQ, in order, and frees their
// slots. It returns how many it handled.
func (r *ring) reap(f func(c cqe)) int {
	head := atomic.LoadUint32(r.cqHead)
	tail := atomic.LoadUint32(r.cqTail)
	for i := head; i != tail; i++ {
		f(r.cqes[i&r.cqMask])
	}
	atomic.StoreUint32(r.cqHead, tail)
	return int(tail - head)
}

// waitReadable waits until the CQ has a completion or d passes; it
// reports whether a completion is there. It lets a goroutine that may
// have to give up (a control command under a deadline) wait without
// blocking in io_uring_enter.
func (r *ring) waitReadable(d time.Duration) (bool, error) {
	if r.ready() > 0 {
		return true, nil
	}
	ms := int(d / time.Millisecond)
	if ms < 1 {
		ms = 1
	}
	fds := []unix.PollFd{{Fd: int32(r.fd), Events: unix.POLLIN}}
	if _, err := unix.Poll(fds, ms); err != nil && !errors.Is(err, unix.EINTR) {
		return false, fmt.Errorf("poll io_uring: %w", err)
	}
	return r.ready() > 0, nil
}

// close unmaps the rings and closes the io_uring. The kernel cancels the
// requests still in flight on it.
func (r *ring) close() {
	for _, m := range [][]byte{r.sqeMem, r.cqMem, r.sqMem} {
		if m != nil {
			unix.Munmap(m)
		}
	}
	r.sqeMem, r.cqMem, r.sqMem = nil, nil, nil
	if r.fd >= 0 {
		unix.Close(r.fd)
		r.fd = -1
	}
}
