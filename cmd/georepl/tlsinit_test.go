package main

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/georepl/georepl/configs"
	"github.com/georepl/georepl/transports/nodetls"
)

func TestTLSInit(t *testing.T) {
	dir := t.TempDir()
	tlsDir := filepath.Join(dir, "installed")
	cfg, err := configs.Parse("r0.hcl", configs.DemoTLS(dir, 7000, tlsDir), configs.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out")
	var said bytes.Buffer
	if err := tlsInit(cfg, out, 30*24*time.Hour, time.Now(), &said); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"alpha", "bravo", "dr"} {
		key := filepath.Join(out, n+".key")
		if info, err := os.Stat(key); err != nil || info.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v, mode %v; want 0600", key, err, info.Mode().Perm())
		}
		id, err := nodetls.Load(nodetls.Files{CA: filepath.Join(out, "ca.crt"), Cert: filepath.Join(out, n+".crt"), Key: key})
		if err != nil || id.Node != n {
			t.Errorf("%s's files: %v (names %v)", n, err, id)
		}
		// The printed commands install the node's files where the
		// configuration says.
		for _, cmd := range []string{
			"install -D -m 0644 " + filepath.Join(out, "ca.crt") + " " + filepath.Join(tlsDir, "ca.crt"),
			"install -D -m 0644 " + filepath.Join(out, n+".crt") + " " + filepath.Join(tlsDir, n+".crt"),
			"install -D -m 0600 " + key + " " + filepath.Join(tlsDir, n+".key"),
		} {
			if !strings.Contains(said.String(), cmd) {
				t.Errorf("tls init did not print %q:\n%s", cmd, said.String())
			}
		}
	}
	if info, err := os.Stat(filepath.Join(out, "ca.key")); err != nil || info.Mode().Perm() != 0o600 {
		t.Errorf("ca.key: %v; want mode 0600", err)
	}
	err = tlsInit(cfg, out, time.Hour, time.Now(), &said)
	if err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("a second tls init into the same folder: %v, want a refusal to overwrite", err)
	}
}

// TestTLSInitExport: a node with export_tls gets an export certificate
// naming its export's host, which LoadExport accepts, and the client
// certificate tls init makes passes the export's TLS.
func TestTLSInitExport(t *testing.T) {
	dir := t.TempDir()
	tlsDir := filepath.Join(dir, "installed")
	src := strings.Replace(string(configs.DemoTLS(dir, 7000, tlsDir)), `node "alpha" {`, `node "alpha" {
    export_tls {
      ca   = "/etc/georepl/tls/export-ca.crt"
      cert = "/etc/georepl/tls/export.crt"
      key  = "/etc/georepl/tls/export.key"
    }`, 1)
	cfg, err := configs.Parse("r0.hcl", []byte(src), configs.LoadOptions{})
	if err != nil {
		t.Fatalf("%v\n%s", err, src)
	}
	out := filepath.Join(dir, "out")
	var said bytes.Buffer
	if err := tlsInit(cfg, out, 30*24*time.Hour, time.Now(), &said); err != nil {
		t.Fatal(err)
	}
	for _, cmd := range []string{
		"install -D -m 0644 " + filepath.Join(out, "export-ca.crt") + " /etc/georepl/tls/export-ca.crt",
		"install -D -m 0644 " + filepath.Join(out, "alpha-export.crt") + " /etc/georepl/tls/export.crt",
		"install -D -m 0600 " + filepath.Join(out, "alpha-export.key") + " /etc/georepl/tls/export.key",
	} {
		if !strings.Contains(said.String(), cmd) {
			t.Errorf("tls init did not print %q:\n%s", cmd, said.String())
		}
	}
	if _, err := os.Stat(filepath.Join(out, "bravo-export.crt")); err == nil {
		t.Error("bravo, without export_tls, got an export certificate")
	}
	e, err := nodetls.LoadExport(nodetls.Files{CA: filepath.Join(out, "export-ca.crt"), Cert: filepath.Join(out, "alpha-export.crt"), Key: filepath.Join(out, "alpha-export.key")})
	if err != nil {
		t.Fatal(err)
	}
	rc, _ := cfg.Resource("r0")
	alpha, _ := rc.Node("alpha")
	host, _, _ := net.SplitHostPort(strings.TrimPrefix(alpha.Export, "tcp:"))
	if !strings.HasPrefix(alpha.Export, "tcp:") {
		host, _, _ = net.SplitHostPort(alpha.Address)
	}
	if err := e.Leaf.VerifyHostname(host); err != nil {
		t.Errorf("the export certificate does not name %s: %v", host, err)
	}
	clientPEM, err := os.ReadFile(filepath.Join(out, "client.crt"))
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(clientPEM)
	client, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.Verify(x509.VerifyOptions{Roots: e.ClientCAs, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("the client certificate does not verify against the export CA: %v", err)
	}
}
