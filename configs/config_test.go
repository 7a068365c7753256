package configs

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"

	"github.com/georepl/georepl/core/wire"
	"github.com/georepl/georepl/protocols"
)

// threeNodes has per-pair overrides of different shapes: alpha–dr sets the
// protocol and some net fields, bravo–dr (written in reverse order) sets a
// net field to the value that is also the built-in default, alpha–bravo has
// no block.
const threeNodes = `resource "r0" {
  protocol = "B"
  net {
    compression = "lz4"
    timeout     = "9s"
  }
  node "alpha" {
    id      = 2
    address = "10.0.0.1:7789"
    disk    = "/dev/a"
  }
  node "bravo" {
    id      = 0
    address = "10.0.0.2:7789"
    disk    = "/dev/b"
  }
  node "dr" {
    id      = 1
    address = "10.0.0.3:7789"
    disk    = "/dev/c"
  }
  connection "alpha" "dr" {
    protocol = "A"
    net {
      transport = "quic"
      timeout   = "30s"
    }
  }
  connection "dr" "bravo" {
    net {
      compression = "none"
    }
  }
` + testTLS + `}
`

func loadThreeNodes(t *testing.T) *Resource {
	t.Helper()
	cfg, err := Parse("three.hcl", []byte(threeNodes), LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return cfg.Resources[0]
}

func TestLink(t *testing.T) {
	r := loadThreeNodes(t)
	base := r.Net
	if base.Compression != wire.CompressionLZ4 || base.Timeout != 9*time.Second || base.Transport != "tcp" {
		t.Fatalf("resource net = %+v", base)
	}
	alphaDR := base
	alphaDR.Transport, alphaDR.Timeout = "quic", 30*time.Second
	bravoDR := base
	bravoDR.Compression = wire.CompressionNone // set explicitly, although it equals the built-in default
	for _, tc := range []struct {
		a, b string
		want Link
	}{
		{"alpha", "bravo", Link{Protocol: protocols.B, Net: base}},
		{"bravo", "alpha", Link{Protocol: protocols.B, Net: base}},
		{"alpha", "dr", Link{Protocol: protocols.A, Net: alphaDR}},
		{"dr", "alpha", Link{Protocol: protocols.A, Net: alphaDR}},
		{"bravo", "dr", Link{Protocol: protocols.B, Net: bravoDR}},
		{"dr", "bravo", Link{Protocol: protocols.B, Net: bravoDR}},
	} {
		got, err := r.Link(tc.a, tc.b)
		if err != nil || got != tc.want {
			t.Errorf("Link(%q, %q) = %+v, %v; want %+v", tc.a, tc.b, got, err, tc.want)
		}
	}
}

func TestLinkErrors(t *testing.T) {
	r := loadThreeNodes(t)
	if _, err := r.Link("alpha", "alpha"); err == nil || !strings.Contains(err.Error(), "itself") {
		t.Errorf("Link(alpha, alpha) error = %v; want one about a node and itself", err)
	}
	if _, err := r.Link("alpha", "dx"); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), `did you mean "dr"?`) {
		t.Errorf("Link(alpha, dx) error = %v; want ErrNotFound suggesting dr", err)
	}
}

func TestLookups(t *testing.T) {
	r := loadThreeNodes(t)
	var ids []int
	for _, p := range r.Peers("alpha") {
		ids = append(ids, p.ID)
	}
	if len(ids) != 2 || ids[0] != 0 || ids[1] != 1 {
		t.Errorf("Peers(alpha) ids = %v; want [0 1] (bravo, dr by id)", ids)
	}
	if got := r.Peers("zulu"); got != nil {
		t.Errorf("Peers(zulu) = %v; want nil", got)
	}
	if n := r.NodeByID(1); n == nil || n.Name != "dr" {
		t.Errorf("NodeByID(1) = %v; want dr", n)
	}
	if n := r.NodeByID(3); n != nil {
		t.Errorf("NodeByID(3) = %v; want nil", n)
	}
	if n, err := r.Node("bravo"); err != nil || n.ID != 0 {
		t.Errorf("Node(bravo) = %v, %v", n, err)
	}
	_, err := r.Node("brav")
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), `did you mean "bravo"?`) || !strings.Contains(err.Error(), `"alpha", "bravo", "dr"`) {
		t.Errorf("Node(brav) error = %v; want ErrNotFound suggesting bravo and listing nodes", err)
	}
	_, err = r.Node("q")
	if err == nil || strings.Contains(err.Error(), "did you mean") {
		t.Errorf("Node(q) error = %v; want no suggestion for a name unlike any node", err)
	}
}

