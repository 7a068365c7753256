package wire

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
)

// authLabel separates georepl handshake MACs from any other use of the
// shared secret.
const authLabel = "georepl wire auth v3\x00"

// AuthMACSize is the length of the MAC AuthMAC returns, the payload of a
// TypeAuth frame.
const AuthMACSize = sha256.Size

// AuthMAC is the proof that node from, which sent ourNonce in its Intro,
// knows the shared secret of resource, addressed to node to, which sent
// peerNonce. It is HMAC-SHA256 keyed by secret over a domain-separation
// label, the length-prefixed resource name, ourNonce, peerNonce, from, to
// and binding (length-prefixed).
//
// Both sides of a handshake send an Intro with a fresh random nonce; then
// the dialer sends a TypeAuth frame whose payload is AuthMAC(secret,
// resource, own nonce, peer's nonce, own id, peer's id, binding), the
// listener checks it with CheckAuthMAC and only then sends its own. So a
// party that connects without the secret receives no MAC to try guesses of
// the secret against. The peer's fresh nonce makes the proof useless on any
// other connection; because the MAC puts the prover's nonce and id first
// the two directions differ, so a MAC cannot be reflected back to the node
// that made it; and because it names the resource, a proof for one
// resource is no proof for another that shares the secret.
//
// binding ties the proof to one connection: with TLS (or QUIC), both
// sides pass the same exported keying material, so a proof relayed by a
// man in the middle that terminates TLS separately towards each side does
// not verify. Pass nil without such a channel. secret must not be empty:
// an empty key proves nothing.
func AuthMAC(secret []byte, resource string, ourNonce, peerNonce [32]byte, from, to uint8, binding []byte) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(authLabel))
	m.Write(binary.LittleEndian.AppendUint32(nil, uint32(len(resource))))
	m.Write([]byte(resource))
	m.Write(ourNonce[:])
	m.Write(peerNonce[:])
	m.Write([]byte{from, to})
	m.Write(binary.LittleEndian.AppendUint32(nil, uint32(len(binding))))
	m.Write(binding)
	return m.Sum(nil)
}

// CheckAuthMAC reports, in constant time, whether mac is the proof node
// prover (whose Intro carried proverNonce) owes node verifier (whose Intro
// carried verifierNonce) for resource, that is AuthMAC(secret, resource,
// proverNonce, verifierNonce, prover, verifier, binding). The verifier
// calls it with the peer's nonce and id as prover's, and its own as
// verifier's.
func CheckAuthMAC(secret []byte, resource string, proverNonce, verifierNonce [32]byte, prover, verifier uint8, binding, mac []byte) bool {
	return hmac.Equal(mac, AuthMAC(secret, resource, proverNonce, verifierNonce, prover, verifier, binding))
}
