// Package ublk serves an nbd.Device as a kernel block device, /dev/ublkbN,
// through the kernel's ublk driver (ublk_drv, Linux 6.0+; ioctl-encoded
// commands from 6.3, with a fallback to the bare command numbers of
// earlier kernels). It is the fast path next to kmod/nbd's export: no
// socket and no protocol; the kernel copies each request's data to or from
// a buffer of the server's (and writes are copied once more, into a
// buffer the Device may keep: its own, from nbd.WriteBuffers, if it has
// them).
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
// gets a copy of the data it may keep (in a buffer of its own if it
// implements nbd.WriteBuffers), the optional nbd.AsyncWriter and
// nbd.AsyncFlusher are used as the NBD server uses them, and errors map
// to the errno the kernel sees as in the NBD server.
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
// the tag's buffer. Its result goes back with
// UBLK_U_IO_COMMIT_AND_FETCH_REQ, which also fetches the tag's next
// request.
//
// A write to a Device that is an nbd.AsyncWriter, and a flush of an
// nbd.AsyncFlusher, that arrives alone (the last of the requests one
// io_uring_enter returned) starts on the queue's thread itself: the data
// is copied from the tag's buffer into one from the Device's
// nbd.WriteBuffers if it has them (fresh memory otherwise), WriteAsync or
// FlushAsync is called, and the loop goes on as soon as it returns. Those
// that arrive with others after them start the same way in a goroutine
// each, which ends when WriteAsync returns, so that a batch's writes reach
// the disk in parallel. The Device's completion, from whatever goroutine
// finishes the request (the starting one, before WriteAsync returns, if
// nothing has to wait), queues the result; the loop commits it with its
// next submission, and only a loop asleep in io_uring_enter is woken,
// through an eventfd that its ring polls. So a write at queue depth 1
// costs no goroutine, no channel and no wake-up of another thread.
// Everything else (reads, trims, write-zeroes, and every request to a
// Device without those abilities) runs in a goroutine of its own, as the
// NBD server's pipelined requests do.
//
//	queue thread                       driver                  Device
//	FETCH(tag) for every tag ------->
//	                         <-------- CQE(tag): request in desc[tag]
//	WriteAsync(copy of buf[tag]) ------------------------------> local write, frames to peers
//	                         <------------------------------- done: result queued (eventfd if asleep)
//	COMMIT_AND_FETCH(tag, result) -->  completes the bio
//
// WriteAsync and FlushAsync may run on the queue's thread, so what they
// do before returning holds up the queue's later requests (nbd.WillBlock
// does nothing there): a Device must not wait in them for a later request,
// and a wait must end when its context is cancelled (Close cancels it
// after StopTimeout, then stops the queues).
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
