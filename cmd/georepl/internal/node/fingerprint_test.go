package node

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/georepl/georepl/transports/nodetls"
)

// filePin is peer_fingerprint of the certificate in file: of the
// certificate, or of its public key.
func filePin(t *testing.T, file string, ofKey bool) string {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(b)
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(cert.Raw)
	if ofKey {
		sum = sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	}
	return nodetls.FormatFingerprint(sum[:])
}

// TestPeerFingerprintWithoutCA: nodes without a CA, known to each other
// by their certificates' pinned fingerprints (alpha's by its public key),
// connect; a node that presents another certificate than its pinned one
// (a valid one, naming it) is refused, both fingerprints logged, and the
// others stay connected.
func TestPeerFingerprintWithoutCA(t *testing.T) {
	c := newTLSCluster(t, "tcp")
	c.noCA = true
	pins := map[string]string{}
	for _, n := range tlsNodes {
		pins[n] = filePin(t, c.files(n).Cert, n == "alpha")
		c.nodeExtra[n] = fmt.Sprintf("    peer_fingerprint = %q", pins[n])
	}
	c.start(t, "alpha", nil)
	c.start(t, "bravo", nil)
	c.waitConnected(t, "alpha", "bravo")

	// dr's files change after its pin was taken: a certificate naming dr,
	// from the same CA, but not the pinned one.
	c.writeFiles(t, "dr", c.pki, "dr", time.Hour)
	presented := filePin(t, c.files("dr").Cert, false)
	c.start(t, "dr", nil)
	c.waitLog(t, "alpha", "refusing", "peer_fingerprint expects "+pins["dr"], presented, "peer_fingerprint is at")
	c.waitLog(t, "bravo", "refusing", "peer_fingerprint expects "+pins["dr"], presented)
	if got := c.peerConn(t, "alpha", "dr"); got == "Connected" {
		t.Fatal("alpha connected to dr with a certificate other than the pinned one")
	}
	if got := c.peerConn(t, "alpha", "bravo"); got != "Connected" {
		t.Fatalf("alpha and bravo are %s after refusing dr", got)
	}
}
