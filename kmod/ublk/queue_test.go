package ublk

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"unsafe"

	"github.com/georepl/georepl/kmod/nbd"
	"golang.org/x/sys/unix"
)

func testQueue(dev nbd.Device, log *bytes.Buffer) *queue {
	q := &queue{
		size:  dev.Size(),
		maxIO: 64 << 10,
		ctx:   context.Background(),
		log:   slog.New(slog.NewTextHandler(log, nil)),
		efd:   -1,
	}
	q.setDevice(dev)
	return q
}

// TestExecute runs requests as the queue loop hands them over, without the
// driver: what reaches the Device and what result is committed.
func TestExecute(t *testing.T) {
	mem := newMemDevice(1 << 20)
	var log bytes.Buffer
	q := testQueue(mem, &log)
	buf := make([]byte, q.maxIO)

	copy(buf, bytes.Repeat([]byte{0xab}, 8192))
	if res := q.execute(buf, ioDesc{opFlags: ioOpWrite | ioFlagFUA, nrSectors: 16, startSector: 8}); res != 8192 {
		t.Fatalf("write: result %d, want 8192", res)
	}
	// The Device got a copy: reusing the tag buffer does not change what
	// it kept.
	clear(buf)
	if kept := mem.keptBuffers[0]; len(kept) != 8192 || kept[0] != 0xab || &kept[0] == &buf[0] {
		t.Fatal("WriteAt was not given a private copy of the data")
	}
	if mem.fuaWrites != 1 {
		t.Errorf("FUA flag not passed on")
	}

	if res := q.execute(buf, ioDesc{opFlags: ioOpRead, nrSectors: 16, startSector: 8}); res != 8192 {
		t.Fatalf("read: result %d, want 8192", res)
	}
	if !bytes.Equal(buf[:8192], bytes.Repeat([]byte{0xab}, 8192)) {
		t.Fatal("read did not fill the tag buffer")
	}

	for _, c := range []struct {
		name string
		d    ioDesc
		want int32
	}{
		{"flush", ioDesc{opFlags: ioOpFlush}, 0},
		{"discard", ioDesc{opFlags: ioOpDiscard, nrSectors: 8, startSector: 8}, 0},
		{"write zeroes", ioDesc{opFlags: ioOpWriteZeroes, nrSectors: 8, startSector: 16}, 0},
		{"write same", ioDesc{opFlags: ioOpWriteSame, nrSectors: 8}, -int32(unix.EOPNOTSUPP)},
		{"read larger than the buffer", ioDesc{opFlags: ioOpRead, nrSectors: 256}, -int32(unix.EINVAL)},
		{"read past the end", ioDesc{opFlags: ioOpRead, nrSectors: 8, startSector: 2048}, -int32(unix.EINVAL)},
		{"discard past the end", ioDesc{opFlags: ioOpDiscard, nrSectors: 16, startSector: 2040}, -int32(unix.EINVAL)},
	} {
		if res := q.execute(buf, c.d); res != c.want {
			t.Errorf("%s: result %d, want %d", c.name, res, c.want)
		}
	}
	if mem.flushes != 1 || mem.trims != 1 || mem.zeroes != 1 {
		t.Errorf("flushes %d trims %d zeroes %d, want one each", mem.flushes, mem.trims, mem.zeroes)
	}
	if log.Len() != 0 {
		t.Errorf("unexpected log: %s", log.String())
	}
}

func TestErrnoMapping(t *testing.T) {
	for _, c := range []struct {
		err    error
		want   syscall.Errno
		logged bool
	}{
		{nbd.ErrReadOnly, unix.EPERM, false},
		{fmt.Errorf("resource r0: %w", nbd.ErrReadOnly), unix.EPERM, false},
		{nbd.ErrOutOfRange, unix.EINVAL, false},
		{fmt.Errorf("backing: %w", syscall.ENOSPC), unix.ENOSPC, false},
		{syscall.EDQUOT, unix.ENOSPC, false},
		{syscall.EFBIG, unix.ENOSPC, false},
		{&nbd.ClientError{Errno: nbd.ESHUTDOWN, Err: errors.New("demoted")}, unix.ESHUTDOWN, false},
		{&nbd.ClientError{Err: errors.New("zero errno")}, unix.EIO, true},
		{io.ErrUnexpectedEOF, unix.EIO, true},
	} {
		mem := newMemDevice(1 << 20)
		mem.fail = c.err
		var log bytes.Buffer
		q := testQueue(mem, &log)
		res := q.execute(make([]byte, q.maxIO), ioDesc{opFlags: ioOpWrite, nrSectors: 8})
		if res != -int32(c.want) {
			t.Errorf("%v: result %d, want -%d (%v)", c.err, res, int(c.want), c.want)
		}
		if logged := strings.Contains(log.String(), "ublk request failed"); logged != c.logged {
			t.Errorf("%v: logged %v, want %v: %s", c.err, logged, c.logged, log.String())
		}
	}
}

