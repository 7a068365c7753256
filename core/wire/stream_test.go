package wire

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"runtime"
	"strings"
	"testing"
	"testing/iotest"
)

// writeCounter counts Write calls and the bytes they carry.
type writeCounter struct {
	calls int
	buf   bytes.Buffer
}

func (w *writeCounter) Write(p []byte) (int, error) {
	w.calls++
	return w.buf.Write(p)
}

func dataFrame(seq uint64, payload []byte) *Frame {
	return &Frame{Type: TypeData, Seq: seq, Epoch: 1, Offset: seq * 4096, Length: uint32(len(payload)), Payload: payload}
}

// readAll reads frames until an error, returning io.EOF as nil.
func readAll(t *testing.T, r *Reader) []*Frame {
	t.Helper()
	var frames []*Frame
	for {
		f, err := r.ReadFrame()
		if err == io.EOF {
			return frames
		}
		if err != nil {
			t.Fatalf("ReadFrame after %d frames: %v", len(frames), err)
		}
		frames = append(frames, f)
	}
}

func TestWriterBatching(t *testing.T) {
	tests := []struct {
		name        string
		compression Compression
		payload     func(*rand.Rand, int) []byte
		frames      int
		compressed  bool // one compressed batch expected
		tried       bool // compression attempted
	}{
		{"none/text", CompressionNone, textPayload, 32, false, false},
		{"lz4/below-threshold", CompressionLZ4, textPayload, 15, false, false},
		{"lz4/text", CompressionLZ4, textPayload, 32, true, true},
		{"lz4/random", CompressionLZ4, randomPayload, 32, false, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out writeCounter
			w := NewWriter(&out, tc.compression)
			rng := rand.New(rand.NewPCG(1, 2))
			sent := make([]*Frame, tc.frames)
			for i := range sent {
				sent[i] = dataFrame(uint64(i), tc.payload(rng, 4096))
				if err := w.WriteFrame(sent[i]); err != nil {
					t.Fatal(err)
				}
			}
			raw := tc.frames * (HeaderSize + 4096)
			if w.Buffered() != raw || out.calls != 0 {
				t.Fatalf("before Flush: Buffered() = %d, %d writes; want %d, 0", w.Buffered(), out.calls, raw)
			}
			if err := w.Flush(); err != nil {
				t.Fatal(err)
			}
			if out.calls != 1 {
				t.Fatalf("Flush made %d Write calls, want 1", out.calls)
			}
			s := w.Stats()
			if got := s.CompressedBatches == 1; got != tc.compressed {
				t.Errorf("compressed batch sent: %v, want %v (%+v)", got, tc.compressed, s)
			}
			if got := s.Batches == 1; got != tc.tried {
				t.Errorf("compression tried: %v, want %v (%+v)", got, tc.tried, s)
			}
			if tc.compressed && s.Bytes > s.RawBytes/2 {
				t.Errorf("text compressed to %d of %d bytes, want at most half", s.Bytes, s.RawBytes)
			}
			if !tc.compressed && s.Bytes != uint64(raw) {
				t.Errorf("uncompressed flush wrote %d bytes, want %d", s.Bytes, raw)
			}
			frames := readAll(t, NewReader(&out.buf))
			if len(frames) != tc.frames {
				t.Fatalf("read %d frames, want %d", len(frames), tc.frames)
			}
			for i, f := range frames {
				if !sameFrame(f, sent[i]) {
					t.Fatalf("frame %d: %s", i, f)
				}
			}
		})
	}
}

