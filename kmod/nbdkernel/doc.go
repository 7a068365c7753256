// Package nbdkernel attaches NBD exports to the Linux kernel's nbd driver,
// so that a georepl resource appears as /dev/nbdN, and finds who holds a
// block device open before it is detached.
//
// The kernel speaks only the transmission phase of NBD. Attach therefore
// dials the export (once by default), negotiates each connection in user space
// with nbd.Negotiate (NBD_OPT_GO), and hands the sockets to the kernel with
// the generic-netlink family "nbd":
//
//	nl, err := nbdkernel.Open() // loads the nbd module if it is missing
//	if err != nil {
//		return err
//	}
//	defer nl.Close()
//	dev, err := nl.Attach(ctx, "unix:/run/georepl/r0.sock", "r0", nbdkernel.AttachOptions{
//		Index:   nbdkernel.AnyDevice, // or 0 for /dev/nbd0
//		Backend: "georepl:r0",         // finds the device again after a restart
//	})
//	// dev.Path() == "/dev/nbdN"
//	...
//	err = nl.Disconnect(dev.Index)
//
// If the device is already connected (named by index, or found by its
// Backend in /sys/block/nbd*/backend; the daemon restarted and the kernel
// is waiting for its server to come back), Attach hands it the new sockets
// with NBD_CMD_RECONFIGURE instead: I/O queued meanwhile resumes, within
// DeadConnTimeout. Without a dead-connection timeout the kernel fails I/O as
// soon as the last socket dies, which a filesystem takes as a disk failure.
//
// AttachOptions' defaults let a request wait for its reply as long as the
// server takes (one socket, NBD_ATTR_TIMEOUT 0): the kernel gives up on a
// socket whose request outlives a timeout, and with more than one socket on
// every expiry of the queue's io_timeout, and then fails the request once
// DeadConnTimeout passes. WatchLinks reports each socket the kernel gave up
// on (NBD_CMD_LINK_DEAD, multicast group "nbd_mc_group"); answering with
// Attach on the same device index hands it new sockets.
//
// Message layouts follow include/uapi/linux/nbd-netlink.h; every value is a
// native-endian u32/u64 attribute:
//
//	NBD_CMD_CONNECT     [INDEX u32]? SIZE_BYTES u64, BLOCK_SIZE_BYTES u64,
//	                    TIMEOUT u64 (s), SERVER_FLAGS u64, CLIENT_FLAGS u64,
//	                    DEAD_CONN_TIMEOUT u64 (s), [BACKEND_IDENTIFIER str],
//	                    SOCKETS { SOCK_ITEM { SOCK_FD u32 } ... }
//	                    reply: INDEX u32
//	NBD_CMD_RECONFIGURE INDEX, TIMEOUT, [DEAD_CONN_TIMEOUT], SOCKETS
//	NBD_CMD_DISCONNECT  INDEX
//	NBD_CMD_LINK_DEAD   (multicast, from the kernel) INDEX
//	NBD_CMD_STATUS      [INDEX]
//	                    reply: DEVICE_LIST { DEVICE_ITEM { DEVICE_INDEX u32,
//	                    DEVICE_CONNECTED u8 } ... }
//
// The kernel takes its own reference on each socket: the caller's
// descriptors are closed once the kernel has them.
//
// Holders tells who keeps a block device busy (a mount, a device-mapper or
// md holder, a process with it open), so that demoting can be refused with
// the holder's name.
//
// Tests of the kernel path run in the VM rig (kmod/vmtest); this package's
// unit tests check the message encoding against golden bytes and Holders
// against fake /proc and /sys trees.
package nbdkernel