func TestOptions(t *testing.T) {
	o, err := Options{}.validate()
	if err != nil || o.Queues != 1 || o.Depth != DefaultDepth || o.MaxIO != DefaultMaxIO || o.LogicalBlockSize != 512 || o.StopTimeout == 0 || o.Logger == nil {
		t.Fatalf("defaults: %+v, %v", o, err)
	}
	for _, bad := range []Options{
		{Queues: -1},
		{Depth: maxQueueDepth + 1},
		{MaxIO: 1000},
		{MaxIO: MaxMaxIO + 4096},
		{Depth: 4096, MaxIO: MaxMaxIO},
		{Path: "/dev/nbd0"},
		{Path: "/dev/ublkbX"},
		{StopTimeout: -1},
		{LogicalBlockSize: 256},
		{LogicalBlockSize: 1536},
		{LogicalBlockSize: 8192},
	} {
		if _, err := bad.validate(); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
	if n, err := devNumber("/dev/ublkb12"); err != nil || n != 12 {
		t.Errorf("devNumber(/dev/ublkb12) = %d, %v", n, err)
	}
}

// TestUnavailable: without the driver, Start says so with ErrUnavailable.
func TestUnavailable(t *testing.T) {
	if Available() {
		t.Skip("this kernel has ublk")
	}
	_, err := Start(context.Background(), newMemDevice(1<<20), Options{})
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Start without ublk_drv: %v, want ErrUnavailable", err)
	}
	t.Log(err)
}

// TestDispatchAsync: the loop starts a write to an AsyncWriter, and a
// flush of an AsyncFlusher, that arrived alone before dispatch returns,
// with the data in a buffer of the Device's; the result reaches done when the Device
// completes it, and wakes the loop through the eventfd only if it sleeps.
func TestDispatchAsync(t *testing.T) {
	am := newAsyncMem(1 << 20)
	var log bytes.Buffer
	q := testQueue(am, &log)
	q.depth = 4
	q.bufs = make([]byte, q.depth*q.maxIO)
	efd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(efd)
	q.efd = efd
	wakes := func() uint64 {
		var b [8]byte
		if n, _ := unix.Read(efd, b[:]); n != 8 {
			return 0
		}
		return *(*uint64)(unsafe.Pointer(&b[0]))
	}
	results := func() map[uint16]int32 {
		q.mu.Lock()
		defer q.mu.Unlock()
		m := map[uint16]int32{}
		for _, c := range q.done {
			m[c.tag] = c.res
		}
		q.done = nil
		return m
	}
	waitResult := func(tag uint16) int32 {
		for {
			if res, ok := results()[tag]; ok {
				return res
			}
			runtime.Gosched()
		}
	}

	// Two writes: the asyncMem completes the first later, on another
	// goroutine, and the second before WriteAsync returns. The loop
	// sleeps for the first, not for the second.
	for tag, c := range []struct {
		fill     byte
		sleeping bool
	}{{0x11, true}, {0x22, false}} {
		copy(q.buf(uint16(tag)), bytes.Repeat([]byte{c.fill}, 8192))
		q.mu.Lock()
		q.sleeping = c.sleeping
		q.mu.Unlock()
		before := am.async.Load()
		q.dispatch(uint16(tag), ioDesc{opFlags: ioOpWrite | ioFlagFUA, nrSectors: 16, startSector: uint64(tag) * 16}, true)
		if am.async.Load() != before+1 {
			t.Fatalf("write %d was not started before dispatch returned", tag)
		}
		clear(q.buf(uint16(tag))) // the tag's buffer is the driver's again
		if res := waitResult(uint16(tag)); res != 8192 {
			t.Fatalf("write %d: result %d, want 8192", tag, res)
		}
		if got := am.snapshot(tag*8192, 8192); !bytes.Equal(got, bytes.Repeat([]byte{c.fill}, 8192)) {
			t.Fatalf("write %d: the Device holds other data", tag)
		}
		if w := wakes(); c.sleeping != (w == 1) {
			t.Errorf("write %d with the loop sleeping %v: %d wake-ups", tag, c.sleeping, w)
		}
	}
	if am.foreign.Load() != 0 {
		t.Error("a write came in a buffer that WriteBuffer did not give")
	}
	am.mu.Lock()
	fua := am.fuaWrites
	am.mu.Unlock()
	if fua != 2 {
		t.Errorf("FUA writes %d, want 2", fua)
	}

	// A write that arrived with others after it starts in a goroutine
	// of its own, and completes all the same.
	copy(q.buf(1), bytes.Repeat([]byte{0x33}, 4096))
	q.dispatch(1, ioDesc{opFlags: ioOpWrite, nrSectors: 8, startSector: 64}, false)
	if res := waitResult(1); res != 4096 {
		t.Fatalf("write in a goroutine: result %d, want 4096", res)
	}
	if got := am.snapshot(64*512, 4096); !bytes.Equal(got, bytes.Repeat([]byte{0x33}, 4096)) {
		t.Fatal("write in a goroutine: the Device holds other data")
	}
	wakes()

	// A flush is started at once too.
	q.dispatch(2, ioDesc{opFlags: ioOpFlush}, true)
	if am.aflushes.Load() != 1 {
		t.Fatal("flush was not started before dispatch returned")
	}
	if res := waitResult(2); res != 0 {
		t.Fatalf("flush: result %d", res)
	}

	// Errors map as for WriteAt; a write past the end never reaches the
	// Device.
	am.mu.Lock()
	am.fail = nbd.ErrReadOnly
	am.mu.Unlock()
	q.dispatch(3, ioDesc{opFlags: ioOpWrite, nrSectors: 8}, true)
	if res := waitResult(3); res != -int32(unix.EPERM) {
		t.Errorf("write to a read-only Device: result %d, want -EPERM", res)
	}
	before := am.async.Load()
	q.dispatch(3, ioDesc{opFlags: ioOpWrite, nrSectors: 16, startSector: 2040}, true)
	if res := waitResult(3); res != -int32(unix.EINVAL) || am.async.Load() != before {
		t.Errorf("write past the end: result %d, WriteAsync calls %d; want -EINVAL and none", res, am.async.Load()-before)
	}
	if log.Len() != 0 {
		t.Errorf("unexpected log: %s", log.String())
	}
}
