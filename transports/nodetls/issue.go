package nodetls

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"time"
)

// Issued is a certificate and its key, PEM-encoded, as files hold them.
type Issued struct {
	CertPEM, KeyPEM []byte
}

// CA is a certificate authority that issues node certificates.
type CA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	Issued
}

// clockSkew backdates certificates, so that a peer whose clock is a little
// behind accepts them at once.
const clockSkew = time.Hour

// NewCA makes a self-signed CA with a fresh ECDSA P-256 key, named
// commonName, valid for validity from now.
func NewCA(commonName string, validity time.Duration, now time.Time) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate the CA key: %w", err)
	}
	serial, err := serialNumber()
	if err != nil {
		return nil, err
	}
	template := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: commonName},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, template, template, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("create the CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return &CA{cert: cert, key: key, Issued: Issued{CertPEM: pemBlock("CERTIFICATE", der), KeyPEM: pemBlock("PRIVATE KEY", keyDER)}}, nil
}

// Issue makes node's certificate, signed by ca, with a fresh ECDSA P-256
// key, valid for validity from now (not beyond the CA's own expiry), for
// use as client and server.
func (ca *CA) Issue(node string, validity time.Duration, now time.Time) (Issued, error) {
	return ca.issue(&x509.Certificate{
		Subject:     pkix.Name{CommonName: node},
		URIs:        []*url.URL{NodeURI(node)},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}, validity, now)
}

// IssueExport makes the certificate of an NBD export, for server use
// only, naming hosts (host names or IP addresses: what clients dial, and
// check the certificate against).
func (ca *CA) IssueExport(commonName string, hosts []string, validity time.Duration, now time.Time) (Issued, error) {
	template := &x509.Certificate{
		Subject:     pkix.Name{CommonName: commonName},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			template.IPAddresses = append(template.IPAddresses, ip)
		} else {
			template.DNSNames = append(template.DNSNames, h)
		}
	}
	return ca.issue(template, validity, now)
}

// IssueClient makes a certificate for an NBD client, for client use only,
// named commonName (the export's log names the client by it).
func (ca *CA) IssueClient(commonName string, validity time.Duration, now time.Time) (Issued, error) {
	return ca.issue(&x509.Certificate{
		Subject:     pkix.Name{CommonName: commonName},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, validity, now)
}

// issue completes template (serial, validity, key usage), signs it with
// a fresh ECDSA P-256 key, valid for validity from now and not beyond the
// CA's own expiry.
func (ca *CA) issue(template *x509.Certificate, validity time.Duration, now time.Time) (Issued, error) {
	name := template.Subject.CommonName
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return Issued{}, fmt.Errorf("generate %s's key: %w", name, err)
	}
	template.SerialNumber, err = serialNumber()
	if err != nil {
		return Issued{}, err
	}
	template.NotBefore = now.Add(-clockSkew)
	template.NotAfter = now.Add(validity)
	if template.NotAfter.After(ca.cert.NotAfter) {
		template.NotAfter = ca.cert.NotAfter
	}
	template.KeyUsage = x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, template, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return Issued{}, fmt.Errorf("create %s's certificate: %w", name, err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return Issued{}, err
	}
	return Issued{CertPEM: pemBlock("CERTIFICATE", der), KeyPEM: pemBlock("PRIVATE KEY", keyDER)}, nil
}

func serialNumber() (*big.Int, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, fmt.Errorf("generate a serial number: %w", err)
	}
	return serial, nil
}
