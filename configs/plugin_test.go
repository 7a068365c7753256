package configs

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const pluginSum = "3f1a0805262224d0b8701d126605a0d4051b994b1301a680917b2cfa5a835904"

// pluginResource is a resource whose alpha–bravo connection uses the
// transport %s.
const pluginResource = `
resource "r0" {
  net { shared_secret = "plugins" }
  node "alpha" {
    id      = 0
    address = "10.0.0.1:7789"
    disk    = "/dev/a"
  }
  node "bravo" {
    id      = 1
    address = "10.0.0.2:7789"
    disk    = "/dev/b"
  }
  connection "alpha" "bravo" {
    net { transport = "%s" }
  }
}
`

func TestPluginBlock(t *testing.T) {
	// The plugin block comes in a later file than the resource naming it.
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "a.hcl"), []byte(strings.Replace(pluginResource, "%s", "tcp-fd", 1)), 0o644)
	os.WriteFile(filepath.Join(dir, "b.hcl"), []byte(`plugin "tcp-fd" {
  path   = "/usr/lib/georepl/plugins/tcp-fd"
  sha256 = "`+pluginSum+`"
  args   = ["serve", "tcp"]
  config = { mtu = 9000, name = "x", tags = ["a"] }
}
`), 0o644)
	cfg, err := LoadDir(dir, LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p := cfg.Plugin("tcp-fd")
	if p == nil || len(cfg.Plugins) != 1 {
		t.Fatalf("plugins %v, want tcp-fd", cfg.Plugins)
	}
	if p.Path != "/usr/lib/georepl/plugins/tcp-fd" || len(p.SHA256) != 32 || p.SHA256[0] != 0x3f || p.DeclRange.Start.Line != 1 {
		t.Errorf("plugin %+v", p)
	}
	if strings.Join(p.Args, " ") != "serve tcp" {
		t.Errorf("args %q, want serve tcp", p.Args)
	}
	if want := `{"mtu":9000,"name":"x","tags":["a"]}`; !bytes.Equal(p.Config, []byte(want)) {
		t.Errorf("config %s, want %s", p.Config, want)
	}
	l, err := cfg.Resources[0].Link("alpha", "bravo")
	if err != nil || l.Net.Transport != "tcp-fd" {
		t.Errorf("link transport %q, %v; want tcp-fd", l.Net.Transport, err)
	}
}

func TestPluginBlockErrors(t *testing.T) {
	block := func(name, body string) string {
		return "plugin \"" + name + "\" {\n" + body + "\n}\n"
	}
	ok := "path = \"/p\"\nsha256 = \"" + pluginSum + "\""
	cases := []struct {
		name, src, want string
	}{
		{"unknown transport", strings.Replace(pluginResource, "%s", "rdma", 1),
			`a.hcl:15:23: Unknown transport; transport = "rdma" is not valid`},
		{"relative path", block("x", "path = \"bin/x\"\nsha256 = \""+pluginSum+"\""),
			`a.hcl:2:8: Relative plugin path`},
		{"bad sha256", block("x", "path = \"/p\"\nsha256 = \"abc\""),
			`a.hcl:3:10: Invalid sha256`},
		{"missing sha256", block("x", "path = \"/p\""),
			`a.hcl:1:12: Missing required argument; The argument "sha256" is required`},
		{"config not an object", block("x", ok+"\nconfig = 3"),
			`a.hcl:4:10: Invalid plugin config; config must be an object`},
		{"shadows a built-in", block("tcp", ok),
			`a.hcl:1:8: Plugin shadows a transport`},
		{"duplicate", block("x", ok) + block("x", ok),
			`a.hcl:5:8: Duplicate plugin; Plugin "x" is already defined at a.hcl:1:1`},
		{"args not strings", block("x", ok+"\nargs = [[1]]"),
			`a.hcl:4:8: Incorrect attribute value type`},
		{"unknown attribute", block("x", ok+"\nenv = {}"),
			`a.hcl:4:1: Unsupported argument`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			src := tc.src
			if !strings.Contains(src, "resource") {
				src += strings.Replace(pluginResource, "%s", "tcp", 1)
			}
			_, err := Parse("a.hcl", []byte(src), LoadOptions{})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error:\n%v\nwant it to contain:\n%s", err, tc.want)
			}
		})
	}
}
