package configs

import (
	"bytes"
	"fmt"
	"path/filepath"
	"strings"
	"unicode"
)

// Demo returns the HCL source of the demo cluster: resource "r0" with nodes
// alpha (id 0), bravo (1) and dr (2) listening on 127.0.0.1 at basePort,
// basePort+1 and basePort+2, their disks at dir/NAME.img with internal
// metadata, exported on unix:dir/NAME.nbd.sock, protocol C over tcp with
// shared secret "demo-secret", except alpha–dr: protocol A over quic with
// lz4. dir may be any path; basePort must be from 1 to 65533 for the result
// to load.
func Demo(dir string, basePort int) []byte {
	return demo(dir, basePort, "")
}

// DemoTLS is Demo with TLS on every connection: the CA at
// tlsDir/ca.crt, each node's certificate and key at tlsDir/NAME.crt and
// tlsDir/NAME.key, as `georepl tls init --out tlsDir` writes them. The
// shared secret stays, as a second factor.
func DemoTLS(dir string, basePort int, tlsDir string) []byte {
	return demo(dir, basePort, tlsDir)
}

func demo(dir string, basePort int, tlsDir string) []byte {
	var b bytes.Buffer
	b.WriteString(`# Demo cluster: three nodes on one machine. alpha and bravo replicate
# synchronously (protocol C); dr plays the remote site, asynchronous over QUIC.
resource "r0" {
  protocol = "C"

  net {
    transport     = "tcp"
    shared_secret = "demo-secret"
  }
`)
	if tlsDir != "" {
		fmt.Fprintf(&b, `
  tls {
    ca = %s
  }
`, hclString(filepath.Join(tlsDir, "ca.crt")))
	}
	for id, name := range []string{"alpha", "bravo", "dr"} {
		fmt.Fprintf(&b, `
  node %s {
    id        = %d
    address   = %s
    disk      = %s
    meta_disk = "internal"
    export    = %s
`, hclString(name), id,
			hclString(fmt.Sprintf("127.0.0.1:%d", basePort+id)),
			hclString(filepath.Join(dir, name+".img")),
			hclString("unix:"+filepath.Join(dir, name+".nbd.sock")))
		if tlsDir != "" {
			fmt.Fprintf(&b, `    tls {
      cert = %s
      key  = %s
    }
`, hclString(filepath.Join(tlsDir, name+".crt")), hclString(filepath.Join(tlsDir, name+".key")))
		}
		b.WriteString("  }\n")
	}
	b.WriteString(`
  connection "alpha" "dr" {
    protocol = "A"
    net {
      transport   = "quic"
      compression = "lz4"
    }
  }
}
`)
	return b.Bytes()
}

// hclString writes s as an HCL quoted string: backslash escapes for quotes,
// backslashes and control characters, and "$${" / "%%{" so that s is never
// read as a template.
func hclString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for i, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r == '\t':
			b.WriteString(`\t`)
		case unicode.IsControl(r):
			fmt.Fprintf(&b, `\u%04x`, r)
		case (r == '$' || r == '%') && strings.HasPrefix(s[i+1:], "{"):
			b.WriteRune(r)
			b.WriteRune(r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}
