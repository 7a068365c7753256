package configs

import (
	"testing"

	"github.com/georepl/georepl/core/wire"
)

// TestCsumsPerConnection: csums in the resource's net block is every
// connection's default, and a connection block overrides it for its pair.
func TestCsumsPerConnection(t *testing.T) {
	src := twoNodes + `  node "dr" {
    id      = 2
    address = "10.0.0.3:7789"
    disk    = "/dev/c"
  }
  net { csums = "crc32c" }
  connection "alpha" "dr" {
    net { csums = "sha256" }
  }
` + testTLS + `}
`
	cfg, err := Parse("r0.hcl", []byte(src), LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	r := cfg.Resources[0]
	for _, tc := range []struct {
		a, b string
		want wire.Csum
	}{
		{"alpha", "bravo", wire.CsumCRC32C}, {"bravo", "dr", wire.CsumCRC32C}, {"dr", "alpha", wire.CsumSHA256},
	} {
		l, err := r.Link(tc.a, tc.b)
		if err != nil {
			t.Fatal(err)
		}
		if l.Net.Csums != tc.want {
			t.Errorf("%s-%s: csums %q, want %q", tc.a, tc.b, l.Net.Csums, tc.want)
		}
	}
}
