package nodetls

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
)

// ErrFingerprint is wrapped by CheckFingerprint's error when a
// certificate is not the pinned one.
var ErrFingerprint = errors.New("certificate does not match peer_fingerprint")

// CheckFingerprint checks that cert is the one pin (a SHA-256 sum) names:
// pin is the sum of the certificate (its DER encoding, what `openssl x509
// -fingerprint -sha256` prints) or of its public key (the DER encoding of
// its SubjectPublicKeyInfo, which stays the same when a certificate is
// renewed with the same key). The error names both.
func CheckFingerprint(cert *x509.Certificate, pin []byte) error {
	certSum := sha256.Sum256(cert.Raw)
	keySum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	if bytes.Equal(pin, certSum[:]) || bytes.Equal(pin, keySum[:]) {
		return nil
	}
	return fmt.Errorf("%w: peer_fingerprint expects %s, but the peer presented certificate %q with fingerprint %s (its public key's: %s)",
		ErrFingerprint, FormatFingerprint(pin), cert.Subject.CommonName, FormatFingerprint(certSum[:]), FormatFingerprint(keySum[:]))
}

// FormatFingerprint writes a SHA-256 sum as peer_fingerprint takes it:
// "sha256:" then the bytes in upper-case hexadecimal separated by colons,
// as openssl prints them.
func FormatFingerprint(sum []byte) string {
	parts := make([]string, len(sum))
	for i, b := range sum {
		parts[i] = fmt.Sprintf("%02X", b)
	}
	return "sha256:" + strings.Join(parts, ":")
}
