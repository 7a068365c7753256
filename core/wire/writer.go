package wire

import (
	"encoding/binary"
	"fmt"
	"io"
	"sync/atomic"

	"github.com/pierrec/lz4/v4"
)

const (
	// MinCompressBatch is the smallest flush a Writer with CompressionLZ4
	// tries to compress: below it the frames go out as they are, because
	// LZ4 gains little on a single 4 KiB write and costs latency.
	MinCompressBatch = 64 << 10
	// MaxBuffered is the number of encoded bytes a Writer holds before it
	// flushes by itself, which bounds its memory (to MaxBuffered plus one
	// frame) and the size of a batch.
	MaxBuffered = 4 << 20
	// probeSize is the sample a Writer compresses first when the previous
	// batch was incompressible.
	probeSize = 16 << 10
	// MinSharedPayload is the smallest payload WriteFrameShared sends
	// without copying it: below it the copy costs less than the extra
	// Write call.
	MinSharedPayload = 64 << 10
)

// WriterStats are a Writer's counters since it was created.
type WriterStats struct {
	Frames   uint64 // frames written out (batched ones counted one by one)
	Bytes    uint64 // bytes handed to the underlying io.Writer
	RawBytes uint64 // encoded size of those frames before compression
	// Batches counts flushes large enough to try compression
	// (CompressionLZ4 and at least MinCompressBatch bytes);
	// CompressedBatches counts those that went out as a compressed batch
	// because compression made them at least 1/16 smaller. A large gap
	// between the two means the data is incompressible.
	Batches           uint64
	CompressedBatches uint64
}

// Writer encodes frames onto an io.Writer, buffering them until Flush so
// that many small frames cost one Write and, with CompressionLZ4, one
// compression of the whole batch.
//
// A Writer is not safe for concurrent use, except Stats. The first error
// from the underlying io.Writer is sticky: the stream's framing is lost, so
// every later call returns it and the connection must be dropped.
type Writer struct {
	w          io.Writer
	compressor *lz4.Compressor // only with CompressionLZ4
	bufferCap  int             // MaxBuffered, lowered by tests

	buf      []byte // encoded frames not yet written
	buffered uint64 // frames in buf
	// shared are payloads of WriteFrameShared that belong after their
	// header in buf, in order; sharedBytes is their total size.
	shared      []sharedPayload
	sharedBytes int
	batch       []byte // header and compressed payload of a batch
	// incompressible records that the last batch did not compress.
	incompressible bool
	err            error

	frames, bytes, rawBytes, batches, compressedBatches atomic.Uint64
}

// sharedPayload is a payload written in place: it goes out after
// buf[:at].
type sharedPayload struct {
	at      int
	payload []byte
}

// NewWriter returns a Writer that sends to w with compression c. It panics
// if c is neither CompressionNone nor CompressionLZ4 (ParseCompression
// never returns another value).
func NewWriter(w io.Writer, c Compression) *Writer {
	wr := &Writer{w: w, bufferCap: MaxBuffered}
	switch c {
	case CompressionNone:
	case CompressionLZ4:
		wr.compressor = new(lz4.Compressor)
	default:
		panic(fmt.Sprintf("wire: NewWriter: invalid compression %s", c))
	}
	return wr
}

// WriteFrame encodes f into the Writer's buffer; it reaches the underlying
// io.Writer at the next Flush, or earlier when the buffer reaches
// MaxBuffered bytes. The payload is copied: the caller may reuse f as soon
// as WriteFrame returns.
//
// A frame the format forbids is refused without touching the stream:
// ErrUnknownType, ErrTooLarge (payload above MaxPayload) or ErrMalformed
// (TypeBatch or FlagCompressed, which are the Writer's own business, or a
// data frame whose payload does not match its Length and flags). Otherwise
// the error is the one of an automatic flush.
func (w *Writer) WriteFrame(f *Frame) error {
	if err := w.accept(f); err != nil {
		return err
	}
	if err := w.makeRoom(HeaderSize + len(f.Payload)); err != nil {
		return err
	}
	w.buf = AppendFrame(w.buf, f)
	w.buffered++
	return w.flushIfFull()
}

