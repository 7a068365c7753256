package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pierrec/lz4/v4"
)

var rewrite = flag.Bool("rewrite", false, "rewrite testdata/*.golden from the current encoder and decoder")

// goldenCase is one encoded input of the golden tests: a valid frame of
// each type, and corrupt frames with the errors they must produce.
type goldenCase struct {
	name  string
	about string
	input func(t testing.TB) []byte
}

func encode(f Frame) []byte { return AppendFrame(nil, &f) }

// reseal recomputes the CRC of a hand-modified frame, so that only the
// modification is wrong.
func reseal(b []byte) []byte {
	sealFrame(b)
	return b
}

// modified returns a copy of the encoded frame f changed by change.
func modified(f Frame, change func(b []byte)) []byte {
	b := encode(f)
	change(b)
	return b
}

// makeBatch builds a compressed batch frame around content, which the
// Writer would never do for content that is not made of frames.
func makeBatch(t testing.TB, content []byte) []byte {
	t.Helper()
	z := make([]byte, lz4.CompressBlockBound(len(content)))
	n, err := new(lz4.Compressor).CompressBlock(content, z)
	if err != nil || n == 0 {
		t.Fatalf("lz4 compress %d bytes: n=%d err=%v", len(content), n, err)
	}
	return batchFrame(len(content), z[:n])
}

func batchFrame(uncompressed int, payload []byte) []byte {
	b := make([]byte, HeaderSize, HeaderSize+len(payload))
	putHeader(b, TypeBatch, FlagCompressed, 0, 0, 0, uint32(uncompressed), len(payload))
	return reseal(append(b, payload...))
}

