package nodetls_test

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/georepl/georepl/transports/nodetls"
)

// writeExport puts an export CA, the export's certificate (for
// 127.0.0.1) and key into dir and returns their paths.
func writeExport(t *testing.T, dir string, ca *nodetls.CA, validity time.Duration, now time.Time) nodetls.Files {
	t.Helper()
	issued, err := ca.IssueExport("alpha export", []string{"127.0.0.1", "nbd.example.com"}, validity, now)
	if err != nil {
		t.Fatal(err)
	}
	f := nodetls.Files{CA: filepath.Join(dir, "export-ca.crt"), Cert: filepath.Join(dir, "export.crt"), Key: filepath.Join(dir, "export.key")}
	for path, b := range map[string][]byte{f.CA: ca.CertPEM, f.Cert: issued.CertPEM, f.Key: issued.KeyPEM} {
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

// handshake runs a TLS handshake between server and a client presenting
// client (if not nil) that trusts roots; it returns the server's error.
func handshake(t *testing.T, server *tls.Config, roots *x509.CertPool, client *nodetls.Issued) error {
	t.Helper()
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	config := &tls.Config{RootCAs: roots, ServerName: "127.0.0.1"}
	if client != nil {
		pair, err := tls.X509KeyPair(client.CertPEM, client.KeyPEM)
		if err != nil {
			t.Fatal(err)
		}
		config.Certificates = []tls.Certificate{pair}
	}
	done := make(chan error, 1)
	go func() {
		c := tls.Client(b, config)
		err := c.Handshake()
		if err == nil {
			// Under TLS 1.3 the server's verdict on the client's
			// certificate arrives with the first read.
			_, err = c.Read(make([]byte, 1))
		}
		b.Close()
		done <- err
	}()
	s := tls.Server(a, server)
	err := s.Handshake()
	if err == nil {
		s.Write([]byte{1})
	}
	a.Close()
	<-done
	return err
}

func TestLoadExport(t *testing.T) {
	dir := t.TempDir()
	ca := newCA(t)
	e, err := nodetls.LoadExport(writeExport(t, dir, ca, time.Hour, time.Now()))
	if err != nil {
		t.Fatal(err)
	}
	if got := e.Leaf.DNSNames; len(got) != 1 || got[0] != "nbd.example.com" || len(e.Leaf.IPAddresses) != 1 {
		t.Errorf("the export's certificate names %v %v", got, e.Leaf.IPAddresses)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(ca.CertPEM)
	app, err := ca.IssueClient("backup-app", time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := handshake(t, e.ServerConfig(), roots, &app); err != nil {
		t.Fatalf("a client certificate of the export's CA: %v", err)
	}
	other := newCA(t)
	stranger, err := other.IssueClient("intruder", time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	node, err := other.Issue("alpha", time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	expired, err := ca.IssueClient("old-app", time.Hour, time.Now().Add(-3*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	for name, client := range map[string]*nodetls.Issued{
		"no client certificate":            nil,
		"another CA's client certificate":  &stranger,
		"a node certificate of another CA": &node,
		"an expired client certificate":    &expired,
	} {
		if err := handshake(t, e.ServerConfig(), roots, client); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestLoadExportRefusals(t *testing.T) {
	ca := newCA(t)
	dir := t.TempDir()
	f := writeExport(t, dir, ca, time.Hour, time.Now())
	if err := os.Chmod(f.Key, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := nodetls.LoadExport(f)
	var fe *nodetls.FileError
	if !errors.As(err, &fe) || fe.Field != "key" || !errors.Is(err, nodetls.ErrKeyReadable) {
		t.Errorf("world-readable key: %v, want a key FileError wrapping ErrKeyReadable", err)
	}

	f = writeExport(t, t.TempDir(), ca, time.Hour, time.Now().Add(-3*time.Hour))
	if _, err := nodetls.LoadExport(f); !errors.As(err, &fe) || fe.Field != "cert" || !strings.Contains(err.Error(), "expired") {
		t.Errorf("expired certificate: %v", err)
	}

	// A client certificate cannot serve as the export's.
	f = writeExport(t, t.TempDir(), ca, time.Hour, time.Now())
	client, err := ca.IssueClient("app", time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(f.Cert, client.CertPEM, 0o600)
	os.WriteFile(f.Key, client.KeyPEM, 0o600)
	if _, err := nodetls.LoadExport(f); !errors.As(err, &fe) || fe.Field != "cert" || !strings.Contains(err.Error(), "serverAuth") {
		t.Errorf("a client certificate as the export's: %v", err)
	}
}
