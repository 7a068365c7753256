package ublk

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"sync"
	"syscall"
	"unsafe"

	"github.com/georepl/georepl/kmod/nbd"
	"golang.org/x/sys/unix"
)

// wakeTag is the user_data of the eventfd poll in a queue's ring; tags are
// 16-bit, so it cannot collide with one.
const wakeTag = 1 << 32

// queue serves one hardware queue of a ublk device. Its loop runs on one
// locked OS thread for its whole life: the driver binds a queue to the
// task that fetched its tags and refuses commits from any other.
//
// A tag is in one of three states: fetched (the driver holds a FETCH or
// COMMIT_AND_FETCH for it and will complete it with the next request),
// served (a request is being handled by the Device), or dead (the driver
// completed it with UBLK_IO_RES_ABORT or an error; it is not fetched
// again). The loop ends when every tag is dead, or at once when forced.
//
// A write to an nbd.AsyncWriter, or a flush of an nbd.AsyncFlusher, is
// started on the loop's thread and completes later (complete, from
// whatever goroutine the Device finishes it on); other requests run in a
// goroutine of their own.
type queue struct {
	id     uint16
	depth  int
	maxIO  int
	charFD int
	legacy bool
	dev    nbd.Device
	size   uint64
	log    *slog.Logger
	ctx    context.Context // of Device calls; cancelled when forced

	// The Device's optional abilities, nil where it has none (setDevice).
	async   nbd.AsyncWriter
	flusher nbd.AsyncFlusher
	buffers nbd.WriteBuffers

	ring  *ring
	descs []byte // the driver's io descriptors, mapped read-only
	// bufs holds each tag's data buffer (tag t at t*maxIO). It is Go
	// memory, which does not move; the driver copies into and out of it
	// while the loop's thread is in io_uring_enter.
	bufs []byte
	efd  int

	mu   sync.Mutex
	done []completion // served tags whose result waits to be committed
	// sleeping is set while the loop waits in io_uring_enter with
	// nothing to commit: the first completion then wakes it through the
	// eventfd. A completion while the loop is awake needs no wake-up;
	// the loop looks at done before it waits again.
	sleeping bool
	forced   bool
	exited   bool // the loop is gone; results are dropped

	served  int          // loop-private counts
	dead    int          //
	spare   []completion // loop-private: done's other backing array
	arrived []uint16     // loop-private: the tags of a batch's new requests
}

type completion struct {
	tag uint16
	res int32
}

func maxCmdBufSize() int {
	return roundUp(maxQueueDepth*int(unsafe.Sizeof(ioDesc{})), unix.Getpagesize())
}

func roundUp(n, to int) int { return (n + to - 1) / to * to }

// newQueue maps queue id's descriptors; the ring is made by run.
func newQueue(id uint16, charFD int, depth, maxIO int) (*queue, error) {
	q := &queue{id: id, depth: depth, maxIO: maxIO, charFD: charFD, efd: -1}
	size := roundUp(depth*int(unsafe.Sizeof(ioDesc{})), unix.Getpagesize())
	var err error
	q.descs, err = unix.Mmap(charFD, int64(cmdBufOffset+int(id)*maxCmdBufSize()), size, unix.PROT_READ, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return nil, fmt.Errorf("mmap io descriptors of queue %d: %w", id, err)
	}
	q.efd, err = unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		unix.Munmap(q.descs)
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	q.bufs = make([]byte, depth*maxIO)
	return q, nil
}

func (q *queue) buf(tag uint16) []byte {
	return q.bufs[int(tag)*q.maxIO : (int(tag)+1)*q.maxIO]
}

func (q *queue) desc(tag uint16) ioDesc {
	return *(*ioDesc)(unsafe.Pointer(&q.descs[int(tag)*int(unsafe.Sizeof(ioDesc{}))]))
}

// run is the queue's goroutine. It reports on fetched once every tag's
// FETCH_REQ is submitted (START_DEV waits for that), or why it could not.
func (q *queue) run(fetched chan<- error) {
	runtime.LockOSThread()
	// Never unlocked: the thread exits with the goroutine, so the task
	// the driver tied the queue to dies with it, and the driver's
	// timeout handler then fails what the queue still held.
	err := q.start()
	fetched <- err
	if err == nil {
		err = q.loop()
		if err != nil {
			q.log.Error("ublk queue stopped", "queue", q.id, "err", err)
		}
	}
	q.mu.Lock()
	q.exited = true
	unix.Close(q.efd)
	q.mu.Unlock()
	if q.ring != nil {
		q.ring.close()
	}
}

func (q *queue) start() error {
	var err error
	if q.ring, err = newRing(uint32(q.depth + 1)); err != nil {
		return err
	}
	for tag := range q.depth {
		if err := q.prep(ioFetchReq, uint16(tag), 0); err != nil {
			return err
		}
	}
	if err := q.armWake(); err != nil {
		return err
	}
	return q.ring.submit(0)
}