func mustMarshal(t testing.TB, m interface{ MarshalBinary() ([]byte, error) }) []byte {
	t.Helper()
	b, err := m.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func sequence(n int) [32]byte {
	var a [32]byte
	for i := range a {
		a[i] = byte(n + i)
	}
	return a
}

var goldenHello = Hello{
	Version: Version, Features: 0x5, Resource: "r0", From: 1, To: 2,
	Nonce: sequence(0), Size: 1 << 30,
	Gen:  GenIDs{Current: 0x1111, Bitmap: 0x2222, History: [2]uint64{0x3333, 0x4444}},
	Role: 1, Disk: 5,
	SplitBrain: SplitBrain{Changes: 0x55, Promoted: 0x1234567890abcdef, Policy: 3, Victim: 2, Flags: SplitBrainDiscardMine},
	Term:       7,
}

var goldenIntro = Intro{Version: Version, Features: 0x5, Resource: "r0", From: 1, To: 2, Nonce: sequence(0)}

var goldenState = State{
	Role: 2, Disk: 5, Repl: 3,
	Gen:  GenIDs{Current: 0xaaaa, Bitmap: 0, History: [2]uint64{0xbbbb, 0}},
	Size: 1 << 30,
	Term: 7,
}

var goldenData = Frame{
	Type: TypeData, Flags: FlagFUA | FlagWantRecvAck, Seq: 17, Epoch: 3,
	Offset: 8192, Length: 16, Payload: []byte("0123456789abcdef"),
}

var goldenCases = []goldenCase{
	{"intro", "intro from node 1 to node 2 for resource r0", func(t testing.TB) []byte {
		return encode(Frame{Type: TypeIntro, Payload: mustMarshal(t, &goldenIntro)})
	}},
	{"hello", "hello from node 1 to node 2 for resource r0", func(t testing.TB) []byte {
		return encode(Frame{Type: TypeHello, Payload: mustMarshal(t, &goldenHello)})
	}},
	{"auth", "auth: node 1's MAC over resource r0 and both nonces for node 2, secret \"s3cret\"", func(t testing.TB) []byte {
		mac := AuthMAC([]byte("s3cret"), "r0", sequence(0), sequence(100), 1, 2, nil)
		return encode(Frame{Type: TypeAuth, Payload: mac})
	}},
	{"refuse", "refuse with a reason", func(t testing.TB) []byte {
		return encode(Frame{Type: TypeRefuse, Payload: []byte("authentication failed")})
	}},
	{"ping", "ping 7", func(t testing.TB) []byte { return encode(Frame{Type: TypePing, Seq: 7}) }},
	{"ping-ack", "answer to ping 7", func(t testing.TB) []byte { return encode(Frame{Type: TypePingAck, Seq: 7}) }},
	{"data", "a 16-byte write at 8192, FUA, protocol B", func(t testing.TB) []byte { return encode(goldenData) }},
	{"data-zeroes", "write zeroes over 64 KiB at 1 MiB: no payload", func(t testing.TB) []byte {
		return encode(Frame{Type: TypeData, Flags: FlagZeroes, Seq: 18, Epoch: 3, Offset: 1 << 20, Length: 64 << 10})
	}},
	{"data-trim", "discard 1 MiB at 2 MiB: no payload", func(t testing.TB) []byte {
		return encode(Frame{Type: TypeData, Flags: FlagTrim, Seq: 19, Epoch: 4, Offset: 2 << 20, Length: 1 << 20})
	}},
	{"recv-ack", "data 17 received into memory", func(t testing.TB) []byte {
		return encode(Frame{Type: TypeRecvAck, Seq: 17})
	}},
	{"write-ack", "data 17 on disk", func(t testing.TB) []byte { return encode(Frame{Type: TypeWriteAck, Seq: 17}) }},
	{"write-ack-negative", "data 18 failed to write", func(t testing.TB) []byte {
		return encode(Frame{Type: TypeWriteAck, Flags: FlagNegative, Seq: 18})
	}},
	{"write-ack-resync", "resync data 5 on disk", func(t testing.TB) []byte {
		return encode(Frame{Type: TypeWriteAck, Flags: FlagResync, Seq: 5})
	}},
	{"barrier", "close epoch 3, flush before acknowledging", func(t testing.TB) []byte {
		return encode(Frame{Type: TypeBarrier, Flags: FlagFlush, Epoch: 3})
	}},
	{"barrier-ack", "epoch 3 done", func(t testing.TB) []byte { return encode(Frame{Type: TypeBarrierAck, Epoch: 3}) }},
	{"out-of-sync", "4 MiB at 1 GiB differ", func(t testing.TB) []byte {
		return encode(Frame{Type: TypeOutOfSync, Offset: 1 << 30, Length: 4 << 20})
	}},
	{"resync-data", "16 bytes of resync at 4096", func(t testing.TB) []byte {
		return encode(Frame{Type: TypeResyncData, Seq: 5, Offset: 4096, Length: 16, Payload: []byte("resync-block-16b")})
	}},
	{"state-change", "secondary, up to date, sync source", func(t testing.TB) []byte {
		return encode(Frame{Type: TypeStateChange, Payload: mustMarshal(t, &goldenState)})
	}},
	{"resync-csum", "crc32c digests of the two 4 KiB blocks at 8192, resync seq 6", func(t testing.TB) []byte {
		return encode(Frame{Type: TypeResyncCsum, Seq: 6, Offset: 8192, Length: 8192,
			Payload: []byte{byte(CsumCRC32C), 0xde, 0xad, 0xbe, 0xef, 0x01, 0x02, 0x03, 0x04}})
	}},
	{"resync-csum-reply", "of the two blocks of resync-csum 6, the second differs", func(t testing.TB) []byte {
		return encode(Frame{Type: TypeResyncCsumReply, Seq: 6, Offset: 8192, Length: 8192, Payload: []byte{0x02}})
	}},
	{"verify-csum", "xxh64 digest of the 4 KiB block at 1 MiB, seq 40", func(t testing.TB) []byte {
		return encode(Frame{Type: TypeVerifyCsum, Seq: 40, Offset: 1 << 20, Length: 4096,
			Payload: []byte{byte(CsumXXH64), 1, 2, 3, 4, 5, 6, 7, 8}})
	}},
	{"verify-reply", "verify-csum 40: the block is identical (no payload)", func(t testing.TB) []byte {
		return encode(Frame{Type: TypeVerifyReply, Seq: 40, Offset: 1 << 20, Length: 4096})
	}},
	{"invalidate-request", "resynchronise me fully", func(t testing.TB) []byte {
		return encode(Frame{Type: TypeInvalidateRequest})
	}},
	{"resync-done", "resync complete", func(t testing.TB) []byte { return encode(Frame{Type: TypeResyncDone}) }},
	{"read-request", "read 16 bytes at 4096 (tag 9)", func(t testing.TB) []byte {
		return encode(Frame{Type: TypeReadRequest, Seq: 9, Offset: 4096, Length: 16})
	}},
	{"read-reply", "the 16 bytes at 4096 for tag 9", func(t testing.TB) []byte {
		return encode(Frame{Type: TypeReadReply, Seq: 9, Offset: 4096, Length: 16, Payload: []byte("read-block-16byt")})
	}},
	{"read-reply-negative", "read tag 10 failed", func(t testing.TB) []byte {
		return encode(Frame{Type: TypeReadReply, Flags: FlagNegative, Seq: 10, Offset: 4096, Length: 16})
	}},
	{"batch", "what a Writer with LZ4 sends for 20 writes of 4 KiB of text and a barrier (the compressed bytes change only with the lz4 module)",
		func(t testing.TB) []byte {
			var out bytes.Buffer
			w := NewWriter(&out, CompressionLZ4)
			text := bytes.Repeat([]byte("georepl mirrors every write. "), 4096/29+1)[:4096]
			for i := range 20 {
				f := Frame{Type: TypeData, Seq: uint64(i + 1), Epoch: 1, Offset: uint64(i) * 4096, Length: 4096, Payload: text}
				if err := w.WriteFrame(&f); err != nil {
					t.Fatal(err)
				}
			}
			if err := w.WriteFrame(&Frame{Type: TypeBarrier, Epoch: 1}); err != nil {
				t.Fatal(err)
			}
			if err := w.Flush(); err != nil {
				t.Fatal(err)
			}
			return out.Bytes()
		}},

	{"corrupt-bad-magic", "a ping whose first byte is 'X'", func(t testing.TB) []byte {
		return modified(Frame{Type: TypePing, Seq: 7}, func(b []byte) { b[0] = 'X' })
	}},
	{"corrupt-version", "a ping from wire version 1", func(t testing.TB) []byte {
		return modified(Frame{Type: TypePing, Seq: 7}, func(b []byte) { b[offVersion] = 1; reseal(b) })
	}},
	{"corrupt-payload-bit", "the data frame with one payload bit flipped", func(t testing.TB) []byte {
		return modified(goldenData, func(b []byte) { b[HeaderSize+3] ^= 0x10 })
	}},
	{"corrupt-header-bit", "the data frame with one bit of its offset flipped", func(t testing.TB) []byte {
		return modified(goldenData, func(b []byte) { b[offOffset+1] ^= 0x01 })
	}},
	{"corrupt-truncated-header", "the first 20 bytes of the data frame", func(t testing.TB) []byte {
		return encode(goldenData)[:20]
	}},
	{"corrupt-truncated-payload", "the data frame without its last 5 bytes", func(t testing.TB) []byte {
		b := encode(goldenData)
		return b[:len(b)-5]
	}},
	{"corrupt-too-large", "a data header declaring a payload of MaxPayload+1 bytes", func(t testing.TB) []byte {
		return modified(Frame{Type: TypeData, Seq: 9}, func(b []byte) {
			binary.LittleEndian.PutUint32(b[offPayloadLen:], MaxPayload+1)
			reseal(b)
		})
	}},
	{"corrupt-unknown-type", "a frame of type 99 with a valid checksum", func(t testing.TB) []byte {
		return modified(Frame{Type: TypePing, Seq: 7}, func(b []byte) { b[offType] = 99; reseal(b) })
	}},
	{"corrupt-compressed-data", "a data frame with the compressed flag", func(t testing.TB) []byte {
		return modified(goldenData, func(b []byte) { b[offFlags] |= byte(FlagCompressed); reseal(b) })
	}},
	{"corrupt-data-length", "a data frame whose length (32) differs from its payload (16 bytes)", func(t testing.TB) []byte {
		return modified(goldenData, func(b []byte) { b[offLength] = 32; reseal(b) })
	}},
	{"corrupt-csum-algorithm", "a resync-csum frame naming checksum algorithm 9", func(t testing.TB) []byte {
		return encode(Frame{Type: TypeResyncCsum, Seq: 6, Offset: 8192, Length: 4096, Payload: []byte{9, 1, 2, 3, 4}})
	}},
	{"corrupt-csum-digests", "a resync-csum frame with 5 bytes of xxh64 digests", func(t testing.TB) []byte {
		return encode(Frame{Type: TypeResyncCsum, Seq: 6, Offset: 8192, Length: 4096, Payload: []byte{byte(CsumXXH64), 1, 2, 3, 4, 5}})
	}},
	{"corrupt-batch-lz4", "a batch whose checksum is right but whose payload is not LZ4", func(t testing.TB) []byte {
		return batchFrame(100, []byte{0xff, 0xff, 0xff, 0xff})
	}},
	{"corrupt-batch-nested", "a batch holding a batch", func(t testing.TB) []byte {
		return makeBatch(t, makeBatch(t, encode(Frame{Type: TypePing, Seq: 1})))
	}},
	{"corrupt-batch-partial", "a batch whose content ends inside its second frame", func(t testing.TB) []byte {
		content := append(encode(Frame{Type: TypePing, Seq: 1}), encode(Frame{Type: TypePing, Seq: 2})[:30]...)
		return makeBatch(t, content)
	}},
}

func TestGolden(t *testing.T) {
	for _, c := range goldenCases {
		t.Run(c.name, func(t *testing.T) {
			got := describe(c.about, c.input(t))
			path := filepath.Join("testdata", c.name+".golden")
			if *rewrite {
				if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test -run TestGolden -rewrite to create it)", err)
			}
			if got != string(want) {
				t.Errorf("%s differs from what the code produces now (if the change is intended, run go test -run TestGolden -rewrite)\n--- got:\n%s\n--- want:\n%s", path, got, want)
			}
		})
	}
}

