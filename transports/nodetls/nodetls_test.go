package nodetls_test

import (
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/georepl/georepl/transports/nodetls"
)

// write puts a CA and node's certificate and key into dir and returns
// their paths.
func write(t *testing.T, dir string, ca *nodetls.CA, node string, validity time.Duration, now time.Time) nodetls.Files {
	t.Helper()
	issued, err := ca.Issue(node, validity, now)
	if err != nil {
		t.Fatal(err)
	}
	f := nodetls.Files{CA: filepath.Join(dir, "ca.crt"), Cert: filepath.Join(dir, node+".crt"), Key: filepath.Join(dir, node+".key")}
	for path, b := range map[string][]byte{f.CA: ca.CertPEM, f.Cert: issued.CertPEM, f.Key: issued.KeyPEM} {
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

func newCA(t *testing.T) *nodetls.CA {
	t.Helper()
	ca, err := nodetls.NewCA("test CA", 24*time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func TestLoadAndVerifyPeer(t *testing.T) {
	dir := t.TempDir()
	ca := newCA(t)
	alpha, err := nodetls.Load(write(t, dir, ca, "alpha", time.Hour, time.Now()))
	if err != nil {
		t.Fatal(err)
	}
	if alpha.Node != "alpha" {
		t.Fatalf("Node = %q, want alpha", alpha.Node)
	}
	bravo, err := nodetls.Load(write(t, dir, ca, "bravo", time.Hour, time.Now()))
	if err != nil {
		t.Fatal(err)
	}
	chain := []*x509.Certificate{bravo.Leaf}
	for _, asServer := range []bool{false, true} {
		if err := alpha.VerifyPeer(chain, "bravo", asServer, nil); err != nil {
			t.Errorf("bravo's certificate where bravo is expected: %v", err)
		}
		err := alpha.VerifyPeer(chain, "dr", asServer, nil)
		if !errors.Is(err, nodetls.ErrWrongNode) || !strings.Contains(err.Error(), `"bravo"`) || !strings.Contains(err.Error(), `"dr"`) {
			t.Errorf("bravo's certificate where dr is expected: %v, want ErrWrongNode naming both", err)
		}
	}
}

func TestVerifyPeerRefusesOtherCAAndExpired(t *testing.T) {
	dir := t.TempDir()
	alpha, err := nodetls.Load(write(t, dir, newCA(t), "alpha", time.Hour, time.Now()))
	if err != nil {
		t.Fatal(err)
	}
	other := t.TempDir()
	stranger, err := nodetls.Load(write(t, other, newCA(t), "bravo", time.Hour, time.Now()))
	if err != nil {
		t.Fatal(err)
	}
	err = alpha.VerifyPeer([]*x509.Certificate{stranger.Leaf}, "bravo", false, nil)
	if err == nil || !strings.Contains(err.Error(), "unknown authority") {
		t.Errorf("another CA's certificate: %v, want an unknown authority error", err)
	}
	if err := alpha.VerifyPeer(nil, "bravo", false, nil); err == nil || !strings.Contains(err.Error(), "no certificate") {
		t.Errorf("no certificate: %v", err)
	}

	ca := newCA(t)
	old := write(t, t.TempDir(), ca, "bravo", time.Minute, time.Now().Add(-2*time.Hour))
	if _, err := nodetls.Load(old); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Errorf("Load of an expired certificate: %v, want an error saying expired", err)
	}
}

func TestLoadRefusesReadableKey(t *testing.T) {
	dir := t.TempDir()
	f := write(t, dir, newCA(t), "alpha", time.Hour, time.Now())
	for _, mode := range []os.FileMode{0o644, 0o640, 0o604} {
		if err := os.Chmod(f.Key, mode); err != nil {
			t.Fatal(err)
		}
		_, err := nodetls.Load(f)
		var fe *nodetls.FileError
		if !errors.Is(err, nodetls.ErrKeyReadable) || !errors.As(err, &fe) || fe.Field != "key" || !strings.Contains(err.Error(), "chmod 600") {
			t.Errorf("key mode %04o: %v, want ErrKeyReadable on the key file", mode, err)
		}
	}
}

func TestLoadNamesTheFileAtFault(t *testing.T) {
	dir := t.TempDir()
	f := write(t, dir, newCA(t), "alpha", time.Hour, time.Now())
	for field, broken := range map[string]nodetls.Files{
		"ca":   {CA: filepath.Join(dir, "missing"), Cert: f.Cert, Key: f.Key},
		"cert": {CA: f.CA, Cert: filepath.Join(dir, "missing"), Key: f.Key},
		"key":  {CA: f.CA, Cert: f.Cert, Key: filepath.Join(dir, "missing")},
	} {
		_, err := nodetls.Load(broken)
		var fe *nodetls.FileError
		if !errors.As(err, &fe) || fe.Field != field || !errors.Is(err, os.ErrNotExist) {
			t.Errorf("missing %s: %v, want a FileError on %s", field, err, field)
		}
	}
	// A certificate of another CA than the configured one.
	other := write(t, t.TempDir(), newCA(t), "alpha", time.Hour, time.Now())
	_, err := nodetls.Load(nodetls.Files{CA: f.CA, Cert: other.Cert, Key: other.Key})
	if err == nil || !strings.Contains(err.Error(), "does not verify against the ca") {
		t.Errorf("certificate of another CA: %v", err)
	}
}
