package main

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// The wire format of one RDMA send: a 16-byte header, then for a data
// message its payload. Everything in it comes from the peer and is
// checked before use: a message that breaks the rules fails the
// connection (errProtocol).
//
//	0  type    u8   msgData or msgCredit
//	1  channel u8   data: the channel (< NumChannels); credit: 0
//	2  slots   u16  receive slots of the sender's data messages freed since its last report
//	4  length  u32  data: payload bytes (1..maxPayload); credit: 0
//	8  bytes0  u32  bytes of channel 0 the sender's reader consumed since its last report
//	12 bytes1  u32  the same for channel 1
//
// Flow control is by credits, in both directions independently. A sender
// may have at most recvSlots data messages not yet reported freed (slot
// credits: the receiver copies each message out and reposts its receive
// at once, whatever its reader does) and at most window bytes per channel
// not yet reported consumed by the receiver's reader (byte credits: so a
// receiver buffers at most window bytes per channel, and a full channel
// never stalls the other). Credits travel in every message's header; a
// credit message carries only them, when enough are owed and no data is
// going the other way, and takes no slot credit (extraRecv receives are
// posted for it).
const (
	hdrSize    = 16
	slotSize   = 32 << 10
	maxPayload = slotSize - hdrSize
	window     = 1 << 20
	numChans   = 2

	msgData   = 1
	msgCredit = 2
)

var errProtocol = errors.New("rdma peer broke the protocol")

type header struct {
	typ, ch uint8
	slots   uint16
	length  uint32
	bytes   [numChans]uint32
}

func (h header) put(b []byte) {
	b[0], b[1] = h.typ, h.ch
	binary.LittleEndian.PutUint16(b[2:], h.slots)
	binary.LittleEndian.PutUint32(b[4:], h.length)
	binary.LittleEndian.PutUint32(b[8:], h.bytes[0])
	binary.LittleEndian.PutUint32(b[12:], h.bytes[1])
}

// parseHeader reads the header of a message of n bytes at the start of
// b and checks its form.
func parseHeader(b []byte, n int) (header, error) {
	if n < hdrSize || n > len(b) {
		return header{}, fmt.Errorf("%w: a message of %d bytes (a header is %d, a slot %d)", errProtocol, n, hdrSize, len(b))
	}
	h := header{
		typ: b[0], ch: b[1],
		slots:  binary.LittleEndian.Uint16(b[2:]),
		length: binary.LittleEndian.Uint32(b[4:]),
		bytes:  [numChans]uint32{binary.LittleEndian.Uint32(b[8:]), binary.LittleEndian.Uint32(b[12:])},
	}
	switch h.typ {
	case msgData:
		if h.ch >= numChans || h.length == 0 || int64(h.length) != int64(n-hdrSize) {
			return h, fmt.Errorf("%w: data message for channel %d of %d payload bytes in a message of %d", errProtocol, h.ch, h.length, n)
		}
	case msgCredit:
		if h.ch != 0 || h.length != 0 || n != hdrSize {
			return h, fmt.Errorf("%w: credit message with channel %d, length %d, size %d", errProtocol, h.ch, h.length, n)
		}
	default:
		return h, fmt.Errorf("%w: message type %d", errProtocol, h.typ)
	}
	return h, nil
}

// flow is one connection's credit accounting, both directions.
type flow struct {
	// Sending: what the peer still lets us send.
	slotCredits int
	credit      [numChans]int
	// Receiving: what we owe the peer.
	owedSlots  int           // data messages copied out, their slots not yet reported
	unreported [numChans]int // bytes received and not yet reported consumed
	owedBytes  [numChans]int // of those, bytes our reader consumed
}

func newFlow() flow {
	return flow{slotCredits: recvSlots, credit: [numChans]int{window, window}}
}

// received accounts for a message from the peer (whose form parseHeader
// checked): its credits for us, and for a data message what it uses of
// ours. An error means the peer sent what we never allowed.
func (f *flow) received(h header) error {
	if f.slotCredits+int(h.slots) > recvSlots {
		return fmt.Errorf("%w: it returned %d slot credits with %d of %d already ours", errProtocol, h.slots, f.slotCredits, recvSlots)
	}
	for c, b := range h.bytes {
		if int64(f.credit[c])+int64(b) > window {
			return fmt.Errorf("%w: it returned %d bytes of credit on channel %d with %d of %d already ours", errProtocol, b, c, f.credit[c], window)
		}
	}
	if h.typ == msgData {
		if f.owedSlots+1 > recvSlots {
			return fmt.Errorf("%w: a data message beyond its %d slot credits", errProtocol, recvSlots)
		}
		if f.unreported[h.ch]+int(h.length) > window {
			return fmt.Errorf("%w: %d bytes on channel %d with %d of its %d byte credits used", errProtocol, h.length, h.ch, f.unreported[h.ch], window)
		}
		f.owedSlots++
		f.unreported[h.ch] += int(h.length)
	}
	f.slotCredits += int(h.slots)
	for c, b := range h.bytes {
		f.credit[c] += int(b)
	}
	return nil
}

// sendable is how many bytes of n a data message on ch may carry now.
func (f *flow) sendable(ch, n int) int {
	if f.slotCredits == 0 {
		return 0
	}
	return min(n, f.credit[ch], maxPayload)
}

// sent accounts for a data message of n bytes on ch.
func (f *flow) sent(ch, n int) {
	f.slotCredits--
	f.credit[ch] -= n
}

// consumed accounts for n bytes of ch our reader took.
func (f *flow) consumed(ch, n int) { f.owedBytes[ch] += n }

// creditDue reports whether enough is owed to the peer to send a credit
// message: a quarter of its slot credits or of a channel's window. A
// sender out of credit is always owed that much once our reader caught up.
func (f *flow) creditDue() bool {
	return f.owedSlots >= recvSlots/4 || f.owedBytes[0] >= window/4 || f.owedBytes[1] >= window/4
}

// report fills h with everything owed and forgets it: h is about to be
// sent.
func (f *flow) report(h *header) {
	h.slots = uint16(f.owedSlots)
	f.owedSlots = 0
	for c := range f.owedBytes {
		h.bytes[c] = uint32(f.owedBytes[c])
		f.unreported[c] -= f.owedBytes[c]
		f.owedBytes[c] = 0
	}
}
