// Package vmtest is the VM rig: it boots Debian's bookworm-backports kernel
// under QEMU (TCG) twice, linked by a UDP network backend, each VM with its
// own virtio disk, and proves the kernel data path end to end: ext4 on
// /dev/nbd0 through georepl, power loss of the primary (its QEMU killed),
// failover, rejoin with a full sync, and write latency under protocols A
// and C over an emulated WAN (netem).
//
// Its tests carry the build tag vmtest, so plain `go test ./...` skips
// them. Run it with `make vmtest` (as root: it installs Debian packages and
// downloads the kernel into .cache/vm in the repository, see setup.sh).
// The serial console of each VM is logged to .cache/vm/logs/.
//
// The guest side is an initramfs holding busybox, the kernel modules the
// scenarios need, a static georepl, vmguest (./guest), e2fsprogs and tc with
// their libraries, and an /init that brings up the network and leaves a
// shell on the console. The host drives each VM through that shell: every
// command ends with a marker line carrying its exit status.
package vmtest