// headerFields names the header's fields in order, for describe.
var headerFields = []struct {
	name string
	off  int
	size int
}{
	{"magic", offMagic, 4}, {"version", offVersion, 1}, {"type", offType, 1},
	{"flags", offFlags, 2}, {"seq", offSeq, 8}, {"epoch", offEpoch, 8},
	{"offset", offOffset, 8}, {"length", offLength, 4},
	{"payload length", offPayloadLen, 4}, {"crc32c", offCRC, 4},
}

// describe renders encoded input as an annotated hex dump followed by what
// DecodeFrame and a Reader make of it.
func describe(about string, b []byte) string {
	var s strings.Builder
	fmt.Fprintf(&s, "# %s\n# %d bytes\n", about, len(b))
	describeFrames(&s, b)
	if f, n, err := DecodeFrame(b); err != nil {
		fmt.Fprintf(&s, "DecodeFrame: error: %v\n", err)
	} else {
		fmt.Fprintf(&s, "DecodeFrame: %d bytes: %s\n", n, &f)
		describePayload(&s, &f)
	}
	r := NewReader(bytes.NewReader(b))
	for {
		f, err := r.ReadFrame()
		if err == io.EOF {
			fmt.Fprintf(&s, "Reader: EOF\n")
			break
		}
		if err != nil {
			fmt.Fprintf(&s, "Reader: error: %v\n", err)
			break
		}
		fmt.Fprintf(&s, "Reader: %s\n", f)
	}
	return s.String()
}

