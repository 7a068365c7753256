// Package ublk serves an nbd.Device as a kernel block device, /dev/ublkbN,
// through the kernel's ublk driver (ublk_drv, Linux 6.0+; ioctl-encoded
// commands from 6.3, with a fallback to the bare command numbers of
// earlier kernels). It is the fast path next to kmod/nbd's export: no
// socket and no protocol; the kernel copies each request's data to or from
// a buffer of the server's (and writes are copied once more, since the
// Device may keep what WriteAt is given).
//
// # Driving it
//
//	if !ublk.Available() {
//		return errors.New("no ublk on this kernel; use nbd") // or fall back
//	}
//	dev, err := ublk.Start(ctx, res, ublk.Options{Queues: 2, Depth: 128})
//	if err != nil {
//		return err // errors.Is(err, ublk.ErrUnavailable) if the module cannot be loaded
//	}
//	fmt.Println(dev.Path()) // /dev/ublkb0
//	...
//	err = dev.Close() // after unmounting: removes /dev/ublkb0
//
// res is any nbd.Device, the same interface the NBD server serves, with
// the same contract: calls arrive from several goroutines at once, WriteAt
// gets a fresh copy of the data it may keep, and errors map to the errno
// the kernel sees as in the NBD server.
//
// # How it works
//
// Control commands go to /dev/ublk-control as IORING_OP_URING_CMD
// submissions on a small io_uring with 128-byte SQEs: ADD_DEV (queues,
// depth, largest request), SET_PARAMS (size, 512-byte logical and
// 4096-byte physical blocks, a volatile write cache with FUA, discard and
// write-zeroes), START_DEV, and at Close STOP_DEV and DEL_DEV.
//
// Each hardware queue has its own goroutine locked to an OS thread (the
// driver ties a queue to the task that fetched it), its own io_uring, and
// a buffer of MaxIO bytes per tag. The queue submits UBLK_U_IO_FETCH_REQ
// for every tag; when the driver completes one, the request is in the
// descriptor array mapped read-only from /dev/ublkcN (op, flags such as
// FUA, start sector, sector count), and for a write the data is already in
// the tag's buffer. The request then runs against the Device in a
// goroutine of its own, and its result goes back with
// UBLK_U_IO_COMMIT_AND_FETCH_REQ, which also fetches the tag's next
// request. Finished requests wake the queue's thread through an eventfd
// that its ring polls.
//
//	queue thread                       driver                  request goroutines
//	FETCH(tag) for every tag ------->
//	                         <-------- CQE(tag): request in desc[tag]
//	go serve(tag) --------------------------------------------> Device.ReadAt/WriteAt/...
//	                         <------------------------------- eventfd write
//	COMMIT_AND_FETCH(tag, result) -->  completes the bio
//
// # Stopping
//
// Close sends STOP_DEV, which removes /dev/ublkbN once the requests in
// flight have finished, and then completes every fetch with an abort, so
// the queues end. If requests are still in flight after
// Options.StopTimeout (a Device that hangs), the queues exit without
// them: their threads die, the driver fails what they held with an I/O
// error, and the Device calls' context is cancelled. DEL_DEV then removes
// the device pair. A process that dies without Close leaves the driver to
// fail its requests in the same way.
//
// # Testing
//
// The struct layouts, opcodes and command encodings are golden-tested
// against the uapi headers, and the io_uring plumbing runs on any kernel
// with io_uring. The tests named TestKernel* drive the real driver (as
// root, with ublk_drv); the VM rig (kmod/vmtest) runs them, with the race
// detector, in a guest with Debian's 6.12 kernel, and runs the ext4
// failover on a resource the daemon serves as /dev/ublkb0 (loading the
// module, with the configured queues and depth): power loss of the
// primary, failover, rejoin, byte-identical disks. The
// fallback to the bare command numbers of 6.0–6.2 has not met such a
// kernel, and on older kernels DEL_DEV may wait without interruption for the
// last opener of the block device.
//
// # Requirements
//
// Root (CAP_SYS_ADMIN; loading the module needs CAP_SYS_MODULE), io_uring
// enabled (kernel.io_uring_disabled = 0), and devtmpfs or udev creating
// /dev/ublkcN and /dev/ublkbN. This package is Linux-only.
package ublk
