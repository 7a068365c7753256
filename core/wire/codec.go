package wire

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"slices"
)

// Format constants. Changing any of them changes the wire format.
const (
	// Magic opens every frame: the bytes 'G' 'R' 'P' 'L' on the wire, read
	// as a little-endian uint32.
	Magic uint32 = 'G' | 'R'<<8 | 'P'<<16 | 'L'<<24
	// Version is the wire version this build writes into every frame
	// header, Intro and Hello, and the only one it accepts. Version 2
	// split the handshake: intro and auth first, hellos after. Version 3
	// puts the resource name into the auth MAC, and the listener sends
	// its auth only once the dialer's verified.
	Version = 3
	// HeaderSize is the size of the fixed frame header, CRC included.
	HeaderSize = 44
	// MaxPayload bounds a frame's payload and a batch's uncompressed
	// content: 8 MiB of data plus headroom for the headers of the frames a
	// batch holds. Decoders reject larger lengths before allocating.
	MaxPayload = 8<<20 + 64<<10
)

// Header field offsets; see the diagram in doc.go.
const (
	offMagic      = 0
	offVersion    = 4
	offType       = 5
	offFlags      = 6
	offSeq        = 8
	offEpoch      = 16
	offOffset     = 24
	offLength     = 32
	offPayloadLen = 36
	offCRC        = 40
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// AppendFrame appends the encoding of f (header, CRC32C, payload) to dst
// and returns the extended slice. It copies f.Payload and does not retain
// f. It does not check that f makes sense (Writer.WriteFrame does); it
// panics if f.Payload is longer than MaxPayload, which no decoder would
// accept.
func AppendFrame(dst []byte, f *Frame) []byte {
	if len(f.Payload) > MaxPayload {
		panic(fmt.Sprintf("wire: AppendFrame: %s: payload exceeds MaxPayload (%d bytes)", f, MaxPayload))
	}
	start := len(dst)
	dst = slices.Grow(dst, HeaderSize+len(f.Payload))
	dst = dst[:start+HeaderSize]
	putHeader(dst[start:], f.Type, f.Flags, f.Seq, f.Epoch, f.Offset, f.Length, len(f.Payload))
	dst = append(dst, f.Payload...)
	sealFrame(dst[start:])
	return dst
}

// putHeader writes every header field except the CRC into h.
func putHeader(h []byte, t Type, fl Flags, seq, epoch, offset uint64, length uint32, payloadLen int) {
	le := binary.LittleEndian
	le.PutUint32(h[offMagic:], Magic)
	h[offVersion] = Version
	h[offType] = byte(t)
	le.PutUint16(h[offFlags:], uint16(fl))
	le.PutUint64(h[offSeq:], seq)
	le.PutUint64(h[offEpoch:], epoch)
	le.PutUint64(h[offOffset:], offset)
	le.PutUint32(h[offLength:], length)
	le.PutUint32(h[offPayloadLen:], uint32(payloadLen))
}

// sealFrame stores the CRC of an encoded frame (header then payload, in
// one slice) into its header.
func sealFrame(frame []byte) {
	binary.LittleEndian.PutUint32(frame[offCRC:], frameCRC(frame[:HeaderSize], frame[HeaderSize:]))
}

// frameCRC is the CRC32C of the header fields before the CRC, then the
// payload.
func frameCRC(header, payload []byte) uint32 {
	return crc32.Update(crc32.Checksum(header[:offCRC], castagnoli), castagnoli, payload)
}

// DecodeFrame decodes the frame at the start of b and returns it with the
// number of bytes it occupies. The returned Payload aliases b (nil when
// empty). Bytes after the frame are not looked at, so a caller holding
// several frames calls DecodeFrame again on b[n:].
//
// Errors: ErrTruncated when b holds less than a whole frame (append more
// bytes and retry), ErrBadMagic, *VersionError (ErrVersion), ErrTooLarge
// for a payload length above MaxPayload (checked before the payload is
// needed), ErrChecksum, ErrUnknownType, and ErrMalformed for a frame whose
// content breaks the format (see ErrMalformed). A TypeBatch frame is
// returned as it is; Reader unpacks batches.
func DecodeFrame(b []byte) (f Frame, n int, err error) {
	if len(b) < HeaderSize {
		return Frame{}, 0, fmt.Errorf("%w: header needs %d bytes, have %d", ErrTruncated, HeaderSize, len(b))
	}
	f, payloadLen, err := parseHeader(b[:HeaderSize])
	if err != nil {
		return Frame{}, 0, err
	}
	n = HeaderSize + payloadLen
	if len(b) < n {
		return Frame{}, 0, fmt.Errorf("%w: %s frame seq %d: payload needs %d bytes, have %d",
			ErrTruncated, f.Type, f.Seq, payloadLen, len(b)-HeaderSize)
	}
	if payloadLen > 0 {
		f.Payload = b[HeaderSize:n:n]
	}
	if err := checkFrame(&f, b[:HeaderSize]); err != nil {
		return Frame{}, 0, err
	}
	return f, n, nil
}

// parseHeader decodes h (HeaderSize bytes) into a Frame without payload and
// the payload length, checking what can be checked before the payload is
// read: magic, version and the payload length bound.
func parseHeader(h []byte) (Frame, int, error) {
	le := binary.LittleEndian
	if m := le.Uint32(h[offMagic:]); m != Magic {
		return Frame{}, 0, fmt.Errorf("%w: got % x, want % x (%q)", ErrBadMagic, h[offMagic:offMagic+4], le.AppendUint32(nil, Magic), "GRPL")
	}
	if v := h[offVersion]; v != Version {
		return Frame{}, 0, &VersionError{Got: uint16(v), Want: Version}
	}
	f := Frame{
		Type:   Type(h[offType]),
		Flags:  Flags(le.Uint16(h[offFlags:])),
		Seq:    le.Uint64(h[offSeq:]),
		Epoch:  le.Uint64(h[offEpoch:]),
		Offset: le.Uint64(h[offOffset:]),
		Length: le.Uint32(h[offLength:]),
	}
	payloadLen := le.Uint32(h[offPayloadLen:])
	if payloadLen > MaxPayload {
		return Frame{}, 0, fmt.Errorf("%w: %s frame seq %d declares a payload of %d bytes, MaxPayload is %d",
			ErrTooLarge, f.Type, f.Seq, payloadLen, MaxPayload)
	}
	return f, int(payloadLen), nil
}

// checkFrame verifies a frame whose payload has been read: the CRC stored
// in header against f.Payload, then that the frame is well-formed.
func checkFrame(f *Frame, header []byte) error {
	stored := binary.LittleEndian.Uint32(header[offCRC:])
	if computed := frameCRC(header, f.Payload); stored != computed {
		return fmt.Errorf("%w (type %s, seq %d): got %#08x, computed %#08x", ErrChecksum, f.Type, f.Seq, stored, computed)
	}
	return checkWellFormed(f)
}

// checkWellFormed checks the rules of the format that go beyond the
// header's layout. Writer applies it to outgoing frames (except batches,
// which it makes itself) so that a bug shows at the sender.
func checkWellFormed(f *Frame) error {
	if !f.Type.known() {
		return fmt.Errorf("%w: %d (seq %d)", ErrUnknownType, uint8(f.Type), f.Seq)
	}
	compressed := f.Flags&FlagCompressed != 0
	switch {
	case f.Type == TypeBatch && !compressed:
		return fmt.Errorf("%w: batch frame without the compressed flag", ErrMalformed)
	case f.Type == TypeBatch && f.Length > MaxPayload:
		return fmt.Errorf("%w: batch declares %d uncompressed bytes, MaxPayload is %d", ErrTooLarge, f.Length, MaxPayload)
	case f.Type != TypeBatch && compressed:
		return fmt.Errorf("%w: %s frame seq %d has the compressed flag, which only batches may carry", ErrMalformed, f.Type, f.Seq)
	case f.Type == TypeResyncCsum || f.Type == TypeVerifyCsum:
		if len(f.Payload) == 0 {
			return fmt.Errorf("%w: %s frame seq %d has no payload", ErrMalformed, f.Type, f.Seq)
		}
		if c := Csum(f.Payload[0]); c.Size() == 0 || (len(f.Payload)-1)%c.Size() != 0 || len(f.Payload) == 1 {
			return fmt.Errorf("%w: %s frame seq %d: %d digest bytes of algorithm %v", ErrMalformed, f.Type, f.Seq, len(f.Payload)-1, c)
		}
	case f.Type == TypeData || f.Type == TypeResyncData:
		if f.Flags&(FlagZeroes|FlagTrim) != 0 {
			if len(f.Payload) != 0 {
				return fmt.Errorf("%w: %s frame seq %d with flags %s carries a payload of %d bytes, want none",
					ErrMalformed, f.Type, f.Seq, f.Flags, len(f.Payload))
			}
		} else if len(f.Payload) != int(f.Length) {
			return fmt.Errorf("%w: %s frame seq %d has length %d but a payload of %d bytes",
				ErrMalformed, f.Type, f.Seq, f.Length, len(f.Payload))
		}
	case f.Type == TypeReadRequest && len(f.Payload) != 0:
		return fmt.Errorf("%w: read-request seq %d carries a payload of %d bytes, want none", ErrMalformed, f.Seq, len(f.Payload))
	case f.Type == TypeReadReply:
		want := int(f.Length)
		if f.Flags&FlagNegative != 0 {
			want = 0
		}
		if len(f.Payload) != want {
			return fmt.Errorf("%w: read-reply seq %d with flags %s and length %d carries a payload of %d bytes, want %d",
				ErrMalformed, f.Seq, f.Flags, f.Length, len(f.Payload), want)
		}
	}
	return nil
}
