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
	// Watching before attaching: a socket may die at once.
	watch, err := nbdkernel.WatchLinks()
	if err != nil {
		return fmt.Errorf("resource %s: attaching %s: %w", r.cfg.Name, dev, err)
	}
	d, err := r.attachNBD(index)
	if err != nil {
		watch.Close()
		if errors.Is(err, nbdkernel.ErrBusy) {
			return fmt.Errorf("resource %s: %s is in use by another server (detach it first, or pick another device): %w", r.cfg.Name, dev, err)
		}
		return fmt.Errorf("resource %s: attaching %s: %w", r.cfg.Name, dev, err)
	}
	a := &nbdAttachment{Device: d, watch: watch, stop: make(chan struct{}), done: make(chan struct{})}
	go a.watchLinks(r)
	r.kernel.set(a)
	r.log.Info("kernel device attached", "device", d.Path(), "export", r.self.Export)
	return nil
}

// attachNBD connects the export to /dev/nbd<index>, or hands that device
// new sockets if it is connected already. The kernel's defaults
// (nbdkernel.AttachOptions) are what held requests need: one socket and no
// request timeout, so that a request held for lost quorum waits however
// long it is held.
func (r *resource) attachNBD(index int) (nbdkernel.Device, error) {
	nl, err := nbdkernel.Open()
	if err != nil {
		return nbdkernel.Device{}, err
	}
	defer nl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), kernelAttachTimeout)
	defer cancel()
	d, err := nl.Attach(ctx, r.self.Export, r.cfg.Name, nbdkernel.AttachOptions{
		Index:     index,
		Backend:   r.kernelBackend(),
		BlockSize: uint64(r.cfg.Disk.LogicalBlockSize),
	})
	if errors.Is(err, nbdkernel.ErrRequestCheck) {
		r.log.Warn("kernel device attached; requests in flight across a daemon restart may wait 30 s", "device", d.Path(), "err", err)
		err = nil
	}
	return d, err
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

// nbdAttachment is an attached /dev/nbdN. Its watcher hands the device
// new sockets whenever the kernel gives up on one (NBD_CMD_LINK_DEAD: the
// export closed it, a send failed, or someone set a request timeout): the
// kernel queues the device's I/O meanwhile and would fail it once its
// dead-connection timeout passed.
type nbdAttachment struct {
	nbdkernel.Device
	watch *nbdkernel.LinkWatch
	stop  chan struct{} // closed by stopWatching
	done  chan struct{} // closed when watchLinks returns

	stopOnce sync.Once
}

// stopWatching ends watchLinks and waits for it; detach may be called
// again after it failed.
func (a *nbdAttachment) stopWatching() {
	a.stopOnce.Do(func() {
		close(a.stop)
		a.watch.Close()
	})
	<-a.done
}

// linkRetry is the pause between two attempts to hand the kernel new
// sockets; the attempts go on for the kernel's dead-connection timeout.
const linkRetry = 2 * time.Second

func (a *nbdAttachment) watchLinks(r *resource) {
	defer close(a.done)
	for {
		index, err := a.watch.Next()
		select {
		case <-a.stop:
			return
		default:
		}
		if err != nil {
			// A notice lost (the socket's buffer overflowed) is
			// not the end of the watch.
			r.log.Warn("watching the kernel device's sockets", "device", a.Path(), "err", err)
			select {
			case <-a.stop:
				return
			case <-time.After(linkRetry):
			}
			continue
		}
		if index != a.Index {
			continue
		}
		r.log.Warn("the kernel gave up on a socket of the kernel device; handing it a new one", "device", a.Path())
		deadline := time.Now().Add(nbdkernel.DefaultDeadConnTimeout)
		for {
			_, err := r.attachNBD(a.Index)
			if err == nil {
				r.log.Info("kernel device reconfigured with a new socket", "device", a.Path())
				break
			}
			if time.Now().After(deadline) {
				r.log.Error("the kernel device took no new socket within its dead-connection timeout: its queued I/O has failed", "device", a.Path(), "err", err)
				break
			}
			r.log.Error("handing the kernel device a new socket", "device", a.Path(), "err", err)
			select {
			case <-a.stop:
				return
			case <-time.After(linkRetry):
			}
		}
	}
}

func (a *nbdAttachment) detach(r *resource) error {
	a.stopWatching()
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
