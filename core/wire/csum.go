package wire

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"hash/crc32"

	"github.com/cespare/xxhash/v2"
)

// Csum is a block checksum algorithm, used by checksum-based resync to
// skip blocks that are already identical on both nodes. Values are part of
// the wire format (the first byte of a ResyncCsum payload): never
// renumber.
type Csum uint8

const (
	// CsumNone: no checksums; a resync sends every marked block.
	CsumNone Csum = 0
	// CsumCRC32C is CRC-32 with the Castagnoli polynomial, 4 bytes per
	// block: cheapest, and good at catching differences that are not
	// adversarial.
	CsumCRC32C Csum = 1
	// CsumXXH64 is the 64-bit xxHash with seed 0, 8 bytes per block.
	CsumXXH64 Csum = 2
	// CsumSHA256 is SHA-256, 32 bytes per block: for data an attacker may
	// craft to collide with what the other node holds.
	CsumSHA256 Csum = 3
)

var csumNames = [...]string{"none", "crc32c", "xxh64", "sha256"}

// Csums lists every algorithm, CsumNone first, in wire order.
func Csums() []Csum { return []Csum{CsumNone, CsumCRC32C, CsumXXH64, CsumSHA256} }

// String is the algorithm's configuration name ("crc32c"), or "Csum(N)".
func (c Csum) String() string {
	if int(c) < len(csumNames) {
		return csumNames[c]
	}
	return fmt.Sprintf("Csum(%d)", uint8(c))
}

// ParseCsum returns the algorithm called name ("none", "crc32c", "xxh64",
// "sha256"; "" is "none").
func ParseCsum(name string) (Csum, error) {
	if name == "" {
		return CsumNone, nil
	}
	for i, s := range csumNames {
		if s == name {
			return Csum(i), nil
		}
	}
	return CsumNone, fmt.Errorf("wire: unknown checksum algorithm %q (use one of %q)", name, csumNames)
}

// Size is the length of one digest in bytes, 0 for CsumNone and unknown
// algorithms.
func (c Csum) Size() int {
	switch c {
	case CsumCRC32C:
		return 4
	case CsumXXH64:
		return 8
	case CsumSHA256:
		return sha256.Size
	}
	return 0
}

// AppendDigests appends to dst one digest of every blockSize bytes of
// data (len(data) must be a multiple of blockSize), big-endian for the
// integer checksums. It panics for CsumNone or an unknown algorithm.
func (c Csum) AppendDigests(dst, data []byte, blockSize int) []byte {
	if blockSize <= 0 || len(data)%blockSize != 0 {
		panic(fmt.Sprintf("wire: %d bytes are not whole blocks of %d", len(data), blockSize))
	}
	for off := 0; off < len(data); off += blockSize {
		block := data[off : off+blockSize]
		switch c {
		case CsumCRC32C:
			dst = binary.BigEndian.AppendUint32(dst, crc32.Checksum(block, castagnoli))
		case CsumXXH64:
			dst = binary.BigEndian.AppendUint64(dst, xxhash.Sum64(block))
		case CsumSHA256:
			sum := sha256.Sum256(block)
			dst = append(dst, sum[:]...)
		default:
			panic(fmt.Sprintf("wire: no digests for checksum algorithm %v", c))
		}
	}
	return dst
}
