package ublk

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/bits"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/georepl/georepl/kmod/nbd"
	"github.com/georepl/georepl/kmod/nbdkernel"
	"golang.org/x/sys/unix"
)

// Options configure a ublk device. The zero value is valid.
type Options struct {
	// Queues is the number of hardware queues, each served by its own
	// OS thread. 0 means 1; the driver cuts it to the number of CPUs.
	Queues int
	// Depth is the number of requests each queue carries at once.
	// 0 means 128; at most 4096.
	Depth int
	// MaxIO is the largest request in bytes, a multiple of 4096. 0 means
	// 512 KiB; at most 32 MiB. Each queue keeps Depth buffers of MaxIO
	// (64 MiB at the defaults, at most 1 GiB; pages are touched only as
	// requests that large use them).
	MaxIO int
	// LogicalBlockSize is the device's logical block size, the smallest
	// unit of its I/O: 512, 1024, 2048 or 4096 bytes. 0 means 512, as for
	// kmod/nbdkernel, so that one filesystem mounts through either.
	LogicalBlockSize int
	// Path asks for a device number: "/dev/ublkb3". Empty lets the driver
	// pick the lowest free one. A device of that number left behind by a
	// process that died without Close is removed first; one that a live
	// process serves is an error.
	Path string
	// StopTimeout bounds how long Close lets requests in flight finish
	// before it fails them. 0 means 10 s.
	StopTimeout time.Duration
	// Logger receives errors that reach the kernel as EIO; nil means
	// slog.Default().
	Logger *slog.Logger
}

// Defaults and limits of Options.
const (
	DefaultDepth = 128
	DefaultMaxIO = 512 << 10
	// DefaultLogicalBlockSize is the smallest the block layer takes: a
	// filesystem of any block size mounts on it.
	DefaultLogicalBlockSize = 512
	MaxMaxIO                = 32 << 20
)

// maxQueueBuffers bounds the memory one queue keeps for its tags.
const maxQueueBuffers = 1 << 30

// ErrUnavailable is returned (wrapped) by Start when the kernel has no
// ublk driver and it cannot be loaded.
var ErrUnavailable = errors.New("ublk is not available")

