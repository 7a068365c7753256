package nbdkernel

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/georepl/georepl/kmod/nbd"
	"golang.org/x/sys/unix"
)

// AttachOptions are Attach's settings; the zero value is usable, and is
// what a server that holds requests (suspended I/O) needs: one socket, no
// request timeout, a dead-connection timeout for restarts.
type AttachOptions struct {
	// Index is the device number N of /dev/nbdN, or AnyDevice (-1) for the
	// first free one. The zero value means /dev/nbd0.
	Index int
	// Connections is how many sockets the kernel spreads requests over;
	// 0 means 1. More than one needs an export that allows multi-conn,
	// and makes the kernel give up on a socket whenever a request on it
	// waits longer than RequestCheck (see Config.Timeout): held requests
	// then fail once DeadConnTimeout passes.
	Connections int
	// BlockSize as in Config; 0 means 512.
	BlockSize uint64
	// Backend as in Config: with AnyDevice, a connected device whose
	// backend matches is the one to reconfigure after a daemon restart.
	Backend string
	// Timeout and DeadConnTimeout as in Config. Timeout 0 lets a request
	// wait for its reply as long as the server takes. DeadConnTimeout 0
	// means DefaultDeadConnTimeout: the kernel queues I/O that long for a
	// restarted daemon to reattach.
	Timeout, DeadConnTimeout time.Duration
	// RequestCheck is how often the kernel looks at a request that has
	// no reply yet (the queue's io_timeout). With Timeout 0 it logs
	// "Possible stuck request", and resends the request if its socket was
	// replaced since it was sent: a request in flight when a server
	// restarted waits at most this long after the new sockets are in.
	// Whole milliseconds; 0 means DefaultRequestCheck.
	RequestCheck time.Duration
}

// DefaultDeadConnTimeout is how long the kernel waits, by default, for a
// restarted daemon to hand it new sockets before it fails queued I/O.
const DefaultDeadConnTimeout = 120 * time.Second

// DefaultRequestCheck is AttachOptions.RequestCheck's default: shorter
// than the kernel's 30 s, so that a request in flight across a daemon
// restart is resent soon, and long enough that a request held for minutes
// is logged only a few times a minute.
const DefaultRequestCheck = 10 * time.Second

// ErrBusy is wrapped by Attach's error when the device asked for is
// connected to something that Attach cannot tell is this export.
var ErrBusy = errors.New("device is busy")

// Attach connects opt.Connections sockets to the NBD server at spec
// ("unix:/path" or "tcp:host:port"), negotiates export on each, and hands
// them to the kernel: NBD_CMD_CONNECT for a free device, or
// NBD_CMD_RECONFIGURE when the device asked for by index is already
// connected and waiting for its server (a daemon restart). It returns the
// device, also with an error wrapping ErrRequestCheck.
func (c *Conn) Attach(ctx context.Context, spec, export string, opt AttachOptions) (Device, error) {
	n := opt.Connections
	if n <= 0 {
		n = 1
	}
	check := opt.RequestCheck
	if check <= 0 {
		check = DefaultRequestCheck
	}
	cfg := Config{Index: opt.Index, Backend: opt.Backend, BlockSize: opt.BlockSize, Timeout: opt.Timeout, DeadConnTimeout: opt.DeadConnTimeout}
	if cfg.DeadConnTimeout == 0 {
		cfg.DeadConnTimeout = DefaultDeadConnTimeout
	}
	reconfigure := false
	if opt.Index == AnyDevice && opt.Backend != "" {
		if i, ok := findBackend("/", opt.Backend); ok {
			cfg.Index, opt.Index = i, i
		}
	}
	if opt.Index >= 0 {
		devs, err := c.Status(opt.Index)
		if err != nil {
			return Device{}, err
		}
		reconfigure = len(devs) == 1 && devs[0].Connected
		if reconfigure && opt.Backend != "" {
			// The kernel silently ignores new sockets for a device
			// whose sockets are all alive: never take another server's.
			if b := readBackend("/", opt.Index); b != "" && b != opt.Backend {
				return Device{}, fmt.Errorf("nbdkernel: /dev/nbd%d: %w: it is attached to %q", opt.Index, ErrBusy, b)
			}
		}
	}

	files := make([]*os.File, 0, n)
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	fds := make([]int, 0, n)
	for i := 0; i < n; i++ {
		f, exp, err := dialNegotiated(ctx, spec, export)
		if err != nil {
			return Device{}, err
		}
		files = append(files, f)
		fds = append(fds, int(f.Fd()))
		if i == 0 {
			cfg.Size, cfg.ServerFlags = exp.Size, exp.Flags
			if exp.Flags&nbd.FlagCanMultiConn == 0 && n > 1 {
				n = 1 // flushes on one socket would not cover writes on another
			}
		}
	}
	if reconfigure {
		if err := c.Reconfigure(cfg, fds); err != nil {
			return Device{}, fmt.Errorf("%w (/dev/nbd%d is connected but does not take new sockets: %w)", ErrBusy, opt.Index, err)
		}
		return Device{Index: opt.Index, Connected: true}, setRequestCheck("/", opt.Index, check)
	}
	index, err := c.Connect(cfg, fds)
	if err != nil {
		if errors.Is(err, syscall.EBUSY) {
			err = fmt.Errorf("%w: %w", ErrBusy, err)
		}
		return Device{}, err
	}
	return Device{Index: index, Connected: true}, setRequestCheck("/", index, check)
}

