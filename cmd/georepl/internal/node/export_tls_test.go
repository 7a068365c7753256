package node

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/georepl/georepl/cmd/georepl/internal/checker"
	"github.com/georepl/georepl/kmod/nbd"
	"github.com/georepl/georepl/transports/nodetls"
)

// TestExportTLS: alpha's export with export_tls serves only TLS clients
// with a certificate of the export's CA (a node certificate of the
// resource's CA is refused: nodes are not export clients), and a reload
// gives new clients the new export certificate; a certificate that
// expires within 30 days is a warning at each load.
func TestExportTLS(t *testing.T) {
	c := newTLSCluster(t, "tcp")
	port, err := checker.FreePorts(1)
	if err != nil {
		t.Fatal(err)
	}
	exportCA, err := nodetls.NewCA("export CA", 24*time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	f := nodetls.Files{CA: filepath.Join(c.dir, "clients-ca.crt"), Cert: filepath.Join(c.dir, "export.crt"), Key: filepath.Join(c.dir, "export.key")}
	writeExport := func() *x509.Certificate {
		issued, err := exportCA.IssueExport("alpha export", []string{"127.0.0.1"}, time.Hour, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		for path, b := range map[string][]byte{f.CA: exportCA.CertPEM, f.Cert: issued.CertPEM, f.Key: issued.KeyPEM} {
			os.Remove(path)
			if err := os.WriteFile(path, b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		pair, err := tls.X509KeyPair(issued.CertPEM, issued.KeyPEM)
		if err != nil {
			t.Fatal(err)
		}
		return pair.Leaf
	}
	first := writeExport()
	spec := fmt.Sprintf("tcp:127.0.0.1:%d", port)
	c.nodeExtra["alpha"] = fmt.Sprintf("    export = %q\n    export_tls {\n      ca = %q\n      cert = %q\n      key = %q\n    }", spec, f.CA, f.Cert, f.Key)
	c.start(t, "alpha", nil)

	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(exportCA.CertPEM)
	app, err := exportCA.IssueClient("backup-app", time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	appPair, err := tls.X509KeyPair(app.CertPEM, app.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	// dial dials the export with TLS presenting certs; it returns the
	// export's certificate and the dial's error.
	dial := func(certs ...tls.Certificate) (*x509.Certificate, error) {
		var seen *x509.Certificate
		config := &tls.Config{RootCAs: roots, Certificates: certs, VerifyConnection: func(cs tls.ConnectionState) error {
			seen = cs.PeerCertificates[0]
			return nil
		}}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		client, err := nbd.DialTLS(ctx, spec, "r0", config)
		if err == nil {
			client.Close()
		}
		return seen, err
	}

	// alpha is Secondary: a client that passed TLS reaches the lookup,
	// which refuses it with the reason.
	seen, err := dial(appPair)
	var exportErr *nbd.ExportError
	if !errors.As(err, &exportErr) || !strings.Contains(exportErr.Message, "Secondary") {
		t.Fatalf("a client of the export's CA: %v, want through TLS to the Secondary refusal", err)
	}
	if !seen.Equal(first) {
		t.Fatal("the export presented another certificate than export_tls's")
	}
	issued, err := c.pki.CA.Issue("bravo", time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	nodePair, err := tls.X509KeyPair(issued.CertPEM, issued.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	for name, certs := range map[string][]tls.Certificate{"no client certificate": nil, "a node certificate": {nodePair}} {
		if _, err := dial(certs...); err == nil || errors.As(err, &exportErr) {
			t.Errorf("%s: %v, want refused during TLS", name, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := nbd.Dial(ctx, spec, "r0"); !errors.As(err, &exportErr) || !strings.Contains(exportErr.Message, "requires TLS") {
		t.Errorf("a plaintext client: %v, want told that TLS is required", err)
	}

	// status names the export's certificate, the one clients get.
	checkStatus := func(want *x509.Certificate) {
		t.Helper()
		sts, err := c.daemons["alpha"].StatusNow("r0")
		if err != nil {
			t.Fatal(err)
		}
		e := sts[0].ExportTLS
		sum := sha256.Sum256(want.Raw)
		if e == nil || e.Mode != "required" || e.Fingerprint != nodetls.FormatFingerprint(sum[:]) || e.Subject != "CN=alpha export" ||
			fmt.Sprint(e.Names) != "[127.0.0.1]" || e.ValidUntil == nil || !e.ValidUntil.Equal(want.NotAfter) {
			t.Errorf("status's export TLS: %+v; want required, the certificate of CN=alpha export for 127.0.0.1 with fingerprint %s", e, nodetls.FormatFingerprint(sum[:]))
		}
		var text strings.Builder
		WriteStatus(&text, sts)
		if line := fmt.Sprintf("export %s tls:required certificate:\"CN=alpha export\" names:127.0.0.1 fingerprint:%s", spec, nodetls.FormatFingerprint(sum[:])); !strings.Contains(text.String(), line) {
			t.Errorf("status says:\n%s\nwant a line with %q", text.String(), line)
		}
	}
	checkStatus(first)

	second := writeExport()
	if err := c.daemons["alpha"].ReloadTLS(); err != nil {
		t.Fatal(err)
	}
	if seen, _ := dial(appPair); !seen.Equal(second) {
		t.Error("after the reload a new client got the old export certificate")
	}
	checkStatus(second)
	// Both certificates are valid for an hour: each load warned.
	c.waitLog(t, "alpha", "the export's TLS certificate expires on", "SIGHUP")
	if n := strings.Count(c.logs["alpha"].String(), "the export's TLS certificate expires on"); n != 2 {
		t.Errorf("%d expiry warnings for the export's certificate, want one at start and one at the reload", n)
	}
}
