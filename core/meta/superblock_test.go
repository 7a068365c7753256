package meta

import (
	"bytes"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"os"
	"reflect"
	"strings"
	"testing"
)

var rewrite = flag.Bool("rewrite", false, "rewrite the golden files in testdata")

const goldenPath = "testdata/superblock.hex"

// goldenSuperblock exercises every field with a distinct value.
var goldenSuperblock = Superblock{
	Resource:   "golden-resource",
	NodeID:     2,
	Slots:      4,
	DataSize:   10<<30 + 512,
	BlockSize:  4096,
	DiskState:  6,
	Primary:    true,
	Current:    0x1122334455667788,
	History:    [2]uint64{0x99aabbccddeeff00, 0x0102030405060708},
	BitmapUUID: []uint64{0xa1, 0xb2, 0, 0xd4},
	Promoted:   0x1839a2b4c5d6e7f8,
	Term:       0x2a,
	Seq:        7,
}

// formatHex prints b as rows of 32 bytes, each prefixed with its offset.
func formatHex(b []byte) string {
	var s strings.Builder
	s.WriteString("# superblock slot 1 of the golden superblock (superblock_test.go); regenerate with -rewrite\n")
	for off := 0; off < len(b); off += 32 {
		row := b[off:min(off+32, len(b))]
		fmt.Fprintf(&s, "%04x ", off)
		for g := 0; g < len(row); g += 8 {
			fmt.Fprintf(&s, " %x", row[g:min(g+8, len(row))])
		}
		s.WriteByte('\n')
	}
	return s.String()
}

// parseHex reads formatHex's output back.
func parseHex(text string) ([]byte, error) {
	var b []byte
	for i, line := range strings.Split(strings.TrimSpace(text), "\n") {
		if strings.HasPrefix(line, "#") {
			continue
		}
		fields := strings.Fields(line)
		if len(fields) < 2 {
			return nil, fmt.Errorf("line %d: want an offset and bytes", i+1)
		}
		if want := fmt.Sprintf("%04x", len(b)); fields[0] != want {
			return nil, fmt.Errorf("line %d: offset %s, want %s", i+1, fields[0], want)
		}
		row, err := hex.DecodeString(strings.Join(fields[1:], ""))
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", i+1, err)
		}
		b = append(b, row...)
	}
	return b, nil
}

