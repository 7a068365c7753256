// Package nodetls gives georepl nodes TLS identities: certificates that
// name a node, loaded from files an operator protects, verified against a
// resource's certificate authority, and issued by `georepl tls init`.
//
// A node's certificate names it in a URI subject alternative name,
// georepl://node/NAME (see NodeURI). A URI rather than a DNS name: a node
// name is not a host name (nodes move between hosts, and one host may run
// several), and a certificate issued for a web server by the same CA never
// names a georepl node by accident. A certificate must name exactly one
// node. Node certificates are used both ways, as client and as server,
// since every node dials some peers and accepts others.
//
// Verification is georepl's own, not TLS's host-name check: the chain must
// verify against the resource's CA (ca, not the system roots), and the
// node it names must be the node the configuration expects on that
// connection. The TLS layer checks the chain (Identity.ClientConfig and
// ServerConfig); the handshake above it checks the name (VerifyPeer), so
// that both ends can say which node was expected and which one came.
package nodetls

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"
)

// URIScheme and uriHost make a node's URI: georepl://node/NAME.
const (
	URIScheme = "georepl"
	uriHost   = "node"
)

// ErrKeyReadable is wrapped by Load's error when the key file may be read
// by its group or by others.
var ErrKeyReadable = errors.New("private key readable by group or others")

// ErrWrongNode is wrapped by VerifyPeer's error when a valid certificate
// names another node than the one expected.
var ErrWrongNode = errors.New("certificate of another node")

// NodeURI is the subject alternative name that makes a certificate node
// name's: georepl://node/NAME.
func NodeURI(name string) *url.URL {
	return &url.URL{Scheme: URIScheme, Host: uriHost, Path: "/" + name}
}

// NodeName returns the node cert names. It fails unless cert has exactly
// one georepl://node/NAME URI.
func NodeName(cert *x509.Certificate) (string, error) {
	var names []string
	for _, u := range cert.URIs {
		if u.Scheme == URIScheme && u.Host == uriHost && strings.HasPrefix(u.Path, "/") && len(u.Path) > 1 && !strings.Contains(u.Path[1:], "/") {
			names = append(names, u.Path[1:])
		}
	}
	switch len(names) {
	case 0:
		return "", fmt.Errorf("certificate %q names no georepl node (it needs a URI subject alternative name %s)", cert.Subject.CommonName, NodeURI("NAME"))
	case 1:
		return names[0], nil
	default:
		return "", fmt.Errorf("certificate %q names %d georepl nodes (%s); a node certificate names exactly one", cert.Subject.CommonName, len(names), strings.Join(names, ", "))
	}
}

// Files are the paths of a node's TLS material.
type Files struct {
	// CA holds the PEM certificates of the authorities that sign the
	// resource's node certificates.
	CA string
	// Cert holds the node's PEM certificate, optionally followed by
	// intermediate certificates.
	Cert string
	// Key holds the node's PEM private key; it must be readable by its
	// owner only.
	Key string
}

// FileError is the error of Load about one of the files: Field is "ca",
// "cert" or "key", as the configuration names them.
type FileError struct {
	Field, Path string
	Err         error
}

func (e *FileError) Error() string { return fmt.Sprintf("tls %s %q: %v", e.Field, e.Path, e.Err) }
func (e *FileError) Unwrap() error { return e.Err }

// Identity is one node's TLS identity within a resource: its certificate
// and key, and the authorities its peers' certificates must chain to.
type Identity struct {
	// Node is the node the certificate names.
	Node string
	// Certificate is the node's certificate chain and key.
	Certificate tls.Certificate
	// Leaf is the node's certificate.
	Leaf *x509.Certificate
	// Roots are the CA's certificates; nil without a CA, when peers are
	// known by their pinned fingerprints only.
	Roots *x509.CertPool
}

// Load reads and checks f: a key readable only by its owner that matches
// the certificate, a certificate that names one node and chains to the CA,
// and is valid now. Errors are *FileError naming the file at fault.
//
// Without a CA (f.CA empty) the identity has no Roots: its certificate is
// checked for its validity and the node it names only, and its peers'
// certificates are accepted only by their pinned fingerprints (see
// VerifyPeer).
func Load(f Files) (*Identity, error) {
	var roots *x509.CertPool
	if f.CA != "" {
		caPEM, err := os.ReadFile(f.CA)
		if err != nil {
			return nil, &FileError{"ca", f.CA, err}
		}
		roots = x509.NewCertPool()
		if !roots.AppendCertsFromPEM(caPEM) {
			return nil, &FileError{"ca", f.CA, errors.New("no PEM certificate in it")}
		}
	}
	keyPEM, err := readKey(f.Key)
	if err != nil {
		return nil, err
	}
	certPEM, err := os.ReadFile(f.Cert)
	if err != nil {
		return nil, &FileError{"cert", f.Cert, err}
	}
	id, err := parse(roots, certPEM, keyPEM)
	if err != nil {
		return nil, &FileError{"cert", f.Cert, err}
	}
	return id, nil
}

// readKey reads a private key file that must be readable by its owner
// only; errors are *FileError.
func readKey(path string) ([]byte, error) {
	info, err := os.Stat(path)
	if err != nil {
		return nil, &FileError{"key", path, err}
	}
	if perm := info.Mode().Perm(); perm&0o077 != 0 {
		return nil, &FileError{"key", path, fmt.Errorf("%w (mode %04o): make it readable by its owner only (chmod 600)", ErrKeyReadable, perm)}
	}
	keyPEM, err := os.ReadFile(path)
	if err != nil {
		return nil, &FileError{"key", path, err}
	}
	return keyPEM, nil
}

