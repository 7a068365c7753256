package nbd

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// clientTLSLayouts are the names a directory of a client's TLS files may
// use: qemu's and libnbd's (tls-certificates=DIR), then those `georepl
// tls init` writes.
var clientTLSLayouts = [][3]string{
	{"ca-cert.pem", "client-cert.pem", "client-key.pem"},
	{"export-ca.crt", "client.crt", "client.key"},
}

// LoadClientTLS reads a client's TLS files from dir, for DialTLS: the
// authority the export's certificate must chain to, and the client's
// certificate and key, named as qemu and libnbd name them (ca-cert.pem,
// client-cert.pem, client-key.pem) or as `georepl tls init` writes them
// (export-ca.crt, client.crt, client.key). A key that group or others may
// read is refused: whoever reads it may read and overwrite the device.
func LoadClientTLS(dir string) (*tls.Config, error) {
	var names [3]string
	for _, layout := range clientTLSLayouts {
		if _, err := os.Stat(filepath.Join(dir, layout[0])); err == nil {
			names = layout
			break
		} else if !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("nbd client TLS: %w", err)
		}
	}
	if names[0] == "" {
		return nil, fmt.Errorf("nbd client TLS: %s has neither %s nor %s (the export's CA): it needs the CA, the client's certificate and its key",
			dir, clientTLSLayouts[0][0], clientTLSLayouts[1][0])
	}
	ca, cert, key := filepath.Join(dir, names[0]), filepath.Join(dir, names[1]), filepath.Join(dir, names[2])
	caPEM, err := os.ReadFile(ca)
	if err != nil {
		return nil, fmt.Errorf("nbd client TLS: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("nbd client TLS: %s: no PEM certificate in it", ca)
	}
	info, err := os.Stat(key)
	if err != nil {
		return nil, fmt.Errorf("nbd client TLS: %w", err)
	}
	if info.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("nbd client TLS: %s is readable by group or others (mode %#o): whoever reads it may read and overwrite the device; chmod 0600 it", key, info.Mode().Perm())
	}
	pair, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		return nil, fmt.Errorf("nbd client TLS: %s and %s: %w", cert, key, err)
	}
	return &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}, nil
}
