package wire

import "fmt"

// Compression selects how a Writer packs what it sends. The Reader needs no
// setting: it recognises compressed batches by their flag.
type Compression uint8

const (
	// CompressionNone writes every frame as it is.
	CompressionNone Compression = 0
	// CompressionLZ4 packs the frames of one flush into a TypeBatch frame
	// holding their LZ4 block-compressed concatenation, when they add up to
	// at least MinCompressBatch bytes and compression makes them at least
	// 1/16 smaller.
	CompressionLZ4 Compression = 1
)

// Compressions lists every Compression, in wire order.
func Compressions() []Compression { return []Compression{CompressionNone, CompressionLZ4} }

// ParseCompression returns the Compression named s: "none" or "lz4", as
// written in resource files. Any other name is ErrUnknownCompression.
func ParseCompression(s string) (Compression, error) {
	switch s {
	case "none":
		return CompressionNone, nil
	case "lz4":
		return CompressionLZ4, nil
	}
	return 0, fmt.Errorf("%w %q: want \"none\" or \"lz4\"", ErrUnknownCompression, s)
}

// String is the name ParseCompression accepts, or "Compression(N)".
func (c Compression) String() string {
	switch c {
	case CompressionNone:
		return "none"
	case CompressionLZ4:
		return "lz4"
	}
	return fmt.Sprintf("Compression(%d)", uint8(c))
}
