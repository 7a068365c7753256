package wire

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"sync/atomic"

	"github.com/pierrec/lz4/v4"
)

const (
	// readBufferSize is the Reader's read-ahead: small frames are parsed
	// from it, large payloads are read straight into their own memory.
	readBufferSize = 64 << 10
	// eagerPayload is the largest payload allocated whole as soon as its
	// header is read. A larger one grows as its bytes actually arrive, so a
	// header that lies about its length costs no more memory than the peer
	// really sent (and never more than MaxPayload).
	eagerPayload = 1<<20 + HeaderSize
	// MaxPreAuthPayload bounds the payload of a frame read by a Reader
	// from NewPreAuthReader before Authenticated: every handshake message
	// fits, with room to spare.
	MaxPreAuthPayload = 4 << 10
)

// ReaderStats are a Reader's counters since it was created.
type ReaderStats struct {
	Frames   uint64 // frames returned by ReadFrame
	Bytes    uint64 // bytes of whole frames read from the underlying io.Reader
	RawBytes uint64 // the same after decompressing batches
	Batches  uint64 // compressed batch frames unpacked
}

// Reader decodes frames from an io.Reader, unpacking batches.
//
// A Reader reads ahead of the frame it returns, so once a stream has a
// Reader, read it only through that Reader: a second one (say, after the
// handshake) would miss the bytes the first already took.
//
// A Reader is not safe for concurrent use, except Stats. Its first error is
// sticky: every later ReadFrame returns it.
type Reader struct {
	r *bufio.Reader

	header     [HeaderSize]byte
	compressed []byte // the current batch's compressed payload
	unpacked   []byte // the current batch's content, all frames
	pending    []byte // frames of unpacked not yet returned
	err        error
	// alloc, if set, provides the memory for payloads (SetPayloadAlloc).
	alloc func(t Type, n int) []byte
	// preAuth: the peer is not authenticated yet (NewPreAuthReader).
	preAuth bool

	frames, bytes, rawBytes, batches atomic.Uint64
}

// NewReader returns a Reader that reads frames from r through a read-ahead
// buffer.
func NewReader(r io.Reader) *Reader {
	return &Reader{r: bufio.NewReaderSize(r, readBufferSize)}
}

// NewPreAuthReader returns a Reader for a channel whose peer has not
// proved who it is yet: until Authenticated is called, it refuses a frame
// whose payload exceeds MaxPreAuthPayload (ErrTooLarge) and any batch
// (ErrMalformed), both from the header, before reading a byte of the
// payload. So an unauthenticated peer costs the reader at most a frame
// header and MaxPreAuthPayload bytes, however large the payloads or
// compressed batches it claims to send.
func NewPreAuthReader(r io.Reader) *Reader {
	rd := NewReader(r)
	rd.preAuth = true
	return rd
}

// Authenticated lifts the limits of NewPreAuthReader: the peer proved who
// it is, and may send what MaxPayload and batches allow. Like ReadFrame,
// it is not safe for concurrent use.
func (r *Reader) Authenticated() { r.preAuth = false }

// SetPayloadAlloc makes the Reader take the memory for the payloads it
// returns from alloc instead of allocating it: alloc(t, n) returns n bytes
// for a payload of a frame of type t that nothing else uses, or nil for
// the Reader to allocate them. Payloads larger than 1 MiB plus a frame
// header are always allocated by the Reader, as they arrive (so that a
// lying header costs no more memory than the peer sent). Call it before
// ReadFrame, not concurrently with it.
func (r *Reader) SetPayloadAlloc(alloc func(t Type, n int) []byte) { r.alloc = alloc }

// Buffered reports whether more input has already arrived: frames left
// of a batch, or bytes read ahead. A caller that gets false may do slow
// work on the goroutine that reads before reading on, since nothing waits
// for it yet. Like ReadFrame, it is not safe for concurrent use.
func (r *Reader) Buffered() bool { return len(r.pending) > 0 || r.r.Buffered() > 0 }

// ReadFrame returns the next frame. Batches are unpacked transparently: the
// frames they hold are returned one by one, never the batch itself. The
// Frame and its Payload are freshly allocated (or from SetPayloadAlloc)
// and belong to the caller.
//
// io.EOF is returned as it is when the stream ends between frames. A stream
// that ends inside a frame gives an error matching both ErrTruncated and
// io.ErrUnexpectedEOF; other errors of the underlying io.Reader are wrapped
// (errors.Is still finds them). Corrupt input gives the errors DecodeFrame
// documents; a batch that does not decompress to whole frames, or that
// holds a batch, is ErrMalformed.
func (r *Reader) ReadFrame() (*Frame, error) {
	if r.err != nil {
		return nil, r.err
	}
	f, err := r.next()
	if err != nil {
		r.err = err
		return nil, err
	}
	r.frames.Add(1)
	return f, nil
}

func (r *Reader) next() (*Frame, error) {
	if len(r.pending) > 0 {
		return r.nextFromBatch()
	}
	f, err := r.readFrame()
	if err != nil {
		return nil, err
	}
	if f.Type != TypeBatch {
		r.rawBytes.Add(uint64(HeaderSize + len(f.Payload)))
		return f, nil
	}
	if err := r.unpackBatch(f); err != nil {
		return nil, err
	}
	return r.nextFromBatch()
}