// describeFrames dumps the frames laid end to end in b, as far as their
// headers allow.
func describeFrames(s *strings.Builder, b []byte) {
	for len(b) > 0 {
		for _, field := range headerFields {
			if field.off >= len(b) {
				return
			}
			v := b[field.off:min(len(b), field.off+field.size)]
			line := fmt.Sprintf("%-15s % -25x", field.name, v)
			if len(v) == field.size {
				line += headerValue(field.name, v)
			}
			s.WriteString(strings.TrimRight(line, " ") + "\n")
		}
		if len(b) < HeaderSize {
			return
		}
		declared := int(binary.LittleEndian.Uint32(b[offPayloadLen:]))
		b = b[HeaderSize:]
		n := min(len(b), declared)
		for i := 0; i < n; i += 16 {
			fmt.Fprintf(s, "payload %5d  % x\n", i, b[i:min(n, i+16)])
		}
		b = b[n:]
	}
}

func headerValue(field string, v []byte) string {
	le := binary.LittleEndian
	switch field {
	case "magic":
		return fmt.Sprintf("%q", v)
	case "version":
		return fmt.Sprint(v[0])
	case "type":
		return Type(v[0]).String()
	case "flags":
		return Flags(le.Uint16(v)).String()
	case "crc32c":
		return fmt.Sprintf("%#08x", le.Uint32(v))
	}
	if len(v) == 8 {
		return fmt.Sprint(le.Uint64(v))
	}
	return fmt.Sprint(le.Uint32(v))
}