// Parse makes an Identity of PEM-encoded material, checked as Load checks
// files (but for the key's file mode).
func Parse(caPEM, certPEM, keyPEM []byte) (*Identity, error) {
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		return nil, errors.New("no PEM certificate in the CA")
	}
	return parse(roots, certPEM, keyPEM)
}

func parse(roots *x509.CertPool, certPEM, keyPEM []byte) (*Identity, error) {
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("with its key: %w", err)
	}
	leaf := pair.Leaf
	name, err := NodeName(leaf)
	if err != nil {
		return nil, err
	}
	id := &Identity{Node: name, Certificate: pair, Leaf: leaf, Roots: roots}
	chain := []*x509.Certificate{leaf}
	for _, der := range pair.Certificate[1:] {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, err
		}
		chain = append(chain, c)
	}
	if _, err := id.verify(chain, x509.ExtKeyUsageServerAuth); err != nil {
		if roots == nil {
			return nil, err
		}
		return nil, fmt.Errorf("does not verify against the ca: %w", err)
	}
	if _, err := id.verify(chain, x509.ExtKeyUsageClientAuth); err != nil {
		return nil, fmt.Errorf("cannot serve as a client certificate: %w", err)
	}
	return id, nil
}

// verify checks chain (leaf first) against id.Roots at the current time
// for usage, and returns the node the leaf names. Without Roots it checks
// the leaf's validity period only: the caller checks its fingerprint.
func (id *Identity) verify(chain []*x509.Certificate, usage x509.ExtKeyUsage) (string, error) {
	if len(chain) == 0 {
		return "", errors.New("no certificate presented")
	}
	leaf := chain[0]
	expired := func(err error) error {
		return fmt.Errorf("certificate %q expired or not yet valid (valid %s to %s): %w",
			leaf.Subject.CommonName, leaf.NotBefore.UTC().Format(time.RFC3339), leaf.NotAfter.UTC().Format(time.RFC3339), err)
	}
	if id.Roots == nil {
		if now := time.Now(); now.Before(leaf.NotBefore) || now.After(leaf.NotAfter) {
			return "", expired(x509.CertificateInvalidError{Cert: leaf, Reason: x509.Expired})
		}
		return NodeName(leaf)
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: id.Roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
		var invalid x509.CertificateInvalidError
		if errors.As(err, &invalid) && invalid.Reason == x509.Expired {
			return "", expired(err)
		}
		return "", fmt.Errorf("certificate %q: %w", leaf.Subject.CommonName, err)
	}
	return NodeName(leaf)
}

// VerifyPeer checks that chain, which the peer presented (leaf first),
// verifies against the CA, names node want and, if pin is not nil,
// matches it (see CheckFingerprint). asServer says the peer was the TLS
// server (we dialled it). A chain that verifies but names another node
// gives an error wrapping ErrWrongNode that names both. Without a CA a
// pin is required: nothing else would authenticate the peer.
func (id *Identity) VerifyPeer(chain []*x509.Certificate, want string, asServer bool, pin []byte) error {
	usage := x509.ExtKeyUsageClientAuth
	if asServer {
		usage = x509.ExtKeyUsageServerAuth
	}
	if id.Roots == nil && pin == nil {
		return fmt.Errorf("this node has no ca and no peer_fingerprint for node %q: nothing would authenticate it", want)
	}
	got, err := id.verify(chain, usage)
	if err != nil {
		return err
	}
	if got != want {
		return fmt.Errorf("%w: the peer's certificate names node %q, but node %q is expected on this connection", ErrWrongNode, got, want)
	}
	if pin != nil {
		return CheckFingerprint(chain[0], pin)
	}
	return nil
}

// ClientConfig is the TLS configuration that dials a peer: it presents
// id's certificate, sends serverName (the resource's name, so that a
// listener serving several resources picks the right identity) and
// accepts only a server chain that verifies against the CA; the caller
// checks the node it names with VerifyPeer. refused, if not nil, is told
// why a server's certificate was refused.
func (id *Identity) ClientConfig(serverName string, refused func(error)) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		ServerName:   serverName,
		Certificates: []tls.Certificate{id.Certificate},
		// Host names play no part: VerifyConnection checks the chain
		// against the CA, and VerifyPeer the node it names.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			_, err := id.verify(cs.PeerCertificates, x509.ExtKeyUsageServerAuth)
			if err != nil && refused != nil {
				refused(err)
			}
			return err
		},
	}
}

// ServerConfig is the TLS configuration that accepts peers: it presents
// id's certificate, requires a client certificate and accepts only one
// whose chain verifies against the CA; the caller checks the node it
// names with VerifyPeer. refused, if not nil, is told why a client was
// refused (which a peer sees only as an alert).
func (id *Identity) ServerConfig(refused func(error)) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{id.Certificate},
		// RequestClientCert rather than RequireAnyClientCert, so that a
		// missing certificate reaches VerifyConnection and is reported
		// like any other refusal.
		ClientAuth: tls.RequestClientCert,
		VerifyConnection: func(cs tls.ConnectionState) error {
			var err error
			if len(cs.PeerCertificates) == 0 {
				err = errors.New("the peer presented no client certificate")
			} else {
				_, err = id.verify(cs.PeerCertificates, x509.ExtKeyUsageClientAuth)
			}
			if err != nil && refused != nil {
				refused(err)
			}
			return err
		},
	}
}

// ExpiresWithin reports whether id's certificate expires within d of now.
func (id *Identity) ExpiresWithin(d time.Duration, now time.Time) bool {
	return id.Leaf.NotAfter.Before(now.Add(d))
}

// pemBlock encodes one PEM block.
func pemBlock(kind string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der})
}
