package wire

import (
	"errors"
	"fmt"
)

// Sentinel errors. Every error this package returns wraps exactly one of
// them (test with errors.Is) and its message says what was wrong and where:
// the frame's type and sequence number, the field, the byte counts.
//
// A connection that yields ErrBadMagic, ErrVersion, ErrChecksum,
// ErrTooLarge, ErrTruncated, ErrUnknownType or ErrMalformed from its Reader
// is out of step with its peer and must be dropped: the peer reconnects and
// the two resynchronise from their bitmaps.
var (
	// ErrBadMagic: the bytes where a frame header should start do not begin
	// with Magic, so the stream is not a georepl stream or lost its framing.
	ErrBadMagic = errors.New("wire: bad frame magic")
	// ErrVersion: the frame header (or an Intro) carries a wire version this
	// build does not speak. The concrete error is a *VersionError.
	ErrVersion = errors.New("wire: incompatible wire version")
	// ErrChecksum: the CRC32C stored in a frame header does not match the
	// one computed over its header fields and payload.
	ErrChecksum = errors.New("wire: frame checksum mismatch")
	// ErrTooLarge: a payload (or a batch's uncompressed content) is larger
	// than MaxPayload (or, before authentication, MaxPreAuthPayload), or a
	// resource name to encode is longer than MaxResourceLen.
	ErrTooLarge = errors.New("wire: too large")
	// ErrTruncated: the input ends inside a frame. From DecodeFrame it means
	// "need more bytes"; from a Reader it also wraps io.ErrUnexpectedEOF.
	ErrTruncated = errors.New("wire: truncated frame")
	// ErrUnknownType: a frame with a valid checksum has a type this build
	// does not know.
	ErrUnknownType = errors.New("wire: unknown frame type")
	// ErrMalformed: the frame is intact but its content breaks the format:
	// a payload too short for its message, a data frame whose payload does
	// not match its Length, a bad or nested batch, a flag on the wrong type.
	ErrMalformed = errors.New("wire: malformed")
	// ErrUnknownCompression: ParseCompression was given a name it does not
	// know.
	ErrUnknownCompression = errors.New("wire: unknown compression")
)

// VersionError reports an incompatible wire version, either in a frame
// header (which has a one-byte version) or in Intro.Version. It matches
// ErrVersion with errors.Is.
type VersionError struct {
	Got  uint16 // the version the peer sent
	Want uint16 // the version this build speaks (Version)
}

// Error says which version was received and which one this build speaks.
func (e *VersionError) Error() string {
	return fmt.Sprintf("wire: incompatible wire version %d (this build speaks version %d)", e.Got, e.Want)
}

// Is reports whether target is ErrVersion.
func (e *VersionError) Is(target error) bool { return target == ErrVersion }
