// Package kmod is georepl's local data path: the backing store a node keeps
// its copy of a resource on, and (in kmod/nbd) the NBD export through which
// applications and the kernel reach a resource.
//
// # Backing stores
//
// A Backing is a regular file or a block device opened read-write with an
// exclusive advisory lock, so that two daemons never drive one disk:
//
//	if err := kmod.CreateFile("/var/lib/georepl/r0.img", 1<<30); err != nil {
//		return err // refuses to overwrite an existing file
//	}
//	b, err := kmod.OpenBacking("/var/lib/georepl/r0.img")
//	if err != nil {
//		return err // errors.Is(err, kmod.ErrLocked) if another process holds it
//	}
//	defer b.Close()
//
//	if _, err := b.WriteAt(block, 4096); err != nil {
//		return err // errors.Is(err, syscall.ENOSPC) when the file system is full
//	}
//	if err := b.Sync(); err != nil { // fdatasync: the write is now durable
//		return err
//	}
//
// Reads and writes are whole: n < len(p) only with an error, and every
// access beyond Size fails with an error wrapping ErrOutOfBounds before the
// file is touched (a file never grows through a Backing).
//
// # Regions
//
// On-disk metadata lives at the end of the device and the replicated data
// area at the front. Region gives each of them a bounded view with the same
// methods, offsets relative to the region's start:
//
//	data := b.Region(0, dataSize)
//	meta := b.Region(dataSize, b.Size()-dataSize)
//	if err := meta.Err(); err != nil {
//		return err // the layout does not fit the device
//	}
//
// # Concurrency
//
// All methods of Backing and Region are safe for concurrent use. Close may
// race with I/O: calls that lose the race fail with an error wrapping
// os.ErrClosed.
//
// The package is Linux-only (flock, fallocate, block-device ioctls).
package kmod
