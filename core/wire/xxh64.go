package wire

import (
	"encoding/binary"
	"math/bits"
)

// XXH64 constants, from the xxHash specification (XXH64 section).
const (
	xxhPrime1 uint64 = 0x9E3779B185EBCA87
	xxhPrime2 uint64 = 0xC2B2AE3D27D4EB4F
	xxhPrime3 uint64 = 0x165667B19E3779F9
	xxhPrime4 uint64 = 0x85EBCA77C2B2AE63
	xxhPrime5 uint64 = 0x27D4EB2F165667C5
)

// XXH64 is the 64-bit xxHash of b with seed, as the xxHash specification
// defines it: four accumulators over 32-byte stripes, merged, then the
// remaining 8-, 4- and 1-byte lanes, then the avalanche. The module has no
// xxHash dependency, and one function is all checksum resync needs.
func XXH64(b []byte, seed uint64) uint64 {
	n := uint64(len(b))
	var acc uint64
	if len(b) >= 32 {
		v1 := seed + xxhPrime1 + xxhPrime2
		v2 := seed + xxhPrime2
		v3 := seed
		v4 := seed - xxhPrime1
		for len(b) >= 32 {
			v1 = xxhRound(v1, binary.LittleEndian.Uint64(b[0:]))
			v2 = xxhRound(v2, binary.LittleEndian.Uint64(b[8:]))
			v3 = xxhRound(v3, binary.LittleEndian.Uint64(b[16:]))
			v4 = xxhRound(v4, binary.LittleEndian.Uint64(b[24:]))
			b = b[32:]
		}
		acc = bits.RotateLeft64(v1, 1) + bits.RotateLeft64(v2, 7) +
			bits.RotateLeft64(v3, 12) + bits.RotateLeft64(v4, 18)
		acc = xxhMerge(acc, v1)
		acc = xxhMerge(acc, v2)
		acc = xxhMerge(acc, v3)
		acc = xxhMerge(acc, v4)
	} else {
		acc = seed + xxhPrime5
	}
	acc += n
	for len(b) >= 8 {
		acc ^= xxhRound(0, binary.LittleEndian.Uint64(b))
		acc = bits.RotateLeft64(acc, 27)*xxhPrime1 + xxhPrime4
		b = b[8:]
	}
	if len(b) >= 4 {
		acc ^= uint64(binary.LittleEndian.Uint32(b)) * xxhPrime1
		acc = bits.RotateLeft64(acc, 23)*xxhPrime2 + xxhPrime3
		b = b[4:]
	}
	for _, c := range b {
		acc ^= uint64(c) * xxhPrime5
		acc = bits.RotateLeft64(acc, 11) * xxhPrime1
	}
	acc ^= acc >> 33
	acc *= xxhPrime2
	acc ^= acc >> 29
	acc *= xxhPrime3
	acc ^= acc >> 32
	return acc
}

func xxhRound(acc, lane uint64) uint64 {
	acc += lane * xxhPrime2
	return bits.RotateLeft64(acc, 31) * xxhPrime1
}

func xxhMerge(acc, v uint64) uint64 {
	acc ^= xxhRound(0, v)
	return acc*xxhPrime1 + xxhPrime4
}
