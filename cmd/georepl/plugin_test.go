package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/georepl/georepl/configs"
	"github.com/georepl/georepl/plugins/plugintest"
	"github.com/georepl/georepl/transports"
	"github.com/georepl/georepl/transports/transporttest"
)

// TestConformanceBuiltinTCPAsPlugin runs the conformance suite on the
// built-in tcp transport served through the plugin path (georepl
// plugin-serve tcp), so that one suite proves both paths.
func TestConformanceBuiltinTCPAsPlugin(t *testing.T) {
	transporttest.Run(t, func(t *testing.T) (transports.Transport, string) {
		return plugintest.Start(t, "tcp", georeplBin, "plugin-serve", "tcp"), "127.0.0.1:0"
	})
}

// TestConformanceBuiltinQUICAsPlugin: quic has no kernel socket per
// channel; served as a plugin, its bytes go through shared-memory rings.
func TestConformanceBuiltinQUICAsPlugin(t *testing.T) {
	transporttest.Run(t, func(t *testing.T) (transports.Transport, string) {
		return plugintest.Start(t, "quic", georeplBin, "plugin-serve", "quic"), "127.0.0.1:0"
	})
}

// pluginConf writes a configuration directory: the demo resource with
// its default transport "p", and plugins.hcl holding block.
func pluginConf(t *testing.T, block string) string {
	t.Helper()
	dir := t.TempDir()
	src := strings.ReplaceAll(string(configs.Demo(dir, 7000)), `transport     = "tcp"`, `transport     = "p"`)
	if !strings.Contains(src, `"p"`) {
		t.Fatal("the demo configuration names no transport to replace")
	}
	os.WriteFile(filepath.Join(dir, "r0.hcl"), []byte(src), 0o644)
	os.WriteFile(filepath.Join(dir, "plugins.hcl"), []byte(block), 0o644)
	return dir
}

func pluginBlock(path string, sum []byte, extra string) string {
	return fmt.Sprintf("plugin \"p\" {\n  path   = %q\n  sha256 = \"%x\"\n  args   = [\"plugin-serve\", \"tcp\"]\n%s}\n", path, sum, extra)
}

// TestValidateChecksPlugins: validate starts every plugin once; each
// way a plugin can be wrong is an error naming the block's file and line,
// within seconds.
func TestValidateChecksPlugins(t *testing.T) {
	sum := plugintest.Checksum(t, georeplBin)
	wrong := plugintest.Build(t, "github.com/georepl/georepl/plugins/host/testdata/wrongversion")
	cases := []struct {
		name, block, want string
	}{
		{"good", pluginBlock(georeplBin, sum, ""), "plugin p: " + georeplBin},
		{"missing binary", pluginBlock("/nonexistent/georepl-plugin", sum, ""), "no such file or directory"},
		{"checksum mismatch", pluginBlock(georeplBin, plugintest.Checksum(t, wrong), ""), "checksum mismatch"},
		{"other protocol version", pluginBlock(wrong, plugintest.Checksum(t, wrong), ""), "Plugin version: 2"},
		{"config rejected", pluginBlock(georeplBin, sum, "  config = { colour = \"red\" }\n"), "rejected its configuration: a built-in transport takes no config"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := pluginConf(t, tc.block)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			start := time.Now()
			out, err := exec.CommandContext(ctx, georeplBin, "validate", "--config", dir).CombinedOutput()
			t.Logf("after %v: %s", time.Since(start), out)
			if ctx.Err() != nil {
				t.Fatal("validate hung")
			}
			if tc.name == "good" {
				if err != nil || !strings.Contains(string(out), tc.want) || !strings.Contains(string(out), "alpha <-> bravo: protocol C, p,") {
					t.Fatalf("validate: %v, want success listing the plugin", err)
				}
				return
			}
			where := filepath.Join(dir, "plugins.hcl") + ":1:1: plugin \"p\""
			if err == nil || !strings.Contains(string(out), where) || !strings.Contains(string(out), tc.want) {
				t.Fatalf("validate: %v; want an error starting %q and saying %q", err, where, tc.want)
			}
		})
	}
}

func TestPluginsCommand(t *testing.T) {
	dir := pluginConf(t, pluginBlock(georeplBin, plugintest.Checksum(t, georeplBin), ""))
	out, err := exec.Command(georeplBin, "plugins", "--config", dir).CombinedOutput()
	if err != nil {
		t.Fatalf("plugins: %v\n%s", err, out)
	}
	for _, want := range []string{"tcp        built-in", "quic       built-in", "p          plugin", georeplBin, "(verified)"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}
