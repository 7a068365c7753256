package node

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/georepl/georepl/kmod/nbdkernel"
	"github.com/georepl/georepl/kmod/ublk"
)

// kernelDevice is the kernel device attached to a resource while it is
// Primary. attachKernelDevice and detachKernelDevice run on the admin
// goroutines, path on the loop's (status).
type kernelDevice struct {
	mu  sync.Mutex
	dev kernelAttachment // nil when none is attached
}

func (k *kernelDevice) get() kernelAttachment {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.dev
}

func (k *kernelDevice) set(d kernelAttachment) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.dev = d
}

// kernelAttachTimeout bounds dialling and negotiating the export's sockets.
const kernelAttachTimeout = 30 * time.Second

// kernelBackend is the identifier the kernel shows in
// /sys/block/nbdN/backend, by which a restarted daemon finds its device.
func (r *resource) kernelBackend() string { return "georepl:" + r.cfg.Name }

// attachKernelDevice attaches the node's export to the kernel device the
// configuration names (node block, device), loading the module if needed.
// Call it after the resource became Primary (the export refuses a
// Secondary). A device already attached for this resource (a daemon
// restart while the kernel waits for its server) is handed new sockets.
func (r *resource) attachKernelDevice() error {
	dev := r.self.Device
	if dev == "" {
		return nil
	}
	if r.kernel.get() != nil {
		return nil
	}
	isUblk, dev := resolveDevice(dev, ublk.Available)
	if isUblk {
		return r.attachUblk(dev)
	}
	index, err := nbdkernel.ParseDevice(dev)
	if err != nil {
		return fmt.Errorf("resource %s: %w", r.cfg.Name, err)
	}
	nl, err := nbdkernel.Open()
	if err != nil {
		return fmt.Errorf("resource %s: attaching %s: %w", r.cfg.Name, dev, err)
	}
	defer nl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), kernelAttachTimeout)
	defer cancel()
	d, err := nl.Attach(ctx, r.self.Export, r.cfg.Name, nbdkernel.AttachOptions{
		Index:     index,
		Backend:   r.kernelBackend(),
		BlockSize: uint64(r.cfg.Disk.LogicalBlockSize),
	})
	if err != nil {
		if errors.Is(err, nbdkernel.ErrBusy) {
			return fmt.Errorf("resource %s: %s is in use by another server (detach it first, or pick another device): %w", r.cfg.Name, dev, err)
		}
		return fmt.Errorf("resource %s: attaching %s: %w", r.cfg.Name, dev, err)
	}
	r.kernel.set(nbdAttachment{d})
	r.log.Info("kernel device attached", "device", d.Path(), "export", r.self.Export)
	return nil
}

// resolveDevice turns a configured device (configs.Node.Device, not
// empty) into a ublk device path ("" for the first free one) or an nbd
// spelling: "auto" is ublk where ublkAvailable says the kernel has it,
// else nbd.
func resolveDevice(dev string, ublkAvailable func() bool) (isUblk bool, path string) {
	switch {
	case dev == "auto" && ublkAvailable():
		return true, ""
	case dev == "auto":
		return false, "nbd"
	case dev == "ublk":
		return true, ""
	case strings.HasPrefix(dev, "/dev/ublkb"):
		return true, dev
	}
	return false, dev
}

// attachUblk serves the resource as a ublk device: the kernel's requests
// reach the resource directly over io_uring, with no socket in between.
func (r *resource) attachUblk(path string) error {
	if err := ublk.LoadModule(); err != nil {
		return fmt.Errorf("resource %s: device = %q: %w", r.cfg.Name, r.self.Device, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), kernelAttachTimeout)
	defer cancel()
	d, err := ublk.Start(ctx, device{r}, ublk.Options{
		Path:             path,
		Queues:           r.self.UblkQueues,
		Depth:            r.self.UblkQueueDepth,
		LogicalBlockSize: int(r.cfg.Disk.LogicalBlockSize),
		Logger:           r.log,
	})
	if err != nil {
		return fmt.Errorf("resource %s: starting a ublk device: %w", r.cfg.Name, err)
	}
	r.kernel.set(ublkAttachment{d})
	r.log.Info("kernel device attached", "device", d.Path(), "via", "ublk", "queues", r.self.UblkQueues, "queue_depth", r.self.UblkQueueDepth)
	return nil
}

// kernelAttachment is a kernel block device serving a resource.
type kernelAttachment interface {
	Path() string
	// detach removes the device; the caller checked that nobody holds it.
	detach(r *resource) error
}

type nbdAttachment struct{ nbdkernel.Device }

func (a nbdAttachment) detach(r *resource) error {
	nl, err := nbdkernel.Open()
	if err != nil {
		return err
	}
	defer nl.Close()
	if devs, err := nl.Status(a.Index); err == nil && (len(devs) == 0 || !devs[0].Connected) {
		return nil // someone else detached it already
	}
	return nl.Disconnect(a.Index)
}

type ublkAttachment struct{ *ublk.Device }

func (a ublkAttachment) detach(*resource) error { return a.Close() }

// detachKernelDevice detaches the resource's kernel device. It refuses,
// naming the holders, while the device is mounted or open, so call it
// before demoting: `georepl secondary` then fails the way DRBD's does.
func (r *resource) detachKernelDevice() error {
	d := r.kernel.get()
	if d == nil {
		return nil
	}
	holders, err := nbdkernel.Holders(d.Path())
	if err != nil {
		return fmt.Errorf("resource %s: checking who holds %s: %w", r.cfg.Name, d.Path(), err)
	}
	if len(holders) > 0 {
		return fmt.Errorf("resource %s: %s is still in use (%s): unmount it and close it first", r.cfg.Name, d.Path(), strings.Join(holders, "; "))
	}
	if err := d.detach(r); err != nil {
		return fmt.Errorf("resource %s: detaching %s: %w", r.cfg.Name, d.Path(), err)
	}
	r.kernel.set(nil)
	r.log.Info("kernel device detached", "device", d.Path())
	return nil
}

// kernelDevicePath is the attached kernel device, "" when none, for status.
func (r *resource) kernelDevicePath() string {
	if d := r.kernel.get(); d != nil {
		return d.Path()
	}
	return ""
}
