package ublk

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ControlPath is the ublk driver's control device.
const ControlPath = "/dev/ublk-control"

// control issues commands on /dev/ublk-control. One goroutine at a time.
type control struct {
	fd   int
	ring *ring
	// page holds the buffers control commands point the kernel at. It is
	// mapped outside the Go heap, so that nothing moves it and the
	// driver may write into it from a worker thread after io_uring_enter
	// returned.
	page []byte
	// legacy is set when the kernel predates ioctl-encoded opcodes.
	legacy bool
	seq    uint64
}

func openControl() (*control, error) {
	fd, err := unix.Open(ControlPath, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", ControlPath, err)
	}
	c := &control{fd: fd}
	if c.ring, err = newRing(4); err != nil {
		unix.Close(fd)
		return nil, err
	}
	if c.page, err = unix.Mmap(-1, 0, unix.Getpagesize(), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS); err != nil {
		c.close()
		return nil, fmt.Errorf("mmap control buffer: %w", err)
	}
	return c, nil
}

func (c *control) close() {
	if c.page != nil {
		unix.Munmap(c.page)
		c.page = nil
	}
	if c.ring != nil {
		c.ring.close()
		c.ring = nil
	}
	if c.fd >= 0 {
		unix.Close(c.fd)
		c.fd = -1
	}
}

// info and params are the control buffer seen as the struct a command
// carries; the page is large enough for either.
func (c *control) info() *devInfo  { return (*devInfo)(unsafe.Pointer(&c.page[0])) }
func (c *control) param() *params  { return (*params)(unsafe.Pointer(&c.page[0])) }
func (c *control) bufAddr() uint64 { return uint64(uintptr(unsafe.Pointer(&c.page[0]))) }

// CommandError is a control command the driver refused.
type CommandError struct {
	Command string
	Errno   syscall.Errno
}

func (e *CommandError) Error() string {
	return fmt.Sprintf("ublk %s: %v", e.Command, e.Errno)
}

// Unwrap returns the errno, for errors.Is(err, syscall.EPERM) and the like.
func (e *CommandError) Unwrap() error { return e.Errno }

// errnoENOTSUPP is the kernel-internal ENOTSUPP (524) that early ublk
// drivers return for an unknown command.
const errnoENOTSUPP = syscall.Errno(524)

// pollInterval bounds how long a control command waits between looks at
// its context.
const pollInterval = 50 * time.Millisecond

// do runs one control command and waits for its result. If ctx ends
// first, the command is cancelled (IORING_OP_ASYNC_CANCEL interrupts the
// driver's interruptible waits, e.g. START_DEV waiting for the queues or
// DEL_DEV waiting for the last opener) and ctx's error is returned once
// the kernel has let go of it.
func (c *control) do(ctx context.Context, name string, op uint32, hdr ctrlCmd) (int32, error) {
	if c.legacy {
		op = legacy(op)
	}
	c.seq++
	id := c.seq
	e, err := c.ring.next()
	if err != nil {
		return 0, err
	}
	e.opcode = opURingCmd
	e.fd = int32(c.fd)
	e.off = uint64(op)
	e.userData = id
	*(*ctrlCmd)(unsafe.Pointer(&e.cmd[0])) = hdr
	if err := c.ring.submit(0); err != nil {
		return 0, fmt.Errorf("ublk %s: %w", name, err)
	}
	cancelled := false
	for {
		var res int32
		found := false
		c.ring.reap(func(cq cqe) {
			if cq.userData == id {
				res, found = cq.res, true
			}
		})
		if found {
			// A command that completed despite the cancel reports its
			// own result, so that the caller undoes what it did.
			if cancelled && (res == -int32(unix.ECANCELED) || res == -int32(unix.EINTR)) {
				return res, ctx.Err()
			}
			if res < 0 {
				return res, &CommandError{Command: name, Errno: syscall.Errno(-res)}
			}
			return res, nil
		}
		if !cancelled && ctx.Err() != nil {
			cancelled = true
			ce, err := c.ring.next()
			if err == nil {
				ce.opcode = opAsyncCancel
				ce.addr = id
				ce.userData = 0
				err = c.ring.submit(0)
			}
			if err != nil {
				return 0, fmt.Errorf("ublk %s: cancelling: %w", name, err)
			}
		}
		if _, err := c.ring.waitReadable(pollInterval); err != nil {
			return 0, fmt.Errorf("ublk %s: %w", name, err)
		}
	}
}

