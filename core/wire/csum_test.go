package wire

import (
	"encoding/binary"
	"testing"

	"github.com/cespare/xxhash/v2"
)

// ascending returns n bytes counting up from '0': "0123456789:;<=>?@ABC...".
func ascending(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte('0' + i)
	}
	return b
}

// TestXXH64Vectors checks published XXH64 values: the empty input with
// seed 0 (the specification's reference value), short inputs that take
// only the 8-, 4- and 1-byte tails, and inputs of 32 bytes and more that
// run the stripe loop, with seed 0 and a non-zero seed. The seed-0 values
// are also what an xxh64 digest on the wire must be, so a change of the
// hash library cannot change the wire checksum unnoticed.
func TestXXH64Vectors(t *testing.T) {
	const seed = 0x1234567890abcdef
	for _, tc := range []struct {
		in   []byte
		seed uint64
		want uint64
	}{
		{nil, 0, 0xEF46DB3751D8E999},
		{nil, seed, 0xa2f5c44d0f46c872},
		{[]byte("ABC"), 0, 0xe66ae7354fcfee98},
		{[]byte("xxhash"), 0, 0x32dd38952c4bc720},
		{ascending(1), 0, 0x633457081244afec},
		{ascending(1), seed, 0xf47ebf7f5cb6795b},
		{ascending(4), 0, 0x4c33072b45647dcb},
		{ascending(8), 0, 0xe4ba22a49ad89d3f},
		{ascending(8), seed, 0x5981b4a4e0a07d38},
		{ascending(15), 0, 0x7a85916d8cac500a},
		{ascending(31), 0, 0xc506e23012915790},
		{ascending(32), 0, 0x96ee2fa935fdd556},
		{ascending(32), seed, 0x1396bc2a00938b77},
		{ascending(33), 0, 0xa5cdc6940c6fde9e},
		{ascending(39), 0, 0x7403716c4b4d2649},
		{ascending(65), 0, 0xeddce6ec01f7e595},
		{ascending(65), seed, 0xb0aa81bc38df17b9},
	} {
		d := xxhash.NewWithSeed(tc.seed)
		d.Write(tc.in)
		if got := d.Sum64(); got != tc.want {
			t.Errorf("XXH64(%q, %#x) = %#016x, want %#016x", tc.in, tc.seed, got, tc.want)
		}
		if tc.seed != 0 || len(tc.in) == 0 {
			continue // the wire hashes whole, non-empty blocks with seed 0
		}
		want := binary.BigEndian.AppendUint64(nil, tc.want)
		if got := CsumXXH64.AppendDigests(nil, tc.in, len(tc.in)); string(got) != string(want) {
			t.Errorf("xxh64 digest of %q = % x, want % x", tc.in, got, want)
		}
	}
}

// TestCsumDigests checks each algorithm's digest size and name, that a
// change of one byte changes only that block's digest, and crc32c's check
// value (xxh64's values are in TestXXH64Vectors).
func TestCsumDigests(t *testing.T) {
	const bs = 512
	data := make([]byte, 3*bs)
	for i := range data {
		data[i] = byte(i * 7)
	}
	for _, c := range []Csum{CsumCRC32C, CsumXXH64, CsumSHA256} {
		t.Run(c.String(), func(t *testing.T) {
			got := c.AppendDigests(nil, data, bs)
			if len(got) != 3*c.Size() {
				t.Fatalf("%d digest bytes, want %d", len(got), 3*c.Size())
			}
			parsed, err := ParseCsum(c.String())
			if err != nil || parsed != c {
				t.Fatalf("ParseCsum(%q) = %v, %v", c.String(), parsed, err)
			}
			changed := append([]byte(nil), data...)
			changed[bs+17] ^= 1
			other := c.AppendDigests(nil, changed, bs)
			for i := range 3 {
				same := string(got[i*c.Size():(i+1)*c.Size()]) == string(other[i*c.Size():(i+1)*c.Size()])
				if same != (i != 1) {
					t.Errorf("block %d: digests equal = %v after changing block 1", i, same)
				}
			}
		})
	}
	if got := CsumCRC32C.AppendDigests(nil, []byte("123456789"), 9); string(got) != "\xe3\x06\x92\x83" {
		t.Errorf("crc32c(\"123456789\") = % x, want e3 06 92 83 (the check value)", got)
	}
	if _, err := ParseCsum("md5"); err == nil {
		t.Error("ParseCsum(\"md5\") succeeded")
	}
}

// BenchmarkCsumDigests measures hashing a 256 KiB resync chunk in 4 KiB
// blocks: what OpChecksum costs the driver per chunk, on both nodes.
func BenchmarkCsumDigests(b *testing.B) {
	chunk := make([]byte, 256<<10)
	for i := range chunk {
		chunk[i] = byte(i * 31)
	}
	for _, c := range []Csum{CsumCRC32C, CsumXXH64, CsumSHA256} {
		b.Run(c.String(), func(b *testing.B) {
			b.SetBytes(int64(len(chunk)))
			dst := make([]byte, 0, len(chunk)/4096*c.Size())
			for b.Loop() {
				dst = c.AppendDigests(dst[:0], chunk, 4096)
			}
		})
	}
}
