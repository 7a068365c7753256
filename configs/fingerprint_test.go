package configs

import (
	"crypto/sha256"
	"fmt"
	"strings"
	"testing"
)

// pinnedNodes is a resource of two nodes without a CA: each node's tls
// block has its certificate and key, and its peer_fingerprint is what its
// peer requires of that certificate.
func pinnedNodes(alphaPin, bravoPin string) string {
	return fmt.Sprintf(`resource "r0" {
  tls {
    cert = "/etc/georepl/tls/node.crt"
    key  = "/etc/georepl/tls/node.key"
  }
  node "alpha" {
    id      = 0
    address = "10.0.0.1:7789"
    disk    = "/dev/a"
    %s
  }
  node "bravo" {
    id      = 1
    address = "10.0.0.2:7789"
    disk    = "/dev/b"
    %s
  }
}
`, alphaPin, bravoPin)
}

func TestPeerFingerprint(t *testing.T) {
	sum := sha256.Sum256([]byte("alpha's certificate"))
	var hexColons []string
	for _, b := range sum {
		hexColons = append(hexColons, fmt.Sprintf("%02X", b))
	}
	pin := "sha256:" + strings.Join(hexColons, ":")
	for _, spelling := range []string{pin, strings.ToLower(pin), "SHA256:" + strings.Join(hexColons, "")} {
		cfg, err := Parse("r0.hcl", []byte(pinnedNodes(`peer_fingerprint = "`+spelling+`"`, `peer_fingerprint = "`+pin+`"`)), LoadOptions{})
		if err != nil {
			t.Fatalf("peer_fingerprint = %q: %v", spelling, err)
		}
		alpha, _ := cfg.Resources[0].Node("alpha")
		if alpha.PeerFingerprint == nil || *alpha.PeerFingerprint != sum {
			t.Errorf("peer_fingerprint = %q gives %x", spelling, alpha.PeerFingerprint)
		}
		if got := where(alpha.PeerFingerprintAt); got != "r0.hcl:10:5" {
			t.Errorf("peer_fingerprint is at %s, want r0.hcl:10:5", got)
		}
	}
	for _, tc := range []struct {
		name, alpha, bravo, want string
	}{
		{"not sha256", `peer_fingerprint = "sha1:00"`, `peer_fingerprint = "` + pin + `"`,
			`r0.hcl:10:24: Invalid peer_fingerprint; peer_fingerprint = "sha1:00" must be "sha256:" followed by 32 bytes in hexadecimal`},
		{"short", `peer_fingerprint = "` + pin[:len(pin)-3] + `"`, `peer_fingerprint = "` + pin + `"`, `Invalid peer_fingerprint`},
		{"not hex", `peer_fingerprint = "sha256:` + strings.Repeat("zz", 32) + `"`, `peer_fingerprint = "` + pin + `"`, `Invalid peer_fingerprint`},
		// Without a CA, bravo's certificate is authenticated by nothing
		// unless alpha can pin it.
		{"peer not pinned without a CA", `peer_fingerprint = "` + pin + `"`, "",
			`r0.hcl:6:3: Missing TLS files; Node "alpha" has no tls ca, but its connection to "bravo" requires TLS (the default once a tls block exists): set ca in the resource's tls block or in the node's, or give node "bravo" a peer_fingerprint`},
	} {
		_, err := Parse("r0.hcl", []byte(pinnedNodes(tc.alpha, tc.bravo)), LoadOptions{})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error containing %q", tc.name, err, tc.want)
		}
	}
}