func TestConfigResource(t *testing.T) {
	cfg, err := Parse("r.hcl", []byte(threeNodes), LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := cfg.Resource("r0"); err != nil || r.Name != "r0" {
		t.Errorf("Resource(r0) = %v, %v", r, err)
	}
	_, err = cfg.Resource("R0")
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), `did you mean "r0"?`) || !strings.Contains(err.Error(), `resources: "r0"`) {
		t.Errorf("Resource(R0) error = %v", err)
	}
}

func TestConnectionJoins(t *testing.T) {
	c := &Connection{Nodes: [2]string{"alpha", "dr"}}
	for _, tc := range []struct {
		a, b string
		want bool
	}{
		{"alpha", "dr", true},
		{"dr", "alpha", true},
		{"alpha", "bravo", false},
		{"alpha", "alpha", false},
	} {
		if got := c.Joins(tc.a, tc.b); got != tc.want {
			t.Errorf("Joins(%q, %q) = %v; want %v", tc.a, tc.b, got, tc.want)
		}
	}
}

func TestExamples(t *testing.T) {
	// Each embedded example loads on its own...
	names, err := fs.Glob(Examples, "examples/*.hcl")
	if err != nil || len(names) < 2 {
		t.Fatalf("examples: %v, %v", names, err)
	}
	for _, name := range names {
		src, err := fs.ReadFile(Examples, name)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Parse(path.Base(name), src, LoadOptions{}); err != nil {
			t.Errorf("example %s: %v", name, err)
		}
	}
	// ... and all of them together form one configuration directory.
	cfg, err := LoadDir("examples", LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Resources) != len(names) {
		t.Errorf("examples directory has %d resources; want %d", len(cfg.Resources), len(names))
	}
	r, err := cfg.Resource("r0")
	if err != nil {
		t.Fatal(err)
	}
	for _, pair := range [][2]string{{"alpha", "dr"}, {"bravo", "dr"}} {
		link, err := r.Link(pair[0], pair[1])
		if err != nil || link.Protocol != protocols.A || link.Net.Transport != "quic" || link.Net.MaxBuffer != 1<<30 || link.Net.SharedSecret != "change-me" {
			t.Errorf("r0 %v link = %+v, %v; want protocol A over quic, 1GiB buffer, resource secret", pair, link, err)
		}
	}
	if link, _ := r.Link("alpha", "bravo"); link.Protocol != protocols.C || link.Net.Transport != "tcp" {
		t.Errorf("r0 alpha–bravo link = %+v; want protocol C over tcp", link)
	}
}

func TestDemo(t *testing.T) {
	dir := `/tmp/demo "${x}" %{y} \ end`
	cfg, err := Parse("demo.hcl", Demo(dir, 7000), LoadOptions{})
	if err != nil {
		t.Fatalf("%v\n%s", err, Demo(dir, 7000))
	}
	r, err := cfg.Resource("r0")
	if err != nil {
		t.Fatal(err)
	}
	for id, name := range []string{"alpha", "bravo", "dr"} {
		n, err := r.Node(name)
		if err != nil {
			t.Fatal(err)
		}
		want := Node{
			Name:       name,
			ID:         id,
			Address:    "127.0.0.1:" + []string{"7000", "7001", "7002"}[id],
			Disk:       dir + "/" + name + ".img",
			MetaDisk:   "internal",
			ResyncUndo: "none",
			Export:     "unix:" + dir + "/" + name + ".nbd.sock",
			UblkQueues: 1, UblkQueueDepth: 128,
			Failover:  NodeFailover{AutoPromote: true},
			DeclRange: n.DeclRange,
		}
		if *n != want {
			t.Errorf("node %s = %+v; want %+v", name, *n, want)
		}
	}
	if r.Protocol != protocols.C || r.Net.Transport != "tcp" || r.Net.SharedSecret != "demo-secret" {
		t.Errorf("demo defaults: protocol %q net %+v", r.Protocol, r.Net)
	}
	link, err := r.Link("dr", "alpha")
	if err != nil || link.Protocol != protocols.A || link.Net.Transport != "quic" || link.Net.Compression != wire.CompressionLZ4 || link.Net.SharedSecret != "demo-secret" {
		t.Errorf("demo alpha–dr link = %+v, %v", link, err)
	}
	if link, _ := r.Link("bravo", "dr"); link.Protocol != protocols.C || link.Net.Transport != "tcp" {
		t.Errorf("demo bravo–dr link = %+v; want the defaults", link)
	}
}