// addDev creates a device pair (/dev/ublkcN now, /dev/ublkbN at START) and
// returns the driver's view of it: queues and depth may be cut to what it
// supports (queues to the number of CPUs, the buffer size to whole pages).
//
// want.devID is the device number to take, or ^0 for the lowest free one.
func (c *control) addDev(ctx context.Context, want devInfo) (devInfo, error) {
	want.flags |= featCmdIoctlEncode
	*c.info() = want
	hdr := ctrlCmd{devID: want.devID, queueID: ^uint16(0), len: uint16(unsafe.Sizeof(devInfo{})), addr: c.bufAddr()}
	_, err := c.do(ctx, "ADD_DEV", cmdAddDev, hdr)
	var ce *CommandError
	if errors.As(err, &ce) && (ce.Errno == unix.EOPNOTSUPP || ce.Errno == unix.EINVAL || ce.Errno == errnoENOTSUPP) {
		// A kernel before 6.3 switches on the bare command number and
		// answers others with the kernel-internal ENOTSUPP.
		c.legacy = true
		want.flags &^= featCmdIoctlEncode
		*c.info() = want
		if _, lerr := c.do(ctx, "ADD_DEV", cmdAddDev, hdr); lerr == nil {
			err = nil
		} else {
			c.legacy = false
		}
	}
	if err != nil {
		return devInfo{}, err
	}
	return *c.info(), nil
}

// devInfo returns the driver's view of device devID.
func (c *control) devInfo(ctx context.Context, devID uint32) (devInfo, error) {
	*c.info() = devInfo{}
	hdr := ctrlCmd{devID: devID, queueID: ^uint16(0), len: uint16(unsafe.Sizeof(devInfo{})), addr: c.bufAddr()}
	if _, err := c.do(ctx, "GET_DEV_INFO", cmdGetDevInfo, hdr); err != nil {
		return devInfo{}, err
	}
	return *c.info(), nil
}

func (c *control) setParams(ctx context.Context, devID uint32, p params) error {
	p.len = paramsLen
	*c.param() = p
	hdr := ctrlCmd{devID: devID, queueID: ^uint16(0), len: paramsLen, addr: c.bufAddr()}
	_, err := c.do(ctx, "SET_PARAMS", cmdSetParams, hdr)
	return err
}

// startDev waits in the driver until every queue has fetched all its tags,
// then adds /dev/ublkbN.
func (c *control) startDev(ctx context.Context, devID uint32) error {
	hdr := ctrlCmd{devID: devID, queueID: ^uint16(0), data: uint64(os.Getpid())}
	_, err := c.do(ctx, "START_DEV", cmdStartDev, hdr)
	return err
}

// stopDev removes /dev/ublkbN (waiting for the requests in flight) and
// completes every fetch with UBLK_IO_RES_ABORT.
func (c *control) stopDev(ctx context.Context, devID uint32) error {
	hdr := ctrlCmd{devID: devID, queueID: ^uint16(0)}
	_, err := c.do(ctx, "STOP_DEV", cmdStopDev, hdr)
	return err
}

// delDev removes the device pair; the driver waits until /dev/ublkcN is
// closed.
func (c *control) delDev(ctx context.Context, devID uint32) error {
	hdr := ctrlCmd{devID: devID, queueID: ^uint16(0)}
	_, err := c.do(ctx, "DEL_DEV", cmdDelDev, hdr)
	return err
}
