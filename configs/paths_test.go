package configs

import (
	"strings"
	"testing"
)

const pathsConfig = `resource "r0" {
  node "alpha" {
    id = 0
    address = "10.0.0.1:7789"
    disk = "/dev/a"
  }
  node "dr" {
    id = 1
    address = "192.0.2.10:7789"
    disk = "/dev/b"
  }
  net {
    insecure = true
  }
  connection "alpha" "dr" {
    path {
      alpha = "10.0.0.1:7789"
      dr    = "192.0.2.10:7789"
    }
    path {
      alpha = "10.1.0.1:7789"
      dr    = "198.51.100.10:7789"
    }
  }
}
`

func TestConnectionPaths(t *testing.T) {
	cfg, err := Parse("paths.hcl", []byte(pathsConfig), LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rc, _ := cfg.Resource("r0")
	paths := rc.Paths("alpha", "dr")
	want := []Path{{"10.0.0.1:7789", "192.0.2.10:7789"}, {"10.1.0.1:7789", "198.51.100.10:7789"}}
	if len(paths) != 2 || paths[0] != want[0] || paths[1] != want[1] {
		t.Fatalf("alpha-dr paths %v, want %v", paths, want)
	}
	back := rc.Paths("dr", "alpha")
	if back[1] != (Path{"198.51.100.10:7789", "10.1.0.1:7789"}) {
		t.Fatalf("dr-alpha paths %v: not in the order of the arguments", back)
	}
}

func TestConnectionPathRefusals(t *testing.T) {
	for _, tc := range []struct{ path, want string }{
		{`alpha = "10.0.0.1:7789"`, `dr = "HOST:PORT" is missing`},
		{`alpha = "10.0.0.1:7789"` + "\n" + `bravo = "10.0.0.2:1"`, `"bravo" is neither`},
		{`alpha = "10.0.0.1"` + "\n" + `dr = "10.0.0.2:1"`, `must be HOST:PORT`},
		{`alpha = "10.0.0.1:7789"` + "\n" + `dr = "192.0.2.10:7789"` + "\n}\npath {\n" + `alpha = "10.0.0.1:7789"` + "\n" + `dr = "192.0.2.10:7789"`, "Duplicate path"},
	} {
		src := strings.Replace(pathsConfig, `path {
      alpha = "10.0.0.1:7789"
      dr    = "192.0.2.10:7789"
    }`, "path {\n"+tc.path+"\n}", 1)
		_, err := Parse("paths.hcl", []byte(src), LoadOptions{})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("path {%s}: error %v, want one with %q", tc.path, err, tc.want)
		}
	}
}