func TestHCLString(t *testing.T) {
	for _, s := range []string{"", "plain", `q"uote`, `back\slash`, "${interp}", "%{directive}", "$$ %% $", "line\nbreak\ttab\r\x01", "ünïcode ✓"} {
		expr, diags := hclsyntax.ParseExpression([]byte(hclString(s)), "s.hcl", hcl.InitialPos)
		if diags.HasErrors() {
			t.Errorf("hclString(%q) = %s does not parse: %v", s, hclString(s), diags)
			continue
		}
		v, diags := expr.Value(nil)
		if diags.HasErrors() || v.AsString() != s {
			t.Errorf("hclString(%q) = %s reads back as %#v, %v", s, hclString(s), v, diags)
		}
	}
}

// TestAdminGuideShowsExample keeps the example in the configuration
// reference identical to the file that ships and is tested here.
func TestAdminGuideShowsExample(t *testing.T) {
	guide, err := os.ReadFile("../docs/admin-guide.md")
	if err != nil {
		t.Fatal(err)
	}
	example, err := fs.ReadFile(Examples, "examples/r0.hcl")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(guide), "```hcl\n"+string(example)+"```") {
		t.Errorf("docs/admin-guide.md does not show examples/r0.hcl verbatim in an hcl code block")
	}
}

func TestDemoTLS(t *testing.T) {
	dir, tlsDir := `/tmp/demo "${x}"`, "/tmp/demo tls"
	cfg, err := Parse("demo.hcl", DemoTLS(dir, 7000, tlsDir), LoadOptions{})
	if err != nil {
		t.Fatalf("%v\n%s", err, DemoTLS(dir, 7000, tlsDir))
	}
	r, _ := cfg.Resource("r0")
	for _, name := range []string{"alpha", "bravo", "dr"} {
		n, _ := r.Node(name)
		if n.TLS == nil || n.TLS.CA != tlsDir+"/ca.crt" || n.TLS.Cert != tlsDir+"/"+name+".crt" || n.TLS.Key != tlsDir+"/"+name+".key" {
			t.Errorf("node %s's TLS files = %+v", name, n.TLS)
		}
	}
	for _, pair := range [][2]string{{"alpha", "bravo"}, {"alpha", "dr"}, {"bravo", "dr"}} {
		if link, _ := r.Link(pair[0], pair[1]); link.Net.TLS != TLSRequired || link.Net.SharedSecret != "demo-secret" {
			t.Errorf("demo %s–%s: tls %v, secret %q; want required and the demo secret", pair[0], pair[1], link.Net.TLS, link.Net.SharedSecret)
		}
	}
}

func TestDemoAutoFailover(t *testing.T) {
	dir, tlsDir := "/tmp/demo", "/tmp/demo/tls"
	src := DemoAutoFailover(dir, 7000, tlsDir, 7100)
	cfg, err := Parse("demo.hcl", src, LoadOptions{})
	if err != nil {
		t.Fatalf("%v\n%s", err, src)
	}
	r, _ := cfg.Resource("r0")
	if r.Failover.Mode != FailoverAuto || r.Failover.DetectionTimeout != time.Second {
		t.Fatalf("failover %+v, want mode auto, detection_timeout 1s", r.Failover)
	}
	for id, name := range []string{"alpha", "bravo", "dr"} {
		n, _ := r.Node(name)
		want := NodeFailover{Address: fmt.Sprintf("127.0.0.1:%d", 7100+id), Dir: dir + "/" + name + ".failover", AutoPromote: name != "dr"}
		if n.Failover.Address != want.Address || n.Failover.Dir != want.Dir || n.Failover.AutoPromote != want.AutoPromote {
			t.Errorf("node %s's failover = %+v, want %+v", name, n.Failover, want)
		}
		if n.TLS == nil {
			t.Errorf("node %s has no TLS", name)
		}
	}
}
