//go:build linux

// Command vmguest is the VM rig's helper inside the guest: it attaches a
// georepl export to /dev/nbdN with kmod/nbdkernel (until the daemon does so
// itself), writes files with fsync and reports their checksums on the
// console, and measures synchronous write latency. Its output lines start
// with "@@" so that the host picks them out of the serial console.
//
//	vmguest attach  -export unix:/run/georepl/r0.sock -name r0 -device /dev/nbd0
//	vmguest detach  -device /dev/nbd0
//	vmguest holders -device /dev/nbd0
//	vmguest write   -dir /mnt -n 100000           # @@FSYNCED name sha256
//	vmguest latency -device /dev/nbd0 -n 50       # @@LATENCY median_us p90_us min_us
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/georepl/georepl/kmod/nbdkernel"
	"golang.org/x/sys/unix"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: vmguest attach|detach|holders|write|latency [flags]")
		os.Exit(2)
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	export := fs.String("export", "unix:/run/georepl/r0.sock", "export spec")
	name := fs.String("name", "r0", "export (resource) name")
	device := fs.String("device", "/dev/nbd0", "kernel device")
	conns := fs.Int("connections", 0, "sockets handed to the kernel (0: nbdkernel's default, 1)")
	dir := fs.String("dir", "/mnt", "directory to write files in")
	n := fs.Int("n", 50, "count")
	qd := fs.Int("qd", 16, "writers at once (iops)")
	size := fs.Int("size", 64<<10, "file size in bytes")
	fs.Parse(os.Args[2:])

	var err error
	switch os.Args[1] {
	case "attach":
		err = attach(*export, *name, *device, *conns)
	case "detach":
		err = detach(*device)
	case "holders":
		var hs []string
		hs, err = nbdkernel.Holders(*device)
		for _, h := range hs {
			fmt.Println("@@HOLDER", h)
		}
	case "write":
		err = writeFiles(*dir, *n, *size)
	case "latency":
		err = latency(*device, *n)
	case "fill":
		err = fill(*device, *n)
	case "iops":
		err = iops(*device, *n, *qd)
	default:
		err = fmt.Errorf("unknown verb %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "vmguest:", err)
		os.Exit(1)
	}
}

func attach(export, name, device string, conns int) error {
	index, err := nbdkernel.ParseDevice(device)
	if err != nil {
		return err
	}
	nl, err := nbdkernel.Open()
	if err != nil {
		return err
	}
	defer nl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	d, err := nl.Attach(ctx, export, name, nbdkernel.AttachOptions{Index: index, Connections: conns, Backend: "georepl:" + name})
	if err != nil {
		return err
	}
	// The kernel announces the size asynchronously; wait for it.
	for i := 0; i < 100; i++ {
		if b, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(d.Path()), "size")); err == nil && string(b) != "0\n" {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	fmt.Println("@@ATTACHED", d.Path())
	return nil
}

func detach(device string) error {
	hs, err := nbdkernel.Holders(device)
	if err != nil {
		return err
	}
	if len(hs) > 0 {
		return fmt.Errorf("%s is in use: %v", device, hs)
	}
	index, err := nbdkernel.ParseDevice(device)
	if err != nil {
		return err
	}
	nl, err := nbdkernel.Open()
	if err != nil {
		return err
	}
	defer nl.Close()
	if err := nl.Disconnect(index); err != nil {
		return err
	}
	fmt.Println("@@DETACHED", device)
	return nil
}

// writeFiles writes n files of random data, each fsync'd together with its
// directory before its checksum is printed: a printed file must survive a
// power loss.
func writeFiles(dir string, n, size int) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	buf := make([]byte, size)
	for i := 0; i < n; i++ {
		for j := range buf {
			buf[j] = byte(rng.Uint32())
		}
		name := fmt.Sprintf("f%06d", i)
		f, err := os.Create(filepath.Join(dir, name))
		if err != nil {
			return err
		}
		if _, err := f.Write(buf); err != nil {
			return err
		}
		if err := f.Sync(); err != nil {
			return err
		}
		if err := f.Close(); err != nil {
			return err
		}
		if err := d.Sync(); err != nil {
			return err
		}
		sum := sha256.Sum256(buf)
		fmt.Printf("@@FSYNCED %s %s\n", name, hex.EncodeToString(sum[:]))
	}
	return nil
}

// latency times n 4 KiB O_DIRECT|O_DSYNC writes to device.
func latency(device string, n int) error {
	fd, err := unix.Open(device, unix.O_WRONLY|unix.O_DIRECT|unix.O_DSYNC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	buf, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		return err
	}
	defer unix.Munmap(buf)
	var samples []time.Duration
	for i := 0; i < n; i++ {
		buf[0] = byte(i)
		start := time.Now()
		if _, err := unix.Pwrite(fd, buf, int64(i%256)*4096); err != nil {
			return err
		}
		samples = append(samples, time.Since(start))
	}
	slices.Sort(samples)
	fmt.Printf("@@LATENCY %d %d %d\n", samples[len(samples)/2].Microseconds(), samples[len(samples)*9/10].Microseconds(), samples[0].Microseconds())
	return nil
}

// fill writes n MiB of random data to device in 1 MiB O_DIRECT|O_DSYNC
// writes from its start and prints the rate in MB/s.
func fill(device string, n int) error {
	fd, err := unix.Open(device, unix.O_WRONLY|unix.O_DIRECT|unix.O_DSYNC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	buf, err := unix.Mmap(-1, 0, 1<<20, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		return err
	}
	defer unix.Munmap(buf)
	rng := rand.NewChaCha8([32]byte{42})
	start := time.Now()
	for i := range n {
		rng.Read(buf)
		if _, err := unix.Pwrite(fd, buf, int64(i)<<20); err != nil {
			return err
		}
	}
	fmt.Printf("@@THROUGHPUT %.1f\n", float64(n<<20)/1e6/time.Since(start).Seconds())
	return nil
}

// iops writes n 4 KiB blocks to device with O_DIRECT|O_DSYNC from qd
// writers at once (a queue depth of qd), each on its own blocks, and
// prints the writes per second.
func iops(device string, n, qd int) error {
	fd, err := unix.Open(device, unix.O_WRONLY|unix.O_DIRECT|unix.O_DSYNC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	errs := make(chan error, qd)
	start := time.Now()
	for w := range qd {
		go func() {
			buf, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
			if err != nil {
				errs <- err
				return
			}
			defer unix.Munmap(buf)
			for i := w; i < n; i += qd {
				buf[0] = byte(i)
				if _, err := unix.Pwrite(fd, buf, int64(i%4096)*4096); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range qd {
		if err := <-errs; err != nil {
			return err
		}
	}
	fmt.Printf("@@IOPS %.0f\n", float64(n)/time.Since(start).Seconds())
	return nil
}