// ErrRequestCheck is wrapped by Attach's error when the device is attached
// (Attach returns it too) but its RequestCheck could not be set: it works,
// with the kernel's 30 s.
var ErrRequestCheck = errors.New("the device is attached, but its request check interval is not set")

// setRequestCheck sets the queue's io_timeout of device index to d. The
// kernel set it to 30 s as it took the timeout (NBD_ATTR_TIMEOUT 0).
func setRequestCheck(root string, index int, d time.Duration) error {
	p := filepath.Join(root, "sys/block", fmt.Sprintf("nbd%d", index), "queue/io_timeout")
	ms := max(d.Milliseconds(), 1)
	if err := os.WriteFile(p, []byte(strconv.FormatInt(ms, 10)), 0o644); err != nil {
		return fmt.Errorf("nbdkernel: /dev/nbd%d: %w: %w", index, ErrRequestCheck, err)
	}
	return nil
}

// dialNegotiated connects to spec, negotiates export and returns the socket
// as a blocking file the kernel can take.
func dialNegotiated(ctx context.Context, spec, export string) (*os.File, nbd.Export, error) {
	network, address, ok := strings.Cut(spec, ":")
	if !ok || (network != "unix" && network != "tcp") || address == "" {
		return nil, nbd.Export{}, fmt.Errorf("nbdkernel: export %q must be unix:PATH or tcp:HOST:PORT", spec)
	}
	var d net.Dialer
	nc, err := d.DialContext(ctx, network, address)
	if err != nil {
		return nil, nbd.Export{}, fmt.Errorf("nbdkernel: dial %s: %w", spec, err)
	}
	defer nc.Close()
	exp, err := nbd.Negotiate(ctx, nc, export)
	if err != nil {
		return nil, nbd.Export{}, fmt.Errorf("nbdkernel: negotiate %q at %s: %w", export, spec, err)
	}
	fc, ok := nc.(interface{ File() (*os.File, error) })
	if !ok {
		return nil, nbd.Export{}, fmt.Errorf("nbdkernel: %T has no file descriptor", nc)
	}
	f, err := fc.File()
	if err != nil {
		return nil, nbd.Export{}, err
	}
	if err := unix.SetNonblock(int(f.Fd()), false); err != nil {
		f.Close()
		return nil, nbd.Export{}, err
	}
	return f, exp, nil
}

// ParseDevice reads a device number from "/dev/nbdN"; "" and "nbd" mean
// AnyDevice.
func ParseDevice(dev string) (int, error) {
	if dev == "" || dev == "nbd" {
		return AnyDevice, nil
	}
	var n int
	if _, err := fmt.Sscanf(dev, "/dev/nbd%d", &n); err != nil || n < 0 || fmt.Sprintf("/dev/nbd%d", n) != dev {
		return 0, fmt.Errorf("nbdkernel: %q is not /dev/nbdN", dev)
	}
	return n, nil
}

// readBackend returns device index's sysfs backend attribute, "" if none.
func readBackend(root string, index int) string {
	b, _ := os.ReadFile(filepath.Join(root, "sys/block", fmt.Sprintf("nbd%d", index), "backend"))
	return strings.TrimSpace(string(b))
}

// findBackend returns the nbd device whose sysfs backend attribute is
// backend.
func findBackend(root, backend string) (int, bool) {
	paths, _ := filepath.Glob(filepath.Join(root, "sys/block/nbd*/backend"))
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil || strings.TrimSpace(string(b)) != backend {
			continue
		}
		if i, err := ParseDevice("/dev/" + filepath.Base(filepath.Dir(p))); err == nil && i >= 0 {
			return i, true
		}
	}
	return 0, false
}
