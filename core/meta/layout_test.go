package meta

import (
	"errors"
	"strings"
	"testing"

	"pgregory.net/rapid"
)

func TestExternalSize(t *testing.T) {
	tests := []struct {
		name      string
		dataSize  uint64
		slots     int
		blockSize uint32
		want      int64
	}{
		// 1 GiB / 4 KiB = 262144 bits = 32 KiB per slot.
		{"1GiB-3slots", 1 << 30, 3, 0, 8<<10 + 256<<10 + 3*32<<10},
		// One block still takes a whole page per slot.
		{"one-block", 1, 2, 4096, 8<<10 + 256<<10 + 2*4096},
		// 128 MiB + 1 byte at 4 KiB: 32769 bits, 513 words, two pages.
		{"page-boundary", 128<<20 + 1, 1, 4096, 8<<10 + 256<<10 + 8192},
		{"512-byte-blocks", 1 << 30, 1, 512, 8<<10 + 256<<10 + 256<<10},
		// The examples of docs/on-disk-format.md.
		{"1TiB-3slots", 1 << 40, 3, 4096, 96<<20 + 264<<10},
		{"10TiB-2slots", 10 << 40, 2, 4096, 640<<20 + 264<<10},
		{"zero-size", 0, 2, 4096, 0},
		{"no-slots", 1 << 20, 0, 4096, 0},
		{"too-many-slots", 1 << 20, MaxSlots + 1, 4096, 0},
		{"odd-block", 1 << 20, 2, 3000, 0},
		{"huge", MaxDataSize + 1, 2, 4096, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ExternalSize(tt.dataSize, tt.slots, tt.blockSize); got != tt.want {
				t.Fatalf("ExternalSize(%d, %d, %d) = %d, want %d", tt.dataSize, tt.slots, tt.blockSize, got, tt.want)
			}
		})
	}
}

func TestParamsValidate(t *testing.T) {
	good := Params{Resource: "r0", NodeID: 1, Slots: 2, DataSize: 1 << 20}
	if err := good.Validate(); err != nil {
		t.Fatalf("valid params: %v", err)
	}
	tests := []struct {
		name   string
		change func(*Params)
		in     string // a word the message must contain
	}{
		{"empty-resource", func(p *Params) { p.Resource = "" }, "resource"},
		{"long-resource", func(p *Params) { p.Resource = strings.Repeat("x", MaxResourceLen+1) }, "resource"},
		{"non-utf8-resource", func(p *Params) { p.Resource = "\xff" }, "resource"},
		{"node-outside-slots", func(p *Params) { p.NodeID = 2 }, "node id 2"},
		{"zero-slots", func(p *Params) { p.Slots = 0 }, "slots"},
		{"zero-size", func(p *Params) { p.DataSize = 0 }, "data size"},
		{"block-not-power-of-two", func(p *Params) { p.BlockSize = 4097 }, "block size"},
		{"block-too-small", func(p *Params) { p.BlockSize = 256 }, "block size"},
		{"block-too-large", func(p *Params) { p.BlockSize = MaxBlockSize * 2 }, "block size"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := good
			tt.change(&p)
			err := p.Validate()
			if !errors.Is(err, ErrInvalidParams) || !strings.Contains(err.Error(), tt.in) {
				t.Fatalf("Validate() = %v, want ErrInvalidParams mentioning %q", err, tt.in)
			}
		})
	}
}

func TestInternalLayoutTooSmall(t *testing.T) {
	const slots, bs = 3, 4096
	minimum := int64(bs) + ExternalSize(bs, slots, bs)
	dataSize, off, size, err := InternalLayout(minimum, slots, bs)
	if err != nil || dataSize != bs || off != bs || off+size != minimum {
		t.Fatalf("InternalLayout(%d) = %d, %d, %d, %v; want one block of data", minimum, dataSize, off, size, err)
	}
	_, _, _, err = InternalLayout(minimum-1, slots, bs)
	if !errors.Is(err, ErrTooSmall) || !strings.Contains(err.Error(), "need at least") {
		t.Fatalf("InternalLayout(%d) error = %v, want ErrTooSmall with the minimum", minimum-1, err)
	}
	for _, bad := range []struct {
		size  int64
		slots int
		bs    uint32
	}{{-1, 2, 4096}, {1 << 30, 0, 4096}, {1 << 30, 2, 1000}} {
		if _, _, _, err := InternalLayout(bad.size, bad.slots, bad.bs); !errors.Is(err, ErrInvalidParams) {
			t.Errorf("InternalLayout(%d, %d, %d) error = %v, want ErrInvalidParams", bad.size, bad.slots, bad.bs, err)
		}
	}
}

// TestInternalLayoutProperties checks, for arbitrary devices, that the
// metadata ends at the last page boundary, does not overlap the data, and
// that the data area is the largest that fits.
func TestInternalLayoutProperties(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		devSize := rapid.Int64Range(0, 1<<50).Draw(t, "devSize")
		slots := rapid.IntRange(1, MaxSlots).Draw(t, "slots")
		bs := uint32(1) << rapid.IntRange(9, 26).Draw(t, "log2(blockSize)")
		dataSize, off, size, err := InternalLayout(devSize, slots, bs)
		if errors.Is(err, ErrTooSmall) {
			if need := int64(bs) + ExternalSize(uint64(bs), slots, bs); devSize >= roundUp(need, PageSize) {
				t.Fatalf("ErrTooSmall for %d bytes, but %d suffice", devSize, need)
			}
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		end := devSize / PageSize * PageSize
		switch {
		case off%PageSize != 0:
			t.Fatalf("metadata offset %d not page aligned", off)
		case off+size != end:
			t.Fatalf("metadata [%d,+%d) does not end at %d", off, size, end)
		case size != ExternalSize(dataSize, slots, bs):
			t.Fatalf("metadata size %d, ExternalSize says %d", size, ExternalSize(dataSize, slots, bs))
		case dataSize%uint64(bs) != 0 || dataSize > uint64(off):
			t.Fatalf("data size %d (block %d) overlaps metadata at %d", dataSize, bs, off)
		}
		bigger := dataSize + uint64(bs)
		if bigger <= MaxDataSize && int64(bigger)+ExternalSize(bigger, slots, bs) <= end {
			t.Fatalf("data size %d is not maximal: %d fits too", dataSize, bigger)
		}
	})
}
