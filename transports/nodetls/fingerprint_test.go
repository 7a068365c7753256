package nodetls_test

import (
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/georepl/georepl/transports/nodetls"
)

// TestPinnedWithoutCA: without a ca file a node's identity has no roots;
// its peers' certificates are then checked against their pinned
// fingerprints, of the certificate or of its public key.
func TestPinnedWithoutCA(t *testing.T) {
	dir := t.TempDir()
	f := write(t, dir, newCA(t), "alpha", time.Hour, time.Now())
	f.CA = ""
	alpha, err := nodetls.Load(f)
	if err != nil {
		t.Fatalf("Load without a CA: %v", err)
	}
	if alpha.Roots != nil {
		t.Fatal("an identity without a CA has roots")
	}
	bravo, err := nodetls.Load(write(t, t.TempDir(), newCA(t), "bravo", time.Hour, time.Now()))
	if err != nil {
		t.Fatal(err)
	}
	leaf := bravo.Leaf
	certPin := sha256.Sum256(leaf.Raw)
	keyPin := sha256.Sum256(leaf.RawSubjectPublicKeyInfo)
	for name, pin := range map[string][]byte{"certificate": certPin[:], "public key": keyPin[:]} {
		if err := alpha.VerifyPeer([]*x509.Certificate{leaf}, "bravo", false, pin); err != nil {
			t.Errorf("bravo's certificate pinned by its %s: %v", name, err)
		}
	}
	other := sha256.Sum256([]byte("another certificate"))
	err = alpha.VerifyPeer([]*x509.Certificate{leaf}, "bravo", true, other[:])
	if !errors.Is(err, nodetls.ErrFingerprint) || !strings.Contains(err.Error(), nodetls.FormatFingerprint(other[:])) ||
		!strings.Contains(err.Error(), nodetls.FormatFingerprint(certPin[:])) || !strings.Contains(err.Error(), nodetls.FormatFingerprint(keyPin[:])) {
		t.Errorf("a certificate that is not the pinned one: %v, want ErrFingerprint naming the expected and presented fingerprints", err)
	}
	if err := alpha.VerifyPeer([]*x509.Certificate{leaf}, "bravo", false, nil); err == nil || !strings.Contains(err.Error(), "no ca") {
		t.Errorf("no CA and no pin: %v, want refused (nothing would authenticate the peer)", err)
	}
	// The name still counts: a pinned certificate naming another node is
	// refused too.
	if err := alpha.VerifyPeer([]*x509.Certificate{leaf}, "dr", false, certPin[:]); !errors.Is(err, nodetls.ErrWrongNode) {
		t.Errorf("the pinned certificate where dr is expected: %v, want ErrWrongNode", err)
	}
	// With a CA, a pin is a further condition.
	ca := newCA(t)
	withCA, err := nodetls.Load(write(t, t.TempDir(), ca, "alpha", time.Hour, time.Now()))
	if err != nil {
		t.Fatal(err)
	}
	charlie, err := nodetls.Load(write(t, t.TempDir(), ca, "charlie", time.Hour, time.Now()))
	if err != nil {
		t.Fatal(err)
	}
	if err := withCA.VerifyPeer([]*x509.Certificate{charlie.Leaf}, "charlie", false, other[:]); !errors.Is(err, nodetls.ErrFingerprint) {
		t.Errorf("a valid certificate of the CA that is not the pinned one: %v, want ErrFingerprint", err)
	}
}