// readFrame reads and verifies one frame as it is on the wire. A batch's
// payload is read into the Reader's reusable buffer, any other payload
// into fresh memory.
func (r *Reader) readFrame() (*Frame, error) {
	if n, err := io.ReadFull(r.r, r.header[:]); err != nil {
		if n == 0 && errors.Is(err, io.EOF) {
			return nil, io.EOF // the peer closed the stream between frames
		}
		return nil, streamError(err, fmt.Sprintf("frame header: read %d of %d bytes", n, HeaderSize))
	}
	f, payloadLen, err := parseHeader(r.header[:])
	if err != nil {
		return nil, err
	}
	if r.preAuth {
		if err := checkPreAuth(&f, payloadLen); err != nil {
			return nil, err
		}
	}
	if payloadLen > 0 {
		var buf []byte
		if f.Type == TypeBatch {
			buf = r.compressed[:0]
		} else if r.alloc != nil && payloadLen <= eagerPayload {
			buf = r.alloc(f.Type, payloadLen)[:0]
		}
		buf, err = readPayload(r.r, buf, payloadLen)
		if err != nil {
			return nil, streamError(err, fmt.Sprintf("%s frame seq %d: payload: read %d of %d bytes", f.Type, f.Seq, len(buf), payloadLen))
		}
		if f.Type == TypeBatch {
			r.compressed = buf
		}
		f.Payload = buf
	}
	if err := checkFrame(&f, r.header[:]); err != nil {
		return nil, err
	}
	r.bytes.Add(uint64(HeaderSize + payloadLen))
	return &f, nil
}

// checkPreAuth refuses, from its header, a frame that a peer may not send
// before it is authenticated.
func checkPreAuth(f *Frame, payloadLen int) error {
	if f.Type == TypeBatch {
		return fmt.Errorf("%w: batch frame before the peer is authenticated", ErrMalformed)
	}
	if payloadLen > MaxPreAuthPayload {
		return fmt.Errorf("%w: %s frame seq %d declares a payload of %d bytes before the peer is authenticated, which allows %d",
			ErrTooLarge, f.Type, f.Seq, payloadLen, MaxPreAuthPayload)
	}
	return nil
}

// streamError describes an error of the underlying reader met inside a
// frame: running out of input is a truncated frame.
func streamError(err error, where string) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%w: %s: %w", ErrTruncated, where, io.ErrUnexpectedEOF)
	}
	return fmt.Errorf("wire: reading %s: %w", where, err)
}

// readPayload appends n bytes from r to buf[:0] and returns them; on error
// it returns what was read. Up to eagerPayload bytes (or buf's capacity)
// are allocated at once, more only as the bytes arrive.
func readPayload(r io.Reader, buf []byte, n int) ([]byte, error) {
	if cap(buf) < min(n, eagerPayload) {
		buf = make([]byte, 0, min(n, eagerPayload))
	}
	for len(buf) < n {
		if len(buf) == cap(buf) {
			grown := make([]byte, len(buf), min(n, 2*cap(buf)))
			copy(grown, buf)
			buf = grown
		}
		m, err := io.ReadFull(r, buf[len(buf):min(n, cap(buf))])
		buf = buf[:len(buf)+m]
		if err != nil {
			return buf, err
		}
	}
	return buf, nil
}

// unpackBatch decompresses a verified batch frame into r.pending.
func (r *Reader) unpackBatch(batch *Frame) error {
	size := int(batch.Length)
	if size == 0 {
		return fmt.Errorf("%w: empty batch", ErrMalformed)
	}
	if cap(r.unpacked) < size {
		r.unpacked = make([]byte, size)
	}
	n, err := lz4.UncompressBlock(batch.Payload, r.unpacked[:size])
	if err != nil || n != size {
		return fmt.Errorf("%w: batch of %d compressed bytes does not decompress to the %d bytes its header declares",
			ErrMalformed, len(batch.Payload), size)
	}
	r.pending = r.unpacked[:size]
	r.batches.Add(1)
	r.rawBytes.Add(uint64(size))
	return nil
}

// nextFromBatch decodes the next frame of the current batch into fresh
// memory.
func (r *Reader) nextFromBatch() (*Frame, error) {
	f, n, err := DecodeFrame(r.pending)
	if err != nil {
		// The batch passed its own checksum, so a bad frame inside it was
		// built that way: the sender is at fault, not the link.
		return nil, fmt.Errorf("%w: inside a batch, %d bytes before its end: %v", ErrMalformed, len(r.pending), err)
	}
	if f.Type == TypeBatch {
		return nil, fmt.Errorf("%w: batch nested inside a batch", ErrMalformed)
	}
	if p := f.Payload; r.alloc != nil && len(p) > 0 {
		if buf := r.alloc(f.Type, len(p)); buf != nil {
			f.Payload = buf[:copy(buf, p)]
		} else {
			f.Payload = clonePayload(p)
		}
	} else {
		f.Payload = clonePayload(p)
	}
	r.pending = r.pending[n:]
	return &f, nil
}

// clonePayload copies p into memory of its own (nil stays nil).
func clonePayload(p []byte) []byte {
	if p == nil {
		return nil
	}
	return append(make([]byte, 0, len(p)), p...)
}

// Stats returns the Reader's counters. It is safe to call from any
// goroutine, concurrently with the Reader's user.
func (r *Reader) Stats() ReaderStats {
	return ReaderStats{
		Frames:   r.frames.Load(),
		Bytes:    r.bytes.Load(),
		RawBytes: r.rawBytes.Load(),
		Batches:  r.batches.Load(),
	}
}
