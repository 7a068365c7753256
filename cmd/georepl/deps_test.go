package main

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/georepl/georepl"

// depRules is the package dependency rule of docs/architecture.md ("The
// package dependency rule"): which georepl packages each
// package may import (directly or not). Prefix entries end in "/".
var depRules = []struct {
	pkg     string
	allowed []string
}{
	{"protocols", nil},
	{"core/wire", nil},
	{"core/meta", nil},
	{"core", []string{"protocols", "core/wire"}},
	// configs decodes settings into the types of the I/O-free packages
	// that give them their meaning.
	{"configs", []string{"protocols", "core/wire", "core/meta", "core"}},
	{"transports", nil},
	{"transports/tcp", []string{"transports"}},
	{"transports/quic", []string{"transports"}},
	{"transports/mem", []string{"transports"}},
	{"transports/builtin", []string{"transports", "transports/tcp", "transports/quic"}},
	// Node certificates (the node name in a URI SAN), for the transports'
	// TLS and the driver's identity checks: a leaf of crypto only.
	{"transports/nodetls", nil},
	{"transports/nodetls/nodetlstest", []string{"transports", "transports/nodetls"}},
	{"transports/transporttest", []string{"transports", "transports/nodetls", "transports/nodetls/nodetlstest"}},
	// Plugins: the SDK and the host share only the control protocol.
	{"plugins/internal/control", []string{"transports"}},
	{"plugins/internal/ring", nil},
	{"plugins/sdk", []string{"transports", "plugins/internal/control", "plugins/internal/ring"}},
	{"plugins/host", []string{"transports", "plugins/internal/control", "plugins/internal/ring"}},
	{"plugins/plugintest", []string{"transports", "plugins/internal/control", "plugins/internal/ring", "plugins/host"}},
	{"plugins/tcp-fd", []string{"transports", "plugins/internal/control", "plugins/internal/ring", "plugins/sdk"}},
	{"plugins/tcp-dscp", []string{"transports", "plugins/internal/control", "plugins/internal/ring", "plugins/sdk"}},
	{"plugins/shmring-example", []string{"transports", "transports/tcp", "plugins/internal/control", "plugins/internal/ring", "plugins/sdk"}},
	{"plugins/rdma", []string{"transports", "plugins/internal/control", "plugins/internal/ring", "plugins/sdk"}},
	{"kmod", nil},
	{"kmod/nbd", []string{"kmod"}},
	{"kmod/nbdkernel", []string{"kmod", "kmod/nbd"}},
	{"kmod/ublk", []string{"kmod", "kmod/nbd", "kmod/nbdkernel"}},
	// A node's disk: the metadata formats, the engine's types, the block
	// stores; no goroutine's world (configuration, NBD, transports).
	{"cmd/georepl/internal/storage", []string{"core", "core/meta", "core/wire", "kmod", "protocols"}},
	// The record of who is Primary (an embedded consensus log) and the
	// rules of automatic promotion: the engine's types, no driver.
	{"cmd/georepl/internal/failover", []string{"core", "core/wire", "protocols"}},
	// The simulator runs nodes in a world of its own: no real transport.
	{"cmd/georepl/internal/sim", []string{"cmd/georepl/internal/admin", "cmd/georepl/internal/checker", "cmd/georepl/internal/failover", "cmd/georepl/internal/node",
		"cmd/georepl/internal/storage", "configs", "core", "core/meta", "core/wire", "kmod", "kmod/nbd", "kmod/nbdkernel", "kmod/ublk", "protocols", "transports", "transports/nodetls"}},
}

// TestDependencyRule keeps the architecture honest: the engine and the
// protocols stay free of I/O packages, transports and kmod stay leaves, and
// only the driver wires everything together. It is the one place the rule
// is written down as code; add a row for every new package.
func TestDependencyRule(t *testing.T) {
	t.Parallel()
	for _, rule := range depRules {
		t.Run(rule.pkg, func(t *testing.T) {
			out, err := exec.Command("go", "list", "-json=ImportPath,Deps", "./"+"../../"+rule.pkg).Output()
			if err != nil {
				t.Fatalf("go list %s: %v", rule.pkg, err)
			}
			var p struct {
				ImportPath string
				Deps       []string
			}
			if err := json.Unmarshal(out, &p); err != nil {
				t.Fatal(err)
			}
			allowed := map[string]bool{module + "/" + rule.pkg: true}
			for _, a := range rule.allowed {
				allowed[module+"/"+a] = true
			}
			for _, dep := range p.Deps {
				if strings.HasPrefix(dep, module+"/") && !allowed[dep] {
					t.Errorf("%s imports %s, which the dependency rule (docs/architecture.md) forbids", rule.pkg, dep)
				}
			}
		})
	}
}