// accept checks that f may be written now: the Writer has not failed and
// the format allows the frame.
func (w *Writer) accept(f *Frame) error {
	if w.err != nil {
		return w.err
	}
	if len(f.Payload) > MaxPayload {
		return fmt.Errorf("%w: %s: payload exceeds MaxPayload (%d bytes)", ErrTooLarge, f, MaxPayload)
	}
	if f.Type == TypeBatch {
		return fmt.Errorf("%w: cannot write a batch frame: the Writer makes batches itself", ErrMalformed)
	}
	return checkWellFormed(f)
}

// WriteFrameShared is WriteFrame without the copy of a large payload (at
// least MinSharedPayload bytes, and the Writer not compressing): the
// Writer keeps f.Payload and writes it from there at the Flush that
// sends the frame. The caller must not modify the payload until that
// Flush (explicit, or automatic within a later WriteFrame) has returned;
// f itself may be reused at once. Smaller payloads are copied as by
// WriteFrame.
func (w *Writer) WriteFrameShared(f *Frame) error {
	if w.compressor != nil || len(f.Payload) < MinSharedPayload {
		return w.WriteFrame(f)
	}
	if err := w.accept(f); err != nil {
		return err
	}
	if err := w.makeRoom(HeaderSize + len(f.Payload)); err != nil {
		return err
	}
	start := len(w.buf)
	w.buf = append(w.buf, make([]byte, HeaderSize)...)
	h := w.buf[start:]
	putHeader(h, f.Type, f.Flags, f.Seq, f.Epoch, f.Offset, f.Length, len(f.Payload))
	binary.LittleEndian.PutUint32(h[offCRC:], frameCRC(h, f.Payload))
	w.shared = append(w.shared, sharedPayload{at: len(w.buf), payload: f.Payload})
	w.sharedBytes += len(f.Payload)
	w.buffered++
	return w.flushIfFull()
}

// makeRoom flushes first if a frame of size bytes would take the buffered
// bytes beyond the cap.
func (w *Writer) makeRoom(size int) error {
	if n := w.Buffered(); n > 0 && n+size > w.bufferCap {
		return w.Flush()
	}
	return nil
}

// flushIfFull flushes once the buffered bytes reach the cap.
func (w *Writer) flushIfFull() error {
	if w.Buffered() >= w.bufferCap {
		return w.Flush()
	}
	return nil
}

// Buffered is the number of encoded bytes waiting for Flush, shared
// payloads included.
func (w *Writer) Buffered() int { return len(w.buf) + w.sharedBytes }

// Unflushed is the number of frames written since the last flush that
// emptied the buffer: the last ones written. The frames before them are
// out (a flush of a full buffer, within WriteFrame or WriteFrameShared),
// and their shared payloads are the caller's again.
func (w *Writer) Unflushed() int { return int(w.buffered) }

// Flush writes every buffered frame with a single Write call: as they are,
// or as one compressed batch frame when the Writer uses CompressionLZ4, the
// frames add up to at least MinCompressBatch bytes (and at most
// MaxPayload) and compression makes them at least 1/16 smaller. Shared
// payloads (WriteFrameShared) take a Write call each, and the encoded
// frames around them one each. Flush with nothing buffered does nothing.
func (w *Writer) Flush() error {
	if w.err != nil {
		return w.err
	}
	if len(w.buf) == 0 {
		return nil
	}
	if len(w.shared) > 0 {
		return w.flushShared()
	}
	out := w.buf
	if w.compressor != nil && len(w.buf) >= MinCompressBatch && len(w.buf) <= MaxPayload {
		w.batches.Add(1)
		if batch, ok := w.compressBatch(); ok {
			out = batch
			w.compressedBatches.Add(1)
		}
	}
	n, err := w.w.Write(out)
	w.bytes.Add(uint64(n))
	if err == nil && n < len(out) {
		err = io.ErrShortWrite
	}
	if err != nil {
		return w.failed(len(out), err)
	}
	w.flushed(len(w.buf))
	return nil
}