func describePayload(s *strings.Builder, f *Frame) {
	var err error
	switch f.Type {
	case TypeIntro:
		var in Intro
		if err = in.UnmarshalBinary(f.Payload); err == nil {
			fmt.Fprintf(s, "intro: %+v\n", in)
		}
	case TypeHello:
		var h Hello
		if err = h.UnmarshalBinary(f.Payload); err == nil {
			fmt.Fprintf(s, "hello: %+v\n", h)
		}
	case TypeStateChange:
		var st State
		if err = st.UnmarshalBinary(f.Payload); err == nil {
			fmt.Fprintf(s, "state: %+v\n", st)
		}
	case TypeRefuse:
		fmt.Fprintf(s, "reason: %q\n", f.Payload)
	}
	if err != nil {
		fmt.Fprintf(s, "payload error: %v\n", err)
	}
}

// TestGoldenErrors pins which sentinel each corrupt golden input yields, so
// that rewording a message cannot change an error's meaning unnoticed.
func TestGoldenErrors(t *testing.T) {
	want := map[string]struct{ decode, read error }{
		"corrupt-bad-magic":         {ErrBadMagic, ErrBadMagic},
		"corrupt-version":           {ErrVersion, ErrVersion},
		"corrupt-payload-bit":       {ErrChecksum, ErrChecksum},
		"corrupt-header-bit":        {ErrChecksum, ErrChecksum},
		"corrupt-truncated-header":  {ErrTruncated, io.ErrUnexpectedEOF},
		"corrupt-truncated-payload": {ErrTruncated, io.ErrUnexpectedEOF},
		"corrupt-too-large":         {ErrTooLarge, ErrTooLarge},
		"corrupt-unknown-type":      {ErrUnknownType, ErrUnknownType},
		"corrupt-compressed-data":   {ErrMalformed, ErrMalformed},
		"corrupt-data-length":       {ErrMalformed, ErrMalformed},
		"corrupt-csum-algorithm":    {ErrMalformed, ErrMalformed},
		"corrupt-csum-digests":      {ErrMalformed, ErrMalformed},
		"corrupt-batch-lz4":         {nil, ErrMalformed},
		"corrupt-batch-nested":      {nil, ErrMalformed},
		"corrupt-batch-partial":     {nil, ErrMalformed},
	}
	for _, c := range goldenCases {
		w, ok := want[c.name]
		if !ok {
			if strings.HasPrefix(c.name, "corrupt-") {
				t.Errorf("%s: no expected error listed", c.name)
			}
			continue
		}
		b := c.input(t)
		if _, _, err := DecodeFrame(b); !errors.Is(err, w.decode) || (w.decode == nil) != (err == nil) {
			t.Errorf("%s: DecodeFrame error %v, want %v", c.name, err, w.decode)
		}
		r := NewReader(bytes.NewReader(b))
		_, err := r.ReadFrame()
		for err == nil {
			_, err = r.ReadFrame()
		}
		if !errors.Is(err, w.read) {
			t.Errorf("%s: Reader error %v, want %v", c.name, err, w.read)
		}
		if w.read == io.ErrUnexpectedEOF && !errors.Is(err, ErrTruncated) {
			t.Errorf("%s: Reader error %v does not match ErrTruncated", c.name, err)
		}
		if _, again := r.ReadFrame(); again != err {
			t.Errorf("%s: Reader error not sticky: first %v, then %v", c.name, err, again)
		}
	}
}