func TestWriterFlushesAtCap(t *testing.T) {
	var out writeCounter
	w := NewWriter(&out, CompressionLZ4)
	payload := randomPayload(rand.New(rand.NewPCG(3, 4)), 1<<20)
	const n = 10
	for i := range n {
		if err := w.WriteFrame(dataFrame(uint64(i), payload)); err != nil {
			t.Fatal(err)
		}
		if w.Buffered() > MaxBuffered {
			t.Fatalf("after frame %d: Buffered() = %d, more than MaxBuffered", i, w.Buffered())
		}
	}
	if out.calls == 0 {
		t.Fatal("no automatic flush after 10 MiB")
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if got := len(readAll(t, NewReader(&out.buf))); got != n {
		t.Fatalf("read %d frames, want %d", got, n)
	}
}

// TestLargestFrames sends frames at the size limits through both
// compressions: a batch may hold one 8 MiB write, and a frame of
// MaxPayload bytes is too big to batch and goes out as it is.
func TestLargestFrames(t *testing.T) {
	zeroes := make([]byte, MaxPayload)
	for _, c := range []Compression{CompressionNone, CompressionLZ4} {
		for _, size := range []int{8 << 20, MaxPayload} {
			var out bytes.Buffer
			w := NewWriter(&out, c)
			if err := w.WriteFrame(dataFrame(1, zeroes[:size])); err != nil {
				t.Fatalf("%s, %d bytes: %v", c, size, err)
			}
			if err := w.Flush(); err != nil {
				t.Fatal(err)
			}
			frames := readAll(t, NewReader(&out))
			if len(frames) != 1 || !sameFrame(frames[0], dataFrame(1, zeroes[:size])) {
				t.Fatalf("%s, %d bytes: read back %d frames", c, size, len(frames))
			}
			wantBatch := c == CompressionLZ4 && size+HeaderSize <= MaxPayload
			if got := w.Stats().CompressedBatches == 1; got != wantBatch {
				t.Errorf("%s, %d bytes: sent as a compressed batch: %v, want %v", c, size, got, wantBatch)
			}
		}
	}
}

func TestWriterRefusesBadFrames(t *testing.T) {
	tests := []struct {
		name  string
		frame Frame
		want  error
	}{
		{"too large", Frame{Type: TypeData, Length: MaxPayload + 1, Payload: make([]byte, MaxPayload+1)}, ErrTooLarge},
		{"batch", Frame{Type: TypeBatch, Flags: FlagCompressed}, ErrMalformed},
		{"compressed flag", Frame{Type: TypePing, Flags: FlagCompressed}, ErrMalformed},
		{"unknown type", Frame{Type: 200}, ErrUnknownType},
		{"zero type", Frame{}, ErrUnknownType},
		{"data length mismatch", Frame{Type: TypeData, Length: 4096, Payload: make([]byte, 512)}, ErrMalformed},
		{"zeroes with payload", Frame{Type: TypeData, Flags: FlagZeroes, Length: 4096, Payload: make([]byte, 4096)}, ErrMalformed},
		{"resync length mismatch", Frame{Type: TypeResyncData, Length: 1, Payload: nil}, ErrMalformed},
	}
	var out bytes.Buffer
	w := NewWriter(&out, CompressionLZ4)
	for _, tc := range tests {
		if err := w.WriteFrame(&tc.frame); !errors.Is(err, tc.want) {
			t.Errorf("%s: WriteFrame error %v, want %v", tc.name, err, tc.want)
		}
	}
	if w.Buffered() != 0 {
		t.Fatalf("refused frames were buffered: %d bytes", w.Buffered())
	}
	// A refused frame does not break the stream.
	if err := w.WriteFrame(&Frame{Type: TypePing, Seq: 1}); err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if frames := readAll(t, NewReader(&out)); len(frames) != 1 || frames[0].Type != TypePing {
		t.Fatalf("read %v, want one ping", frames)
	}
}

type failingWriter struct {
	n   int // bytes accepted before failing
	err error
}

func (w *failingWriter) Write(p []byte) (int, error) { return min(w.n, len(p)), w.err }

func TestWriterErrorIsSticky(t *testing.T) {
	errLink := errors.New("link down")
	for _, tc := range []struct {
		name string
		w    io.Writer
		want error
	}{
		{"error", &failingWriter{n: 10, err: errLink}, errLink},
		{"short write", &failingWriter{n: 10}, io.ErrShortWrite},
	} {
		w := NewWriter(tc.w, CompressionNone)
		if err := w.WriteFrame(&Frame{Type: TypePing}); err != nil {
			t.Fatal(err)
		}
		err := w.Flush()
		if !errors.Is(err, tc.want) {
			t.Fatalf("%s: Flush error %v, want %v", tc.name, err, tc.want)
		}
		if again := w.WriteFrame(&Frame{Type: TypePing}); again != err {
			t.Fatalf("%s: WriteFrame after a failed Flush: %v, want %v", tc.name, again, err)
		}
		if again := w.Flush(); again != err {
			t.Fatalf("%s: second Flush: %v, want %v", tc.name, again, err)
		}
	}
}

func TestFlushWithNothingBuffered(t *testing.T) {
	var out writeCounter
	w := NewWriter(&out, CompressionLZ4)
	if err := w.Flush(); err != nil || out.calls != 0 {
		t.Fatalf("Flush of an empty Writer: err %v, %d Write calls", err, out.calls)
	}
}

func TestReaderEOF(t *testing.T) {
	r := NewReader(bytes.NewReader(nil))
	if _, err := r.ReadFrame(); err != io.EOF {
		t.Fatalf("empty stream: %v, want io.EOF itself", err)
	}
	stream := AppendFrame(nil, &Frame{Type: TypePing, Seq: 1})
	r = NewReader(iotest.OneByteReader(bytes.NewReader(stream)))
	if f, err := r.ReadFrame(); err != nil || f.Seq != 1 {
		t.Fatalf("one-byte reads: %v, %v", f, err)
	}
	if _, err := r.ReadFrame(); err != io.EOF {
		t.Fatalf("end after a whole frame: %v, want io.EOF itself", err)
	}
}

// TestReaderPassesErrorsThrough checks that errors of the underlying reader
// reach the caller, at a frame boundary and inside a frame.
func TestReaderPassesErrorsThrough(t *testing.T) {
	errLink := errors.New("connection reset")
	frame := AppendFrame(nil, dataFrame(1, []byte("0123456789")))
	for _, cut := range []int{0, 10, HeaderSize + 3} {
		src := io.MultiReader(bytes.NewReader(frame[:cut]), iotest.ErrReader(errLink))
		_, err := NewReader(src).ReadFrame()
		if !errors.Is(err, errLink) || errors.Is(err, ErrTruncated) {
			t.Errorf("error after %d bytes: %v, want one wrapping %v", cut, err, errLink)
		}
	}
}

// TestReaderLyingLength checks that a header claiming a huge payload costs
// memory only for the bytes that really arrive.
func TestReaderLyingLength(t *testing.T) {
	b := AppendFrame(nil, &Frame{Type: TypeRefuse})
	b[offPayloadLen], b[offPayloadLen+1], b[offPayloadLen+2], b[offPayloadLen+3] = 0, 0, MaxPayload>>16, 0
	b = append(b, make([]byte, 100)...)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err := NewReader(bytes.NewReader(b)).ReadFrame()
	runtime.ReadMemStats(&after)
	if !errors.Is(err, ErrTruncated) {
		t.Fatalf("error %v, want ErrTruncated", err)
	}
	if allocated := after.TotalAlloc - before.TotalAlloc; allocated > 2<<20 {
		t.Fatalf("reading 144 bytes of a frame claiming %d allocated %d bytes", MaxPayload>>16<<16, allocated)
	}
}

// TestReaderFramesAreIndependent checks that payloads read from one batch
// do not share memory.
func TestReaderFramesAreIndependent(t *testing.T) {
	var out bytes.Buffer
	w := NewWriter(&out, CompressionLZ4)
	text := textPayload(rand.New(rand.NewPCG(5, 6)), 4096)
	for i := range 20 {
		if err := w.WriteFrame(dataFrame(uint64(i), text)); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	frames := readAll(t, NewReader(&out))
	for _, f := range frames {
		for i := range f.Payload {
			f.Payload[i] = 0
		}
		f.Payload = append(f.Payload, 1) // must not overwrite the next frame
	}
	for i, f := range frames[1:] {
		if f.Payload[0] != 0 || len(f.Payload) != 4097 {
			t.Fatalf("frame %d shares memory with its neighbour", i+1)
		}
	}
}

func TestParseCompression(t *testing.T) {
	for _, c := range []Compression{CompressionNone, CompressionLZ4} {
		if got, err := ParseCompression(c.String()); err != nil || got != c {
			t.Errorf("ParseCompression(%q) = %v, %v", c.String(), got, err)
		}
	}
	_, err := ParseCompression("zstd")
	if !errors.Is(err, ErrUnknownCompression) || !strings.Contains(err.Error(), `"zstd"`) {
		t.Errorf("ParseCompression(zstd) error %v, want ErrUnknownCompression naming it", err)
	}
}

func TestStrings(t *testing.T) {
	for _, tc := range []struct{ got, want string }{
		{TypeWriteAck.String(), "write-ack"},
		{Type(99).String(), "Type(99)"},
		{(FlagFUA | FlagWantRecvAck).String(), "fua|want-recv-ack"},
		{Flags(0).String(), "0"},
		{(FlagTrim | 1<<12).String(), "trim|0x1000"},
		{Compression(9).String(), "Compression(9)"},
		{dataFrame(3, make([]byte, 8)).String(), "data seq 3 epoch 1 offset 12288 length 8 flags 0 payload 8 bytes"},
	} {
		if tc.got != tc.want {
			t.Errorf("got %q, want %q", tc.got, tc.want)
		}
	}
}

func TestVersionError(t *testing.T) {
	var err error = &VersionError{Got: 3, Want: Version}
	if !errors.Is(err, ErrVersion) || errors.Is(err, ErrMalformed) {
		t.Fatalf("%v: errors.Is(ErrVersion) should hold, and only it", err)
	}
	var ve *VersionError
	if !errors.As(err, &ve) || ve.Got != 3 {
		t.Fatalf("errors.As lost the versions: %v", ve)
	}
}

// TestWriterCompressionFollowsTheData checks that after incompressible
// batches, which make the Writer probe before compressing, compressible
// data is compressed again.
func TestWriterCompressionFollowsTheData(t *testing.T) {
	var out bytes.Buffer
	w := NewWriter(&out, CompressionLZ4)
	rng := rand.New(rand.NewPCG(9, 9))
	kinds := []func(*rand.Rand, int) []byte{randomPayload, randomPayload, textPayload, randomPayload, textPayload}
	var sent []*Frame
	for i, payload := range kinds {
		for range 40 {
			f := dataFrame(uint64(len(sent)), payload(rng, 4096))
			if err := w.WriteFrame(f); err != nil {
				t.Fatal(err)
			}
			sent = append(sent, f)
		}
		if err := w.Flush(); err != nil {
			t.Fatal(err)
		}
		if got, want := w.Stats().CompressedBatches, uint64(i/2); got != want {
			t.Fatalf("after batch %d: %d compressed batches, want %d", i, got, want)
		}
	}
	frames := readAll(t, NewReader(&out))
	if len(frames) != len(sent) {
		t.Fatalf("read %d frames, wrote %d", len(frames), len(sent))
	}
	for i := range sent {
		if !sameFrame(frames[i], sent[i]) {
			t.Fatalf("frame %d: read %s, wrote %s", i, frames[i], sent[i])
		}
	}
}

// TestStatsWhileStreaming reads counters from another goroutine while
// frames flow, as a metrics exporter does (run with -race).
func TestStatsWhileStreaming(t *testing.T) {
	pr, pw := io.Pipe()
	w, r := NewWriter(pw, CompressionLZ4), NewReader(pr)
	const n = 200
	done := make(chan error, 1)
	go func() {
		payload := textPayload(rand.New(rand.NewPCG(4, 4)), 4096)
		for i := range n {
			if err := w.WriteFrame(dataFrame(uint64(i), payload)); err != nil {
				done <- err
				return
			}
		}
		err := w.Flush()
		pw.CloseWithError(err)
		done <- err
	}()
	var read int
	for {
		_ = w.Stats()
		_ = r.Stats()
		if _, err := r.ReadFrame(); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		read++
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if read != n || w.Stats().Frames != n || r.Stats().Frames != n {
		t.Fatalf("read %d frames; stats: writer %+v, reader %+v", read, w.Stats(), r.Stats())
	}
}

// TestReaderBuffered: Buffered says whether a frame is already there to
// read, both bytes read ahead and frames left of a batch.
func TestReaderBuffered(t *testing.T) {
	var stream bytes.Buffer
	w := NewWriter(&stream, CompressionLZ4)
	for seq := range uint64(3) {
		if err := w.WriteFrame(dataFrame(seq+1, bytes.Repeat([]byte{'x'}, 64<<10))); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	batched := stream.Len()
	tail := NewWriter(&stream, CompressionNone)
	if err := tail.WriteFrame(dataFrame(9, []byte("tail"))); err != nil {
		t.Fatal(err)
	}
	if err := tail.Flush(); err != nil {
		t.Fatal(err)
	}
	r := NewReader(&stream)
	if r.Buffered() {
		t.Fatal("Buffered before anything was read")
	}
	for i := range 4 {
		f, err := r.ReadFrame()
		if err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		if want := i < 3; r.Buffered() != want {
			t.Fatalf("after frame %d (seq %d; batch of %d bytes): Buffered %v, want %v", i, f.Seq, batched, r.Buffered(), want)
		}
	}
}

// TestPreAuthReader checks that a Reader for an unauthenticated peer
// refuses batches and payloads over MaxPreAuthPayload from their headers,
// allocating next to nothing, and reads normally once Authenticated.
func TestPreAuthReader(t *testing.T) {
	hello := AppendFrame(nil, &Frame{Type: TypeHello, Payload: make([]byte, MaxPreAuthPayload)})
	var batch bytes.Buffer
	w := NewWriter(&batch, CompressionLZ4)
	if err := w.WriteFrame(&Frame{Type: TypeHello, Payload: make([]byte, MaxPayload-HeaderSize)}); err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if w.Stats().CompressedBatches != 1 {
		t.Fatal("the Writer did not make a batch")
	}
	big := AppendFrame(nil, &Frame{Type: TypeRefuse, Payload: make([]byte, MaxPreAuthPayload+1)})
	for _, tc := range []struct {
		name string
		in   []byte
		want error
	}{
		{"hello of MaxPreAuthPayload", hello, nil},
		{"compressed batch", batch.Bytes(), ErrMalformed},
		{"refuse one byte over MaxPreAuthPayload", big, ErrTooLarge},
	} {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		// Only the header is sent: a refused frame must not wait for its
		// payload.
		in := tc.in
		if tc.want != nil {
			in = in[:HeaderSize]
		}
		r := NewPreAuthReader(bytes.NewReader(in))
		_, err := r.ReadFrame()
		runtime.ReadMemStats(&after)
		if !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
			t.Errorf("%s: error %v, want %v", tc.name, err, tc.want)
		}
		if allocated := after.TotalAlloc - before.TotalAlloc; allocated > 2*readBufferSize {
			t.Errorf("%s: allocated %d bytes", tc.name, allocated)
		}
	}

	r := NewPreAuthReader(io.MultiReader(bytes.NewReader(hello), bytes.NewReader(batch.Bytes())))
	if _, err := r.ReadFrame(); err != nil {
		t.Fatal(err)
	}
	r.Authenticated()
	if f, err := r.ReadFrame(); err != nil || len(f.Payload) != MaxPayload-HeaderSize {
		t.Fatalf("after Authenticated, the batch: %v, %v", f, err)
	}
}
