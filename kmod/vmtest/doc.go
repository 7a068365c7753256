// Package vmtest is the VM rig: it boots Debian's bookworm-backports kernel
// under QEMU (TCG) twice (three times for the automatic failover), linked by
// a UDP network backend, each VM with its own virtio disk, and proves the
// kernel data path end to end. Scenarios:
//
//   - ext4 failover, on nbd (scenarios_test.go) and on ublk (ublk_test.go):
//     the daemon attaches /dev/nbd0 or /dev/ublkb0 (2 queues of 64 tags,
//     as configured) at `georepl primary`; mkfs, mount; `georepl secondary`
//     is refused while mounted; files written with fsync, their checksums
//     printed; the primary's QEMU killed mid-write (power loss, guest page
//     cache included); the secondary promoted, its device attached, ext4's
//     journal replayed, `e2fsck -f -n` clean, every fsync'd file intact;
//     the old primary rejoins just by coming up: its activity log (8
//     extents of a 256 MiB disk) marks what may differ, and the resync,
//     that plus what changed since the failover, must stay under the
//     activity log's span and an eighth of the device; both disks' data areas end byte-identical and `georepl
//     secondary` removes the device.
//   - automatic failover (autofailover_test.go, TestExt4AutoFailover): r0
//     under failover { mode = "auto" } with a third VM, witness (one CPU,
//     no disk), as the third voter of the consensus log; each VM has a
//     link of its own to each other one, so that bravo and the witness
//     still form a majority when alpha loses power. ext4 on alpha's
//     /dev/nbd0 (promoted by the operator through the log, term 1), files
//     written with fsync and their checksums printed, alpha's QEMU
//     killed; without an operator the log promotes bravo (term 2), its
//     daemon attaches /dev/nbd0 and runs on_promote, a shell script in the
//     guest that mounts the filesystem and says so on the console; every
//     fsync'd file intact, e2fsck -f -n clean. The time from the power
//     loss to that console line is measured on the host and logged. The
//     witness is a VM rather than a process on the host: the guests reach
//     nothing outside their links, and the consensus address a voter
//     listens on is the one the others dial. In CI's subset.
//   - protocol A vs C over WAN: 4 KiB synchronous write latency on the
//     local disk, then under C and A, on the bare link and with netem's
//     40 ms delay: C pays the round trip, A does not.
//   - logical block size (blocksize_test.go): one resource served as
//     /dev/ublkb0 on alpha and /dev/nbd0 on bravo; an ext4 with 1 KiB
//     blocks made on ublk is mounted and written through nbd, then mounted
//     through ublk again, e2fsck clean; both devices show 512-byte logical
//     blocks by default and 4096 with logical_block_size = "4KiB".
//   - online resize (resize_test.go): ext4 on alpha's /dev/nbd0 over a
//     file-backed resource; both files grown and `georepl resize` run on
//     each node while a file is written; /dev/nbd0 shows the new size,
//     resize2fs grows the mounted filesystem, files fill the new space;
//     every file intact, e2fsck clean, both data areas identical. Not in
//     CI's subset.
//   - quorum hold (hold_test.go): a Primary with quorum = "majority" of two
//     nodes and ext4 writers with fsync on /dev/nbd0 and /dev/ublkb0 (two
//     resources); the link to the other node cut for three minutes, past
//     the nbd driver's request and dead-connection timeouts: no file
//     completes meanwhile, the writers live; the link back, they go on,
//     with no writer error and no I/O error in the kernel's log, e2fsck
//     clean.
//   - daemon restart (reattach): the primary's daemon is SIGKILLed with a
//     write in flight on /dev/nbd0; started again, it hands the kernel new
//     sockets (NBD_CMD_RECONFIGURE) and the write completes.
//   - rdma (rdma_test.go): Soft-RoCE (rdma_rxe) on each guest's eth0; the
//     transport conformance suite on the rdma plugin inside alpha; a
//     protocol C resource with transport = "rdma" between the guests
//     beside one on tcp (4 KiB sync write latency and 1 MiB write rate of
//     each), the primary's plugin SIGKILLed mid-write with every
//     acknowledged write on both disks after the resync; and the ext4
//     failover above with its connection on rdma (TestExt4FailoverRDMA, on
//     a smaller disk that resyncs by checksum). TestRDMAShort is TestRDMA
//     without the tcp resource and the measurements: one boot of the
//     guests for the conformance suite and the plugin killed mid-write.
//     CI runs TestRDMAShort and TestExt4FailoverRDMA.
//
// ublk_test.go adds kmod/ublk's kernel tests (in the guest) and the ublk
// ext4 failover.
//
// Its tests carry the build tag vmtest, so plain `go test ./...` skips
// them. Run it with `make vmtest` (as root: it installs Debian packages and
// downloads the kernel into .cache/vm in the repository, see setup.sh).
// The serial console of each VM is logged to .cache/vm/logs/.
//
// The guest side is an initramfs holding busybox, the kernel modules the
// scenarios need, a static georepl, vmguest (./guest), e2fsprogs, tc and
// rdma with their libraries, the rdma plugin (cgo) and its test binary
// with theirs and libibverbs' Soft-RoCE provider, and an /init that brings
// up the network (rxe0 on eth0 included) and leaves a shell on the
// console. The host drives each VM through that shell: every command ends
// with a marker line carrying its exit status.
package vmtest
