package wire

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
)

// authLabel separates georepl handshake MACs from any other use of the
// shared secret.
const authLabel = "georepl wire auth v1\x00"

// AuthMACSize is the length of the MAC AuthMAC returns, the payload of a
// TypeAuth frame.
const AuthMACSize = sha256.Size

// AuthMAC is the proof that node from, which sent ourNonce in its Intro,
// knows the resource's shared secret, addressed to node to, which sent
// peerNonce. It is HMAC-SHA256 keyed by secret over a domain-separation
// label, ourNonce, peerNonce, from, to and binding (length-prefixed).
//
// Both sides of a handshake send an Intro with a fresh random nonce, then a
// TypeAuth frame whose payload is AuthMAC(secret, own nonce, peer's nonce,
// own id, peer's id, binding), and check the peer's with CheckAuthMAC. The
// peer's fresh nonce makes the proof useless on any other connection, and
// because the MAC puts the prover's nonce and id first the two directions
// differ: a MAC cannot be reflected back to the node that made it.
//
// binding ties the proof to one connection: with TLS (or QUIC), both
// sides pass the same exported keying material, so a proof relayed by a
// man in the middle that terminates TLS separately towards each side does
// not verify. Pass nil without such a channel. secret must not be empty:
// an empty key proves nothing.
func AuthMAC(secret []byte, ourNonce, peerNonce [32]byte, from, to uint8, binding []byte) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(authLabel))
	m.Write(ourNonce[:])
	m.Write(peerNonce[:])
	m.Write([]byte{from, to})
	m.Write(binary.LittleEndian.AppendUint32(nil, uint32(len(binding))))
	m.Write(binding)
	return m.Sum(nil)
}

// CheckAuthMAC reports, in constant time, whether mac is the proof node
// prover (whose Intro carried proverNonce) owes node verifier (whose Intro
// carried verifierNonce), that is AuthMAC(secret, proverNonce,
// verifierNonce, prover, verifier, binding). The verifier calls it with
// the peer's nonce and id as prover's, and its own as verifier's.
func CheckAuthMAC(secret []byte, proverNonce, verifierNonce [32]byte, prover, verifier uint8, binding, mac []byte) bool {
	return hmac.Equal(mac, AuthMAC(secret, proverNonce, verifierNonce, prover, verifier, binding))
}