// validate checks o and fills in defaults, in one place.
func (o Options) validate() (Options, error) {
	if o.Queues == 0 {
		o.Queues = 1
	}
	if o.Depth == 0 {
		o.Depth = DefaultDepth
	}
	if o.MaxIO == 0 {
		o.MaxIO = DefaultMaxIO
	}
	if o.LogicalBlockSize == 0 {
		o.LogicalBlockSize = DefaultLogicalBlockSize
	}
	if o.StopTimeout == 0 {
		o.StopTimeout = 10 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	switch {
	case o.Queues < 0 || o.Queues > 4096:
		return o, fmt.Errorf("ublk: Queues %d: want 1 to 4096", o.Queues)
	case o.Depth < 0 || o.Depth > maxQueueDepth:
		return o, fmt.Errorf("ublk: Depth %d: want 1 to %d", o.Depth, maxQueueDepth)
	case o.MaxIO < 0 || o.MaxIO > MaxMaxIO || o.MaxIO%4096 != 0:
		return o, fmt.Errorf("ublk: MaxIO %d: want a multiple of 4096 up to %d", o.MaxIO, MaxMaxIO)
	case o.Depth*o.MaxIO > maxQueueBuffers:
		return o, fmt.Errorf("ublk: Depth %d × MaxIO %d: a queue's buffers would exceed %d MiB", o.Depth, o.MaxIO, maxQueueBuffers>>20)
	case o.LogicalBlockSize < 512 || o.LogicalBlockSize > 4096 || o.LogicalBlockSize&(o.LogicalBlockSize-1) != 0:
		return o, fmt.Errorf("ublk: LogicalBlockSize %d: want 512, 1024, 2048 or 4096", o.LogicalBlockSize)
	case o.StopTimeout < 0:
		return o, fmt.Errorf("ublk: negative StopTimeout")
	}
	if o.Path != "" {
		if _, err := devNumber(o.Path); err != nil {
			return o, err
		}
	}
	return o, nil
}

// devNumber parses /dev/ublkbN.
func devNumber(path string) (uint32, error) {
	n, err := strconv.ParseUint(strings.TrimPrefix(path, "/dev/ublkb"), 10, 20)
	if err != nil || !strings.HasPrefix(path, "/dev/ublkb") {
		return 0, fmt.Errorf("ublk: device path %q: want /dev/ublkbN", path)
	}
	return uint32(n), nil
}

// Device is a Device served as /dev/ublkbN. Its methods are safe for
// concurrent use.
type Device struct {
	id      uint32
	ctrl    *control
	charFD  int
	queues  []*queue
	exited  sync.WaitGroup
	cancel  context.CancelFunc // of the Device calls' context
	timeout time.Duration
	log     *slog.Logger

	closeOnce sync.Once
	closeErr  error
}

// Start makes dev the kernel block device /dev/ublkbN: it loads ublk_drv
// if needed, adds the device with opts' queues and depth, and returns
// once the kernel has added the block device. The kernel reads the
// device's first blocks (partition scan) before that, so dev must already
// serve reads. ctx bounds only the start; Close ends the device. The
// caller must be root (CAP_SYS_ADMIN).
//
// Requests reach dev from several goroutines at once, as from the NBD
// server: reads into a buffer that is the server's again once ReadAt
// returns, writes with a copy that WriteAt may keep (in a buffer from
// dev's WriteBuffer if it is an nbd.WriteBuffers); writes to an
// nbd.AsyncWriter and flushes of an nbd.AsyncFlusher start on the queue's
// thread and complete when dev calls done (see the package doc). The kernel
// checks requests against the size; dev's errors map as in the NBD server
// (ErrReadOnly: EPERM, ErrOutOfRange: EINVAL, ENOSPC/EDQUOT/EFBIG: ENOSPC,
// *nbd.ClientError: its errno, others: EIO, logged). A Device implementing
// nbd.ReadOnlyDevice that reports true is added read-only.
func Start(ctx context.Context, dev nbd.Device, opts Options) (*Device, error) {
	opts, err := opts.validate()
	if err != nil {
		return nil, err
	}
	if err := LoadModule(); err != nil {
		return nil, err
	}
	c, err := openControl()
	if err != nil {
		return nil, err
	}
	want := devInfo{nrHWQueues: uint16(opts.Queues), queueDepth: uint16(opts.Depth), maxIOBufBytes: uint32(opts.MaxIO), devID: ^uint32(0)}
	if opts.Path != "" {
		want.devID, _ = devNumber(opts.Path)
	}
	info, err := c.addDev(ctx, want)
	if errors.Is(err, unix.EEXIST) && opts.Path != "" {
		if err = removeStale(ctx, c, want.devID); err == nil {
			info, err = c.addDev(ctx, want)
		}
	}
	if err != nil {
		c.close()
		return nil, err
	}
	callCtx, cancel := context.WithCancel(context.Background())
	d := &Device{id: info.devID, ctrl: c, charFD: -1, cancel: cancel, timeout: opts.StopTimeout, log: opts.Logger}
	if err := d.start(ctx, dev, info, bits.TrailingZeros(uint(opts.LogicalBlockSize)), callCtx); err != nil {
		d.Close()
		return nil, err
	}
	return d, nil
}

func (d *Device) start(ctx context.Context, dev nbd.Device, info devInfo, logicalShift int, callCtx context.Context) error {
	size := dev.Size()
	maxIO := int(info.maxIOBufBytes)
	var p params
	p.types = paramTypeBasic | paramTypeDiscard
	p.basic = paramBasic{
		attrs:           attrVolatileCache | attrFUA,
		logicalBSShift:  uint8(logicalShift),
		physicalBSShift: 12,
		ioOptShift:      12,
		ioMinShift:      12,
		maxSectors:      uint32(maxIO >> 9),
		devSectors:      size >> 9,
	}
	if ro, ok := dev.(nbd.ReadOnlyDevice); ok && ro.ReadOnly() {
		p.basic.attrs |= attrReadOnly
	}
	p.discard = paramDiscard{
		discardGranularity:    4096,
		maxDiscardSectors:     1 << 21,
		maxWriteZeroesSectors: 1 << 21,
		maxDiscardSegments:    1,
	}
	if err := d.ctrl.setParams(ctx, d.id, p); err != nil {
		return err
	}

	charPath := fmt.Sprintf("/dev/ublkc%d", d.id)
	if err := waitForNode(ctx, charPath); err != nil {
		return err
	}
	fd, err := unix.Open(charPath, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", charPath, err)
	}
	d.charFD = fd

	fetched := make(chan error, info.nrHWQueues)
	for id := range info.nrHWQueues {
		q, err := newQueue(id, fd, int(info.queueDepth), maxIO)
		if err != nil {
			return err
		}
		q.legacy, q.log, q.ctx = d.ctrl.legacy, d.log, callCtx
		q.setDevice(dev)
		q.size = size
		d.queues = append(d.queues, q)
		d.exited.Add(1)
		go func() {
			defer d.exited.Done()
			q.run(fetched)
		}()
		if err := <-fetched; err != nil {
			return fmt.Errorf("ublk queue %d: %w", id, err)
		}
	}
	if err := d.ctrl.startDev(ctx, d.id); err != nil {
		return err
	}
	return waitForNode(ctx, d.Path())
}

// removeStale deletes device devID if the process that served it is gone
// (a daemon that died without Close leaves the device pair behind, its
// block device removed), so that a restarted daemon gets its device
// number back. A device some live process serves is left alone.
func removeStale(ctx context.Context, c *control, devID uint32) error {
	info, err := c.devInfo(ctx, devID)
	if err != nil {
		return err
	}
	pid := int(info.ublksrvPID)
	dead := pid > 0 && unix.Kill(pid, 0) == unix.ESRCH
	if info.state == devStateLive && pid > 0 && !dead {
		return fmt.Errorf("ublk: /dev/ublkb%d is in use, served by process %d", devID, pid)
	}
	if info.state != devStateDead && info.state != devStateLive {
		return fmt.Errorf("ublk: /dev/ublkb%d exists in state %d; not removing it", devID, info.state)
	}
	// The driver lets one process at a time open /dev/ublkcN: a server
	// that is still setting the device up holds it.
	// A server that just died holds it until the kernel has cancelled
	// its io_uring requests.
	charPath := fmt.Sprintf("/dev/ublkc%d", devID)
	fd, err := unix.Open(charPath, unix.O_RDWR|unix.O_CLOEXEC, 0)
	for i := 0; dead && errors.Is(err, unix.EBUSY) && i < 100; i++ {
		time.Sleep(50 * time.Millisecond)
		fd, err = unix.Open(charPath, unix.O_RDWR|unix.O_CLOEXEC, 0)
	}
	if errors.Is(err, unix.EBUSY) {
		return fmt.Errorf("ublk: /dev/ublkb%d is in use: another process holds %s", devID, charPath)
	}
	if err == nil {
		unix.Close(fd)
	}
	if err := c.stopDev(ctx, devID); err != nil && !errors.Is(err, unix.ENODEV) {
		return err
	}
	// DEL_DEV waits for the last opener of the old block device.
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := c.delDev(dctx, devID); err != nil {
		return fmt.Errorf("ublk: removing the stale /dev/ublkb%d (still open?): %w", devID, err)
	}
	return nil
}

// waitForNode waits for devtmpfs (or udev) to create path.
func waitForNode(ctx context.Context, path string) error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := os.Stat(path); err == nil {
			return nil
		} else if !errors.Is(err, os.ErrNotExist) {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("ublk: %s did not appear (is devtmpfs mounted on /dev?)", path)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// Path is the block device: /dev/ublkbN.
func (d *Device) Path() string { return fmt.Sprintf("/dev/ublkb%d", d.id) }

// Close removes the block device and the device pair. Requests in flight
// finish first; if they have not after Options.StopTimeout, they are
// failed (EIO to the kernel, and the Device calls' context is cancelled)
// rather than waited for. Unmount the device first: the kernel fails a
// mounted file system's later I/O. If something still holds the block
// device open, the driver cannot delete the device pair until it lets go:
// Close waits up to StopTimeout for that, then returns an error (the
// kernel finishes the removal at the last close). Close is idempotent.
func (d *Device) Close() error {
	d.closeOnce.Do(func() { d.closeErr = d.shutdown() })
	return d.closeErr
}

func (d *Device) shutdown() error {
	var errs []error
	fail := time.AfterFunc(d.timeout, d.fail)
	// STOP_DEV waits for requests in flight without a way to interrupt
	// it; fail lets it finish by making the queues exit, and then the
	// driver fails what they held.
	if err := d.ctrl.stopDev(context.Background(), d.id); err != nil && !errors.Is(err, unix.ENODEV) {
		errs = append(errs, err)
	}
	// STOP_DEV aborted every fetch, so the queues are ending; if one is
	// not, fail still forces it when the timeout passes.
	d.exited.Wait()
	fail.Stop()
	d.cancel()
	for _, q := range d.queues {
		unix.Munmap(q.descs)
	}
	if d.charFD >= 0 {
		unix.Close(d.charFD)
	}
	// DEL_DEV waits until the kernel has released /dev/ublkcN.
	ctx, cancel := context.WithTimeout(context.Background(), d.timeout)
	defer cancel()
	if err := d.ctrl.delDev(ctx, d.id); err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("ublk: %s is still held open after %v; the kernel removes it at the last close: %w", d.Path(), d.timeout, err)
		}
		errs = append(errs, err)
	}
	d.ctrl.close()
	return errors.Join(errs...)
}

