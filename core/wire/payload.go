package wire

import (
	"encoding/binary"
	"fmt"
)

// MaxResourceLen bounds the length in bytes of Hello.Resource.
const MaxResourceLen = 255

// Payload encodings are little-endian and positional. A later version may
// append fields at the end, never insert or change one: decoders ignore
// bytes after the fields they know.

// introSize is the encoded size of an Intro with an empty resource name.
const introSize = 2 + 8 + 2 + 1 + 1 + 32

// helloMinSize is the encoded size of a Hello with an empty resource name.
const helloMinSize = introSize + 8 + genIDsSize + 1 + 1 + splitBrainSize + termSize

// termSize is the encoded size of the failover term that ends a Hello and
// a State.
const termSize = 8

// splitBrainSize is the encoded size of SplitBrain.
const splitBrainSize = 8 + 8 + 1 + 1 + 1

// stateSize is the encoded size of a State.
const stateSize = 1 + 1 + 1 + genIDsSize + 8 + termSize

// genIDsSize is the encoded size of GenIDs.
const genIDsSize = 4 * 8

// MarshalBinary encodes in as the payload of a TypeIntro frame:
//
//	version u16 | features u64 | resource length u16 | resource bytes |
//	from u8 | to u8 | nonce [32]
//
// A resource name longer than MaxResourceLen is ErrTooLarge.
func (in *Intro) MarshalBinary() ([]byte, error) {
	if err := checkResource("intro", in.Resource); err != nil {
		return nil, err
	}
	return in.appendTo(make([]byte, 0, introSize+len(in.Resource))), nil
}

// UnmarshalBinary decodes a TypeIntro payload into in, ignoring bytes
// after the known fields. Input that ends inside a field is ErrMalformed,
// naming the field; a resource name longer than MaxResourceLen is
// ErrMalformed too. On error in is left unchanged. The version is not
// checked here: that is the handshake's decision (see VersionError).
func (in *Intro) UnmarshalBinary(b []byte) error {
	d := fieldDecoder{message: "intro", b: b}
	out := d.intro()
	if d.err != nil {
		return d.err
	}
	*in = out
	return nil
}

func checkResource(message, resource string) error {
	if len(resource) > MaxResourceLen {
		return fmt.Errorf("%w: %s resource name is %d bytes, MaxResourceLen is %d", ErrTooLarge, message, len(resource), MaxResourceLen)
	}
	return nil
}

func (in *Intro) appendTo(b []byte) []byte {
	le := binary.LittleEndian
	b = le.AppendUint16(b, in.Version)
	b = le.AppendUint64(b, in.Features)
	b = le.AppendUint16(b, uint16(len(in.Resource)))
	b = append(b, in.Resource...)
	b = append(b, in.From, in.To)
	return append(b, in.Nonce[:]...)
}

// MarshalBinary encodes h as the payload of a TypeHello frame; it begins
// with the fields of an Intro:
//
//	version u16 | features u64 | resource length u16 | resource bytes |
//	from u8 | to u8 | nonce [32] | size u64 |
//	gen current u64 | gen bitmap u64 | gen history[0] u64 | gen history[1] u64 |
//	role u8 | disk u8 |
//	split-brain changes u64 | promoted u64 | policy u8 | victim u8 | flags u8 |
//	term u64
//
// A resource name longer than MaxResourceLen is ErrTooLarge.
func (h *Hello) MarshalBinary() ([]byte, error) {
	if err := checkResource("hello", h.Resource); err != nil {
		return nil, err
	}
	le := binary.LittleEndian
	b := make([]byte, 0, helloMinSize+len(h.Resource))
	b = (&Intro{Version: h.Version, Features: h.Features, Resource: h.Resource, From: h.From, To: h.To, Nonce: h.Nonce}).appendTo(b)
	b = le.AppendUint64(b, h.Size)
	b = appendGenIDs(b, &h.Gen)
	b = append(b, h.Role, h.Disk)
	sb := &h.SplitBrain
	b = le.AppendUint64(b, sb.Changes)
	b = le.AppendUint64(b, sb.Promoted)
	b = append(b, sb.Policy, sb.Victim, sb.Flags)
	return le.AppendUint64(b, h.Term), nil
}

// UnmarshalBinary decodes a TypeHello payload into h, ignoring bytes after
// the known fields. Input that ends inside a field is ErrMalformed, naming
// the field; a resource name longer than MaxResourceLen is ErrMalformed
// too. A hello that ends right after disk (an earlier version's) has a zero
// SplitBrain, one that ends right after the split-brain fields a zero
// Term. On error h is left unchanged. The version is not checked here: that
// is the handshake's decision (see VersionError).
func (h *Hello) UnmarshalBinary(b []byte) error {
	d := fieldDecoder{message: "hello", b: b}
	in := d.intro()
	out := Hello{Version: in.Version, Features: in.Features, Resource: in.Resource, From: in.From, To: in.To, Nonce: in.Nonce}
	out.Size = d.uint64("size")
	out.Gen = d.genIDs()
	out.Role = d.uint8("role")
	out.Disk = d.uint8("disk")
	if d.err == nil && d.off < len(d.b) {
		out.SplitBrain.Changes = d.uint64("split-brain changes")
		out.SplitBrain.Promoted = d.uint64("split-brain promoted")
		out.SplitBrain.Policy = d.uint8("split-brain policy")
		out.SplitBrain.Victim = d.uint8("split-brain victim")
		out.SplitBrain.Flags = d.uint8("split-brain flags")
	}
	if d.err == nil && d.off < len(d.b) {
		out.Term = d.uint64("term")
	}
	if d.err != nil {
		return d.err
	}
	*h = out
	return nil
}