// flushShared writes the buffer and the shared payloads between its
// frames, one Write call per piece (a Writer with shared payloads never
// compresses).
func (w *Writer) flushShared() error {
	total, from := len(w.buf)+w.sharedBytes, 0
	write := func(p []byte) error {
		if len(p) == 0 {
			return nil
		}
		n, err := w.w.Write(p)
		w.bytes.Add(uint64(n))
		if err == nil && n < len(p) {
			err = io.ErrShortWrite
		}
		return err
	}
	for _, s := range w.shared {
		if err := write(w.buf[from:s.at]); err != nil {
			return w.failed(total, err)
		}
		if err := write(s.payload); err != nil {
			return w.failed(total, err)
		}
		from = s.at
	}
	if err := write(w.buf[from:]); err != nil {
		return w.failed(total, err)
	}
	w.flushed(total)
	return nil
}

// failed makes err, met writing size bytes, the Writer's sticky error.
func (w *Writer) failed(size int, err error) error {
	w.err = fmt.Errorf("wire: writing %d bytes (%d frames): %w", size, w.buffered, err)
	w.buf = nil
	w.dropShared()
	return w.err
}

// flushed counts raw bytes of frames written out and empties the buffer.
func (w *Writer) flushed(raw int) {
	w.frames.Add(w.buffered)
	w.rawBytes.Add(uint64(raw))
	w.buf = w.buf[:0]
	w.buffered = 0
	w.dropShared()
}

// dropShared forgets the shared payloads, which then belong to the caller
// again.
func (w *Writer) dropShared() {
	clear(w.shared)
	w.shared = w.shared[:0]
	w.sharedBytes = 0
}

// compressBatch returns w.buf as one compressed batch frame, or false when
// compression would not make it at least 1/16 smaller on the wire: a
// smaller gain (random data, where only the frame headers compress) saves
// less than it costs the receiver to decompress.
//
// Incompressible data costs little: LZ4 gives up early when its output
// outgrows the destination, which is sized to the largest worthwhile
// result; and after a batch that did not compress, the next one is tried
// on its first probeSize bytes before the whole.
func (w *Writer) compressBatch() ([]byte, bool) {
	if w.incompressible && len(w.buf) > 2*probeSize {
		if _, ok := w.compress(w.buf[:probeSize]); !ok {
			return nil, false
		}
	}
	n, ok := w.compress(w.buf)
	w.incompressible = !ok
	if !ok {
		return nil, false
	}
	batch := w.batch[:HeaderSize+n]
	putHeader(batch, TypeBatch, FlagCompressed, 0, 0, 0, uint32(len(w.buf)), n)
	sealFrame(batch)
	return batch, true
}

// compress LZ4-compresses src into w.batch after room for a header and
// returns the compressed size, or false when it is not 1/16 smaller.
func (w *Writer) compress(src []byte) (int, bool) {
	limit := len(src) - len(src)/16
	if cap(w.batch) < limit {
		w.batch = make([]byte, limit)
	}
	n, err := w.compressor.CompressBlock(src, w.batch[HeaderSize:limit])
	return n, err == nil && n > 0
}

// Stats returns the Writer's counters. It is safe to call from any
// goroutine, concurrently with the Writer's user.
func (w *Writer) Stats() WriterStats {
	return WriterStats{
		Frames:            w.frames.Load(),
		Bytes:             w.bytes.Load(),
		RawBytes:          w.rawBytes.Load(),
		Batches:           w.batches.Load(),
		CompressedBatches: w.compressedBatches.Load(),
	}
}