// fail gives up on the requests in flight.
func (d *Device) fail() {
	d.log.Error("ublk: requests still in flight at stop; failing them", "device", d.Path(), "timeout", d.timeout)
	d.cancel()
	for _, q := range d.queues {
		q.force()
	}
}

// Available reports whether this kernel can serve ublk devices: the
// control device exists, or the ublk_drv module is installed for the
// running kernel (loading it still needs CAP_SYS_MODULE).
func Available() bool {
	if _, err := os.Stat(ControlPath); err == nil {
		return true
	}
	return moduleInstalled()
}

func moduleInstalled() bool {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return false
	}
	dir := "/lib/modules/" + unix.ByteSliceToString(u.Release[:])
	if _, err := os.Stat("/sys/module/ublk_drv"); err == nil {
		return true
	}
	// Where the kernel tree builds it, for systems without depmod's index.
	for _, ext := range []string{"", ".xz", ".zst", ".gz"} {
		if _, err := os.Stat(dir + "/kernel/drivers/block/ublk_drv.ko" + ext); err == nil {
			return true
		}
	}
	for _, index := range []string{"modules.dep", "modules.builtin"} {
		f, err := os.Open(dir + "/" + index)
		if err != nil {
			continue
		}
		found := false
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if strings.Contains(sc.Text(), "/ublk_drv.ko") {
				found = true
				break
			}
		}
		f.Close()
		if found {
			return true
		}
	}
	return false
}

// LoadModule makes sure the ublk driver is loaded, as modprobe ublk_drv
// would (see nbdkernel.LoadModule, which also works without modprobe), and
// waits for the control device. Its error wraps ErrUnavailable.
func LoadModule() error {
	if _, err := os.Stat(ControlPath); err == nil {
		return nil
	}
	if err := nbdkernel.LoadModule("ublk_drv"); err != nil {
		return fmt.Errorf("%w: %s is missing: %v (needs Linux 6.0+ with CONFIG_BLK_DEV_UBLK, and root)", ErrUnavailable, ControlPath, err)
	}
	if err := waitForNode(context.Background(), ControlPath); err != nil {
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	return nil
}