// MarshalBinary encodes s as the payload of a TypeStateChange frame:
//
//	role u8 | disk u8 | repl u8 |
//	gen current u64 | gen bitmap u64 | gen history[0] u64 | gen history[1] u64 |
//	size u64 | term u64
//
// It never fails; the error is there for encoding.BinaryMarshaler.
func (s *State) MarshalBinary() ([]byte, error) {
	b := make([]byte, 0, stateSize)
	b = append(b, s.Role, s.Disk, s.Repl)
	b = appendGenIDs(b, &s.Gen)
	b = binary.LittleEndian.AppendUint64(b, s.Size)
	return binary.LittleEndian.AppendUint64(b, s.Term), nil
}

// UnmarshalBinary decodes a TypeStateChange payload into s, ignoring bytes
// after the known fields. Input that ends inside a field is ErrMalformed,
// naming the field; a state that ends right after size (an earlier
// version's) has a zero Term. On error s is left unchanged.
func (s *State) UnmarshalBinary(b []byte) error {
	d := fieldDecoder{message: "state", b: b}
	var out State
	out.Role = d.uint8("role")
	out.Disk = d.uint8("disk")
	out.Repl = d.uint8("repl")
	out.Gen = d.genIDs()
	out.Size = d.uint64("size")
	if d.err == nil && d.off < len(d.b) {
		out.Term = d.uint64("term")
	}
	if d.err != nil {
		return d.err
	}
	*s = out
	return nil
}

func appendGenIDs(b []byte, g *GenIDs) []byte {
	le := binary.LittleEndian
	b = le.AppendUint64(b, g.Current)
	b = le.AppendUint64(b, g.Bitmap)
	b = le.AppendUint64(b, g.History[0])
	return le.AppendUint64(b, g.History[1])
}

// fieldDecoder reads the fields of a message payload in order. Its first
// error is sticky: later reads return zero values, so a decoding function
// reads every field and checks err once at the end.
type fieldDecoder struct {
	message string // for errors: "intro", "hello", "state"
	b       []byte
	off     int
	err     error
}

func (d *fieldDecoder) fail(err error) {
	if d.err == nil {
		d.err = err
	}
}

// bytes returns the next n bytes, aliasing the input.
func (d *fieldDecoder) bytes(field string, n int) []byte {
	if d.err != nil {
		return nil
	}
	if len(d.b)-d.off < n {
		d.fail(fmt.Errorf("%w: %s payload of %d bytes ends inside field %s at offset %d: need %d bytes, have %d",
			ErrMalformed, d.message, len(d.b), field, d.off, n, len(d.b)-d.off))
		return nil
	}
	v := d.b[d.off : d.off+n]
	d.off += n
	return v
}

func (d *fieldDecoder) uint8(field string) uint8 {
	if v := d.bytes(field, 1); v != nil {
		return v[0]
	}
	return 0
}

func (d *fieldDecoder) uint16(field string) uint16 {
	if v := d.bytes(field, 2); v != nil {
		return binary.LittleEndian.Uint16(v)
	}
	return 0
}

func (d *fieldDecoder) uint64(field string) uint64 {
	if v := d.bytes(field, 8); v != nil {
		return binary.LittleEndian.Uint64(v)
	}
	return 0
}

// intro reads the fields of an Intro, with which a Hello begins too.
func (d *fieldDecoder) intro() Intro {
	var in Intro
	in.Version = d.uint16("version")
	in.Features = d.uint64("features")
	if n := d.uint16("resource length"); n > MaxResourceLen {
		d.fail(fmt.Errorf("%w: %s resource name length %d exceeds MaxResourceLen %d", ErrMalformed, d.message, n, MaxResourceLen))
	} else {
		in.Resource = string(d.bytes("resource", int(n)))
	}
	in.From = d.uint8("from")
	in.To = d.uint8("to")
	copy(in.Nonce[:], d.bytes("nonce", len(in.Nonce)))
	return in
}

func (d *fieldDecoder) genIDs() GenIDs {
	return GenIDs{
		Current: d.uint64("gen current"),
		Bitmap:  d.uint64("gen bitmap"),
		History: [2]uint64{d.uint64("gen history[0]"), d.uint64("gen history[1]")},
	}
}