// prep queues a FETCH_REQ or COMMIT_AND_FETCH_REQ for tag.
func (q *queue) prep(op uint32, tag uint16, res int32) error {
	e, err := q.ring.next()
	if err != nil {
		return err
	}
	if q.legacy {
		op = legacy(op)
	}
	e.opcode = opURingCmd
	e.fd = int32(q.charFD)
	e.off = uint64(op)
	e.userData = uint64(tag)
	*(*ioCmd)(unsafe.Pointer(&e.cmd[0])) = ioCmd{
		qID:    q.id,
		tag:    tag,
		result: res,
		addr:   uint64(uintptr(unsafe.Pointer(&q.buf(tag)[0]))),
	}
	return nil
}

// armWake polls the eventfd that served requests write to.
func (q *queue) armWake() error {
	e, err := q.ring.next()
	if err != nil {
		return err
	}
	e.opcode = opPollAdd
	e.fd = int32(q.efd)
	e.opFlags = unix.POLLIN
	e.userData = wakeTag
	return nil
}

func (q *queue) loop() error {
	armed := true
	for {
		var failed error
		q.ring.reap(func(c cqe) {
			switch {
			case c.userData == wakeTag:
				armed = false
				var b [8]byte
				unix.Read(q.efd, b[:])
			case c.res == ioResOK:
				q.served++
				q.arrived = append(q.arrived, uint16(c.userData))
			case c.res == ioResAbort:
				q.dead++
			default:
				q.dead++
				if failed == nil {
					failed = fmt.Errorf("tag %d: driver answered %d", uint16(c.userData), c.res)
				}
			}
		})
		if failed != nil {
			q.log.Error("ublk queue: a tag failed", "queue", q.id, "err", failed)
		}
		// The last request to arrive may start on this thread; those
		// before it each get a goroutine, so that a write that waits for
		// the disk does not hold up the others (see dispatch).
		for i, tag := range q.arrived {
			q.dispatch(tag, q.desc(tag), i == len(q.arrived)-1)
		}
		q.arrived = q.arrived[:0]

		q.mu.Lock()
		done := q.done
		q.done = q.spare[:0]
		forced := q.forced
		q.mu.Unlock()
		if forced {
			return nil
		}
		for _, d := range done {
			q.served--
			if err := q.prep(ioCommitAndFetchReq, d.tag, d.res); err != nil {
				return err
			}
		}
		q.spare = done[:0]
		if q.dead == q.depth && q.served == 0 {
			return nil
		}
		if !armed {
			if err := q.armWake(); err != nil {
				return err
			}
			armed = true
		}
		// Wait for the driver or a completion, unless a completion came
		// meanwhile: then only submit, and commit it at once.
		q.mu.Lock()
		wait := len(q.done) == 0 && !q.forced
		q.sleeping = wait
		q.mu.Unlock()
		var err error
		if wait {
			err = q.ring.submit(1)
			q.mu.Lock()
			q.sleeping = false
			q.mu.Unlock()
		} else {
			err = q.ring.submit(0)
		}
		if err != nil {
			return err
		}
	}
}

// dispatch starts the request that the driver handed over in tag. A
// write to an AsyncWriter or a flush of an AsyncFlusher is started with
// WriteAsync or FlushAsync, on the loop's thread if inline (it returns
// once the Device has started it), else in a goroutine that ends when
// they return; anything else runs in a goroutine of its own. Either way
// its result reaches the loop through complete.
//
// Only a request that arrived alone (the last of the batch the driver
// completed) runs inline, as the NBD server runs a request inline only
// when nothing more is buffered: at queue depth 1 that spares waking
// another thread, twice per request, while a batch's writes still reach
// the disk in parallel (the Device writes the local disk before
// WriteAsync returns, a FUA write durably).
func (q *queue) dispatch(tag uint16, d ioDesc, inline bool) {
	op := d.op()
	if !inline && (op == ioOpWrite && q.async != nil || op == ioOpFlush && q.flusher != nil) {
		go q.begin(tag, d)
		return
	}
	q.begin(tag, d)
}

// begin is dispatch's work: see there.
func (q *queue) begin(tag uint16, d ioDesc) {
	switch op := d.op(); {
	case op == ioOpWrite && q.async != nil:
		if res, ok := q.check(d); !ok || d.bytes() == 0 {
			q.complete(tag, res)
			return
		}
		off, n := d.off(), d.bytes()
		q.async.WriteAsync(q.ctx, q.payload(q.buf(tag), n), off, d.fua(), func(err error) {
			q.complete(tag, q.result(op, off, n, err))
		})
	case op == ioOpFlush && q.flusher != nil:
		q.flusher.FlushAsync(q.ctx, func(err error) {
			q.complete(tag, q.result(op, 0, 0, err))
		})
	default:
		go q.serve(tag, d)
	}
}

