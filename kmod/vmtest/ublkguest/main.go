//go:build linux

// Command ublkguest is the VM rig's ublk helper inside the guest: it serves
// a georepl NBD export as /dev/ublkbN through kmod/ublk (until the daemon
// attaches ublk devices itself) and stays in the foreground until SIGTERM
// or SIGINT, when it removes the device.
//
//	ublkguest -export unix:/run/georepl/r0.sock -name r0 &   # @@UBLK /dev/ublkb0
//	kill %1                                                  # @@UBLK-CLOSED
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/georepl/georepl/kmod/nbd"
	"github.com/georepl/georepl/kmod/ublk"
)

func main() {
	export := flag.String("export", "unix:/run/georepl/r0.sock", "export spec")
	name := flag.String("name", "r0", "export (resource) name")
	path := flag.String("device", "", "/dev/ublkbN to take (default: the lowest free)")
	queues := flag.Int("queues", 2, "hardware queues")
	depth := flag.Int("depth", 64, "requests per queue")
	flag.Parse()
	if err := run(*export, *name, *path, *queues, *depth); err != nil {
		fmt.Fprintln(os.Stderr, "ublkguest:", err)
		os.Exit(1)
	}
}

func run(export, name, path string, queues, depth int) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := nbd.Dial(ctx, export, name)
	if err != nil {
		return err
	}
	defer c.Close()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	dev, err := ublk.Start(ctx, clientDevice{c}, ublk.Options{Queues: queues, Depth: depth, Path: path})
	if err != nil {
		return err
	}
	fmt.Println("@@UBLK", dev.Path())
	<-sigs
	if err := dev.Close(); err != nil {
		return err
	}
	fmt.Println("@@UBLK-CLOSED", dev.Path())
	return nil
}

// clientDevice serves an NBD export through its Client. The Client's
// calls may run concurrently and carry the export's errors as errnos, so
// the kernel sees what the export said.
type clientDevice struct{ c *nbd.Client }

func (d clientDevice) Size() uint64   { return uint64(d.c.Size()) }
func (d clientDevice) ReadOnly() bool { return d.c.ReadOnly() }

func (d clientDevice) ReadAt(_ context.Context, p []byte, off uint64) error {
	_, err := d.c.ReadAt(p, int64(off))
	return clientErr(err)
}

func (d clientDevice) WriteAt(_ context.Context, p []byte, off uint64, fua bool) error {
	return clientErr(d.c.WriteAt(p, int64(off), fua))
}

func (d clientDevice) Flush(context.Context) error { return clientErr(d.c.Flush()) }

func (d clientDevice) Trim(_ context.Context, off, length uint64) error {
	return clientErr(d.c.Trim(int64(off), int64(length)))
}

func (d clientDevice) WriteZeroes(_ context.Context, off, length uint64, fua bool) error {
	return clientErr(d.c.WriteZeroes(int64(off), int64(length), fua))
}

// clientErr passes an export's errno on to the kernel unchanged.
func clientErr(err error) error {
	var e nbd.Errno
	if errors.As(err, &e) {
		return &nbd.ClientError{Errno: e, Err: err}
	}
	return err
}
