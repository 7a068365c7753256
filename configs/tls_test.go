package configs

import (
	"strings"
	"testing"
)

const threeNodesTLS = `resource "r0" {
  tls {
    ca   = "/etc/georepl/tls/ca.crt"
    cert = "/etc/georepl/tls/node.crt"
    key  = "/etc/georepl/tls/node.key"
  }
  node "alpha" {
    id      = 0
    address = "10.0.0.1:7789"
    disk    = "/dev/a"
  }
  node "bravo" {
    id      = 1
    address = "10.0.0.2:7789"
    disk    = "/dev/b"
    tls {
      cert = "/srv/bravo.crt"
      key  = "/srv/bravo.key"
    }
  }
  node "dr" {
    id      = 2
    address = "10.0.0.3:7789"
    disk    = "/dev/c"
  }
  connection "alpha" "dr" {
    net {
      tls           = "off"
      shared_secret = "s"
    }
  }
}
`

func TestTLSBlocks(t *testing.T) {
	cfg, err := Parse("r0.hcl", []byte(threeNodesTLS), LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	r := cfg.Resources[0]
	alpha, _ := r.Node("alpha")
	bravo, _ := r.Node("bravo")
	if alpha.TLS == nil || alpha.TLS.CA != "/etc/georepl/tls/ca.crt" || alpha.TLS.Cert != "/etc/georepl/tls/node.crt" || alpha.TLS.Key != "/etc/georepl/tls/node.key" {
		t.Errorf("alpha's TLS files = %+v, want the resource's", alpha.TLS)
	}
	if bravo.TLS == nil || bravo.TLS.CA != "/etc/georepl/tls/ca.crt" || bravo.TLS.Cert != "/srv/bravo.crt" || bravo.TLS.Key != "/srv/bravo.key" {
		t.Errorf("bravo's TLS files = %+v, want its own cert and key, the resource's ca", bravo.TLS)
	}
	if got := bravo.TLS.Where("key"); got != "r0.hcl:18:7" {
		t.Errorf("bravo's key is at %s, want r0.hcl:18:7", got)
	}
	for _, tc := range []struct {
		a, b string
		want TLSMode
	}{{"alpha", "bravo", TLSRequired}, {"bravo", "dr", TLSRequired}, {"dr", "alpha", TLSOff}} {
		lk, err := r.Link(tc.a, tc.b)
		if err != nil {
			t.Fatal(err)
		}
		if lk.Net.TLS != tc.want {
			t.Errorf("%s-%s: tls = %v, want %v", tc.a, tc.b, lk.Net.TLS, tc.want)
		}
	}
}

func TestTLSWithoutBlockIsOff(t *testing.T) {
	cfg, err := Parse("r0.hcl", []byte(withoutTLS(`net { shared_secret = "s" }`)), LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	r := cfg.Resources[0]
	if r.Net.TLS != TLSOff || r.Nodes[0].TLS != nil {
		t.Errorf("without tls blocks: tls = %v, alpha's files %+v; want off, none", r.Net.TLS, r.Nodes[0].TLS)
	}
}

func TestTLSMissingFiles(t *testing.T) {
	for _, tc := range []struct {
		name, config, want string
	}{
		{"required without files", withoutTLS("net {\n    tls = \"required\"\n  }"),
			`r0.hcl:2:3: Missing TLS files; Node "alpha" has no tls files, but its connection to "bravo" requires TLS (tls = "required" at r0.hcl:13:5)`},
		{"no key anywhere", withoutTLS("tls {\n    ca   = \"/ca\"\n    cert = \"/c\"\n  }"),
			`r0.hcl:2:3: Missing TLS files; Node "alpha" has no tls key, but its connection to "bravo" requires TLS (the default once a tls block exists)`},
		{"one node without", strings.Replace(twoNodes, `disk    = "/dev/a"`, "disk    = \"/dev/a\"\n    tls {\n      ca   = \"/ca\"\n      cert = \"/c\"\n      key  = \"/k\"\n    }", 1) + "}\n",
			`r0.hcl:12:3: Missing TLS files; Node "bravo" has no tls files, but its connection to "alpha" requires TLS`},
		{"empty path", withoutTLS("tls {\n    ca   = \"\"\n  }"), `r0.hcl:13:12: Empty path; ca must name a file or device.`},
		{"bad mode", withoutTLS("net {\n    tls = \"on\"\n  }"), `tls = "on" is not valid; use one of "off", "required"`},
	} {
		_, err := Parse("r0.hcl", []byte(tc.config), LoadOptions{})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error containing %q", tc.name, err, tc.want)
		}
	}
}

// withoutTLS is withTwoNodes without its tls block.
func withoutTLS(extra string) string { return twoNodes + "  " + extra + "\n}\n" }

// TestUnauthenticatedRefused: a connection that neither TLS nor a shared
// secret authenticates is refused unless the configuration accepts it in
// so many words.
func TestUnauthenticatedRefused(t *testing.T) {
	_, err := Parse("r0.hcl", []byte(withoutTLS("")), LoadOptions{})
	want := `r0.hcl:1:1: Unauthenticated connection; The connection between "alpha" and "bravo" has neither TLS nor a shared_secret`
	if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "insecure = true") {
		t.Errorf("no tls, no secret: %v, want an error containing %q and naming insecure = true", err, want)
	}
	off := threeNodesTLS[:strings.LastIndex(threeNodesTLS, "}")] + "  connection \"bravo\" \"dr\" {\n    net { tls = \"off\" }\n  }\n}\n"
	_, err = Parse("r0.hcl", []byte(off), LoadOptions{})
	if err == nil || !strings.Contains(err.Error(), `r0.hcl:32:3: Unauthenticated connection; The connection between "bravo" and "dr"`) {
		t.Errorf("tls = \"off\" without a secret on one connection: %v, want it refused at its connection block", err)
	}
	for name, src := range map[string]string{
		"insecure":            withoutTLS("net { insecure = true }"),
		"secret":              withoutTLS("net { shared_secret = \"s\" }"),
		"insecure connection": withoutTLS("connection \"alpha\" \"bravo\" {\n    net { insecure = true }\n  }"),
	} {
		cfg, err := Parse("r0.hcl", []byte(src), LoadOptions{})
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		lk, _ := cfg.Resources[0].Link("alpha", "bravo")
		if lk.Net.Insecure != (name != "secret") {
			t.Errorf("%s: Insecure = %v", name, lk.Net.Insecure)
		}
	}
}
