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
	return demo(dir, basePort, "", 0)
}

// DemoTLS is Demo with TLS on every connection: the CA at
// tlsDir/ca.crt, each node's certificate and key at tlsDir/NAME.crt and
// tlsDir/NAME.key, as `georepl tls init --out tlsDir` writes them. The
// shared secret stays, as a second factor.
func DemoTLS(dir string, basePort int, tlsDir string) []byte {
	return demo(dir, basePort, tlsDir, 0)
}

// DemoAutoFailover is DemoTLS under automatic failover (failover { mode =
// "auto" }, detection_timeout 1s): each node votes in the consensus log at
// 127.0.0.1:failoverPort+id, its part of the log in dir/NAME.failover;
// dr, the remote site, is never promoted automatically (auto_promote =
// false). failoverPort must be from 1 to 65533.
func DemoAutoFailover(dir string, basePort int, tlsDir string, failoverPort int) []byte {
	return demo(dir, basePort, tlsDir, failoverPort)
}

func demo(dir string, basePort int, tlsDir string, failoverPort int) []byte {
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
	if failoverPort != 0 {
		b.WriteString(`
  # alpha, bravo and dr vote in a consensus log of who is Primary: when the
  # Primary is lost for detection_timeout, the others promote bravo (or
  # alpha); dr, the remote site, only by an operator's hand.
  failover {
    mode              = "auto"
    detection_timeout = "1s"
  }
`)
	}
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
		if failoverPort != 0 {
			fmt.Fprintf(&b, `    failover {
      address = %s
      dir     = %s
`, hclString(fmt.Sprintf("127.0.0.1:%d", failoverPort+id)), hclString(filepath.Join(dir, name+".failover")))
			if name == "dr" {
				b.WriteString("      auto_promote = false\n")
			}
			b.WriteString("    }\n")
		}
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
