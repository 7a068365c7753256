package ublk

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"syscall"
	"testing"

	"github.com/georepl/georepl/kmod/nbd"
	"golang.org/x/sys/unix"
)

func testQueue(dev nbd.Device, log *bytes.Buffer) *queue {
	return &queue{
		dev:   dev,
		size:  dev.Size(),
		maxIO: 64 << 10,
		ctx:   context.Background(),
		log:   slog.New(slog.NewTextHandler(log, nil)),
	}
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