// serve runs one request against the Device and hands its result to the
// loop.
func (q *queue) serve(tag uint16, d ioDesc) {
	q.complete(tag, q.execute(q.buf(tag), d))
}

// complete hands tag's result to the loop, waking it if it waits. It
// never blocks for long: a Device's completion may call it from a
// goroutine that serves others.
func (q *queue) complete(tag uint16, res int32) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.exited {
		return
	}
	q.done = append(q.done, completion{tag, res})
	if q.sleeping {
		q.sleeping = false
		var one = [8]byte{1}
		unix.Write(q.efd, one[:])
	}
}

// setDevice makes dev the queue's Device, with its optional abilities.
func (q *queue) setDevice(dev nbd.Device) {
	q.dev = dev
	q.async, _ = dev.(nbd.AsyncWriter)
	q.flusher, _ = dev.(nbd.AsyncFlusher)
	q.buffers, _ = dev.(nbd.WriteBuffers)
}

// payload returns a copy of the first n bytes of buf, a tag's buffer, for
// the Device to keep: in a buffer of the Device's own (nbd.WriteBuffers,
// which it recycles) if it offers them, else fresh memory.
func (q *queue) payload(buf []byte, n uint64) []byte {
	var p []byte
	if q.buffers != nil {
		p = q.buffers.WriteBuffer(int(n))
	} else {
		p = make([]byte, n)
	}
	copy(p, buf[:n])
	return p
}

// check checks d against the tag's buffer and the device's size; if it
// is not a request to carry out, ok is false and res the result to
// commit.
func (q *queue) check(d ioDesc) (res int32, ok bool) {
	off, n := d.off(), d.bytes()
	op := d.op()
	if op == ioOpRead || op == ioOpWrite {
		if n > uint64(q.maxIO) {
			return -int32(unix.EINVAL), false
		}
	}
	if op != ioOpFlush && (off > q.size || n > q.size-off) {
		return -int32(unix.EINVAL), false
	}
	return 0, true
}

// execute performs d on the Device, with buf the tag's data buffer, and
// returns the result to commit: the byte count of a read or write, 0, or a
// negative errno.
func (q *queue) execute(buf []byte, d ioDesc) int32 {
	if res, ok := q.check(d); !ok {
		return res
	}
	off, n := d.off(), d.bytes()
	op := d.op()
	var err error
	switch op {
	case ioOpRead:
		err = q.dev.ReadAt(q.ctx, buf[:n], off)
	case ioOpWrite:
		// The Device may keep what WriteAt is given; the tag's buffer is
		// reused by the next request.
		err = q.dev.WriteAt(q.ctx, q.payload(buf, n), off, d.fua())
	case ioOpFlush:
		err = q.dev.Flush(q.ctx)
	case ioOpDiscard:
		err = q.dev.Trim(q.ctx, off, n)
	case ioOpWriteZeroes:
		err = q.dev.WriteZeroes(q.ctx, off, n, d.fua())
	default:
		return -int32(unix.EOPNOTSUPP)
	}
	return q.result(op, off, n, err)
}

// result is the result to commit for a request of op on [off, +n) that
// the Device ended with err.
func (q *queue) result(op uint8, off, n uint64, err error) int32 {
	if err != nil {
		errno, expected := errnoFor(err)
		// After a forced stop the Device's context is cancelled; its
		// errors then say nothing new.
		if !expected && q.ctx.Err() == nil {
			q.log.Error("ublk request failed", "op", opName(op), "off", off, "len", n, "err", err)
		}
		return -int32(errno)
	}
	if op == ioOpRead || op == ioOpWrite {
		return int32(n)
	}
	return 0
}

// force makes the loop return at its next wakeup, leaving the requests it
// holds to the driver's cancellation.
func (q *queue) force() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.forced = true
	if !q.exited {
		var one = [8]byte{1}
		unix.Write(q.efd, one[:])
	}
}

// errnoFor maps a Device's error to the errno the kernel is told, as the
// NBD server does. The second result is false for errors to log.
func errnoFor(err error) (syscall.Errno, bool) {
	var ce *nbd.ClientError
	switch {
	case errors.As(err, &ce) && ce.Errno != 0:
		// NBD's errno values are Linux's.
		return syscall.Errno(ce.Errno), true
	case errors.Is(err, nbd.ErrReadOnly):
		return unix.EPERM, true
	case errors.Is(err, nbd.ErrOutOfRange):
		return unix.EINVAL, true
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT), errors.Is(err, syscall.EFBIG):
		return unix.ENOSPC, true
	}
	return unix.EIO, false
}

func opName(op uint8) string {
	switch op {
	case ioOpRead:
		return "read"
	case ioOpWrite:
		return "write"
	case ioOpFlush:
		return "flush"
	case ioOpDiscard:
		return "discard"
	case ioOpWriteSame:
		return "write-same"
	case ioOpWriteZeroes:
		return "write-zeroes"
	}
	return fmt.Sprintf("op %d", op)
}