// TestSuperblockGolden pins the encoding: a change in the bytes is a
// format change and needs a new FormatVersion.
func TestSuperblockGolden(t *testing.T) {
	l, err := newLayout(goldenSuperblock.DataSize, goldenSuperblock.Slots, goldenSuperblock.BlockSize)
	if err != nil {
		t.Fatal(err)
	}
	encoded := encodeSuperblock(goldenSuperblock, l)
	if *rewrite {
		if err := os.WriteFile(goldenPath, []byte(formatHex(encoded)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	text, err := os.ReadFile(goldenPath)
	if err != nil {
		t.Fatalf("%v (run with -rewrite to create it)", err)
	}
	golden, err := parseHex(string(text))
	if err != nil {
		t.Fatalf("%s: %v", goldenPath, err)
	}
	if !bytes.Equal(encoded, golden) {
		for i := range min(len(encoded), len(golden)) {
			if encoded[i] != golden[i] {
				t.Fatalf("encoding differs from %s at byte %d: %#02x, golden %#02x", goldenPath, i, encoded[i], golden[i])
			}
		}
		t.Fatalf("encoding is %d bytes, %s has %d", len(encoded), goldenPath, len(golden))
	}
	sb, gotLayout, err := decodeSuperblock(golden, 1)
	if err != nil {
		t.Fatalf("decoding %s: %v", goldenPath, err)
	}
	if !reflect.DeepEqual(sb, goldenSuperblock) || gotLayout != l {
		t.Fatalf("decoded %+v %+v, want %+v %+v", sb, gotLayout, goldenSuperblock, l)
	}
	// Spot-check the documented offsets against the golden bytes.
	checks := []struct {
		name string
		off  int
		want uint64
	}{
		{"seq", offSeq, 7},
		{"data size", 96, 10<<30 + 512},
		{"current", 104, 0x1122334455667788},
		{"bitmap offset", 144, 270336},
		{"bitmap uuid 3", 256 + 3*8, 0xd4},
	}
	for _, c := range checks {
		if got := le.Uint64(golden[c.off:]); got != c.want {
			t.Errorf("%s at byte %d = %#x, want %#x", c.name, c.off, got, c.want)
		}
	}
	if string(golden[:8]) != "GEOREPLM" || le.Uint32(golden[8:]) != FormatVersion ||
		golden[offResourceLen] != 15 || golden[offFlags] != 1 {
		t.Errorf("magic, version, name length or primary flag not where doc.go says")
	}
}

// TestSuperblockVersion2: a superblock without a failover term is written
// in format version 2 (bytes 176..183 reserved zero), which builds before
// the term read, and read back; a version 2 slot whose reserved bytes are
// not zero is refused.
func TestSuperblockVersion2(t *testing.T) {
	l, err := newLayout(goldenSuperblock.DataSize, goldenSuperblock.Slots, goldenSuperblock.BlockSize)
	if err != nil {
		t.Fatal(err)
	}
	old := goldenSuperblock
	old.Term = 0
	b := encodeSuperblock(old, l)
	if v := le.Uint32(b[offVersion:]); v != 2 {
		t.Fatalf("a superblock without a failover term is written in version %d, want 2 (readable by the builds before the term)", v)
	}
	sb, _, err := decodeSuperblock(b, 1)
	if err != nil || !reflect.DeepEqual(sb, old) {
		t.Fatalf("version 2: %+v, %v; want %+v", sb, err, old)
	}
	le.PutUint64(b[offTerm:], 5)
	le.PutUint32(b[offCRC:], checksum(b))
	if _, _, err := decodeSuperblock(b, 1); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("version 2 with bytes at 176: %v, want ErrCorrupt", err)
	}
	le.PutUint64(b[offTerm:], 0)
	le.PutUint32(b[offVersion:], 3)
	le.PutUint32(b[offCRC:], checksum(b))
	if _, _, err := decodeSuperblock(b, 1); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("version 3 without a term: %v, want ErrCorrupt (version 2 is its one encoding)", err)
	}
}

// TestSuperblockVersion1 reads a superblock of format version 1 (no
// promotion time: bytes 168..175 reserved zero) and refuses one whose
// reserved bytes are not zero, or a version this build does not know.
func TestSuperblockVersion1(t *testing.T) {
	l, err := newLayout(goldenSuperblock.DataSize, goldenSuperblock.Slots, goldenSuperblock.BlockSize)
	if err != nil {
		t.Fatal(err)
	}
	old := goldenSuperblock
	old.Promoted, old.Term = 0, 0
	b := encodeSuperblock(old, l)
	le.PutUint32(b[offVersion:], 1)
	le.PutUint32(b[offCRC:], checksum(b))
	sb, _, err := decodeSuperblock(b, 1)
	if err != nil || !reflect.DeepEqual(sb, old) {
		t.Fatalf("version 1: %+v, %v; want %+v", sb, err, old)
	}
	le.PutUint64(b[offPromoted:], 5)
	le.PutUint32(b[offCRC:], checksum(b))
	if _, _, err := decodeSuperblock(b, 1); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("version 1 with bytes at 168: %v, want ErrCorrupt", err)
	}
	le.PutUint32(b[offVersion:], FormatVersion+1)
	le.PutUint32(b[offCRC:], checksum(b))
	if _, _, err := decodeSuperblock(b, 1); !errors.Is(err, ErrVersion) {
		t.Fatalf("version %d: %v, want ErrVersion", FormatVersion+1, err)
	}
}

func TestParseHexErrors(t *testing.T) {
	for _, bad := range []string{"0000", "0020 00", "0000 zz"} {
		if _, err := parseHex(bad); err == nil {
			t.Errorf("parseHex(%q) accepted", bad)
		}
	}
}
