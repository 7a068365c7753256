package nodetls

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"slices"
	"time"
)

// ExportIdentity is the TLS set-up of a node's NBD export. Its clients
// are applications, not nodes, so their certificates come from an
// authority of their own (Files.CA of the export_tls block), never from
// the resource's: a node's certificate does not open another node's
// export, and an application's certificate makes nobody a node.
type ExportIdentity struct {
	// Certificate is the export's certificate chain and key, presented to
	// clients, which check that it names the host they dial.
	Certificate tls.Certificate
	// Leaf is the export's certificate.
	Leaf *x509.Certificate
	// ClientCAs are the authorities a client's certificate must chain to.
	ClientCAs *x509.CertPool
}

// LoadExport reads and checks an export's files: a key readable only by
// its owner that matches the certificate, a certificate valid now and
// usable by a server, and at least one certificate in the CA file.
// Errors are *FileError naming the file at fault.
func LoadExport(f Files) (*ExportIdentity, error) {
	caPEM, err := os.ReadFile(f.CA)
	if err != nil {
		return nil, &FileError{"ca", f.CA, err}
	}
	clientCAs := x509.NewCertPool()
	if !clientCAs.AppendCertsFromPEM(caPEM) {
		return nil, &FileError{"ca", f.CA, errors.New("no PEM certificate in it")}
	}
	keyPEM, err := readKey(f.Key)
	if err != nil {
		return nil, err
	}
	certPEM, err := os.ReadFile(f.Cert)
	if err != nil {
		return nil, &FileError{"cert", f.Cert, err}
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, &FileError{"cert", f.Cert, fmt.Errorf("with its key: %w", err)}
	}
	leaf := pair.Leaf
	if now := time.Now(); now.Before(leaf.NotBefore) || now.After(leaf.NotAfter) {
		return nil, &FileError{"cert", f.Cert, fmt.Errorf("certificate %q is expired or not yet valid (valid %s to %s)",
			leaf.Subject.CommonName, leaf.NotBefore.UTC().Format(time.RFC3339), leaf.NotAfter.UTC().Format(time.RFC3339))}
	}
	if len(leaf.ExtKeyUsage) > 0 && !slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageServerAuth) && !slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageAny) {
		return nil, &FileError{"cert", f.Cert, fmt.Errorf("certificate %q is not for server authentication (its extended key usage lacks serverAuth), which NBD clients require", leaf.Subject.CommonName)}
	}
	return &ExportIdentity{Certificate: pair, Leaf: leaf, ClientCAs: clientCAs}, nil
}

// ServerConfig is the TLS configuration of the export: TLS 1.2 or later
// (the NBD protocol's minimum; qemu and libnbd speak 1.3 where they can),
// the export's certificate, and a client certificate required that
// chains to ClientCAs and is valid now.
func (e *ExportIdentity) ServerConfig() *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{e.Certificate},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    e.ClientCAs,
	}
}
