package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// errNoDevice is wrapped by the errors of Listen and Dial on a host
// where the transport cannot work at all.
var errNoDevice = errors.New("no usable RDMA device")

// sysRoot is where the kernel's view of RDMA devices is read from.
const sysRoot = "/sys"

// checkDevices returns nil when libibverbs sees an RDMA device, and
// otherwise an error saying what is missing and how to add it: the
// kernel has no RDMA device (no driver, or Soft-RoCE not configured), or
// libibverbs lacks the provider of the devices the kernel has.
func checkDevices() error {
	n, err := numDevices()
	if err == nil && n > 0 {
		return nil
	}
	kernel := kernelDevices(sysRoot)
	switch {
	case len(kernel) > 0:
		return fmt.Errorf("%w: the kernel has %s but libibverbs finds no provider for it (%v): install the user-space providers (Debian: ibverbs-providers; /etc/libibverbs.d/ must name the driver)",
			errNoDevice, strings.Join(kernel, ", "), errOrNone(err))
	case moduleLoaded(sysRoot, "rdma_rxe"):
		return fmt.Errorf("%w: rdma_rxe is loaded but no Soft-RoCE device is configured: run `rdma link add rxe0 type rxe netdev IFACE` with IFACE the Ethernet interface of the address georepl uses", errNoDevice)
	default:
		return fmt.Errorf("%w: the kernel has no RDMA device (%s is empty): load the NIC's RDMA driver, or for Soft-RoCE over any Ethernet interface `modprobe rdma_rxe && rdma link add rxe0 type rxe netdev IFACE`",
			errNoDevice, filepath.Join(sysRoot, "class/infiniband"))
	}
}

func errOrNone(err error) string {
	if err == nil {
		return "it lists no device"
	}
	return err.Error()
}

// kernelDevices lists the RDMA devices the kernel has.
func kernelDevices(root string) []string {
	entries, _ := os.ReadDir(filepath.Join(root, "class/infiniband"))
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func moduleLoaded(root, name string) bool {
	_, err := os.Stat(filepath.Join(root, "module", name))
	return err == nil
}

// cmAdvice explains a failure to open the RDMA connection manager.
func cmAdvice(err syscall.Errno) string {
	switch err {
	case syscall.ENOENT, syscall.ENODEV, syscall.ENXIO:
		return ": the rdma_ucm kernel module is not loaded (modprobe rdma_ucm)"
	case syscall.EACCES, syscall.EPERM:
		return ": georepl may not open it (run georepl as root)"
	}
	return ""
}

// routeAdvice explains an RDMA CM address or route error for addr.
func routeAdvice(local, peer string) string {
	return fmt.Sprintf("no RDMA path from %s to %s: the local address must be on an interface with an RDMA device (see `rdma link show`; for Soft-RoCE `rdma link add rxe0 type rxe netdev IFACE`) and the peer reachable through it", local, peer)
}
