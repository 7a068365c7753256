package main

import (
	"os"
	"testing"

	"github.com/georepl/georepl/plugins/host"
	"github.com/georepl/georepl/plugins/plugintest"
	"github.com/georepl/georepl/transports"
	"github.com/georepl/georepl/transports/transporttest"
)

func transportsOptions() transports.Options { return transports.Options{} }

// TestConformance runs the transport conformance suite on the plugin
// binary over real RDMA verbs. It needs an RDMA device, so it runs where
// GEOREPL_RDMA_ADDR names an address on an interface with one (the VM
// rig sets it, with Soft-RoCE: kmod/vmtest's TestRDMA), listening on
// port 0 of it; GEOREPL_RDMA_PLUGIN may name a plugin binary built
// already (a guest has no Go toolchain).
func TestConformance(t *testing.T) {
	addr := os.Getenv("GEOREPL_RDMA_ADDR")
	if addr == "" {
		t.Skip("GEOREPL_RDMA_ADDR is not set: no RDMA device to run on (make vmtest runs it over Soft-RoCE)")
	}
	bin := os.Getenv("GEOREPL_RDMA_PLUGIN")
	if bin == "" {
		bin = plugintest.Build(t, "github.com/georepl/georepl/plugins/rdma")
	}
	// The checksum once, not per subtest: every start still checks the
	// binary against it (twice: the host, then go-plugin), and under the
	// VM rig's emulation each SHA-256 of the plugin takes seconds.
	sum := plugintest.Checksum(t, bin)
	transporttest.Run(t, func(t *testing.T) (transports.Transport, string) {
		return plugintest.StartConfig(t, host.Config{Name: "rdma", Path: bin, SHA256: sum}), addr
	})
}
