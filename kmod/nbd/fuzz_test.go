package nbd

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime"
	"runtime/metrics"
	"testing"
	"time"
)

// scriptedConn is the server's end of an in-memory connection: the client
// sends the bytes of in and then hangs up, and everything the server
// writes is kept in out. Reads and writes never block, so that one
// negotiation is one pass over in; a server that goes on reading after
// the hang-up, or answers more often than the client can have asked,
// would never end on a real connection, and panics.
type scriptedConn struct {
	in     *bytes.Reader
	out    []byte
	eofs   int // reads after the client hung up
	writes int
}

type scriptedAddr struct{}

func (scriptedAddr) Network() string { return "fuzz" }
func (scriptedAddr) String() string  { return "fuzz-client" }

func (c *scriptedConn) Read(p []byte) (int, error) {
	n, err := c.in.Read(p)
	if err != nil {
		if c.eofs++; c.eofs > 2 {
			panic(fmt.Sprintf("server read %d times after the client hung up", c.eofs))
		}
	}
	return n, err
}

func (c *scriptedConn) Write(p []byte) (int, error) {
	// The greeting, then at most one write per option, and an option
	// takes 16 bytes at least.
	if c.writes++; c.writes > 2+int(c.in.Size())/16 {
		panic(fmt.Sprintf("server wrote %d times to a client that sent %d bytes", c.writes, c.in.Size()))
	}
	c.out = append(c.out, p...)
	return len(p), nil
}

func (c *scriptedConn) Close() error                     { return nil }
func (c *scriptedConn) LocalAddr() net.Addr              { return scriptedAddr{} }
func (c *scriptedConn) RemoteAddr() net.Addr             { return scriptedAddr{} }
func (c *scriptedConn) SetDeadline(time.Time) error      { return nil }
func (c *scriptedConn) SetReadDeadline(time.Time) error  { return nil }
func (c *scriptedConn) SetWriteDeadline(time.Time) error { return nil }

// handshake builds what a client sends: its flags, then each option.
type handshake []byte

func newHandshake(clientFlags uint32) handshake {
	return binary.BigEndian.AppendUint32(nil, clientFlags)
}

func (h handshake) option(opt uint32, data []byte) handshake {
	h = binary.BigEndian.AppendUint64(h, magicOption)
	h = binary.BigEndian.AppendUint32(h, opt)
	h = binary.BigEndian.AppendUint32(h, uint32(len(data)))
	return append(h, data...)
}

// Options the server does not know, as real clients send them.
const (
	optSetMetaContext  = 10
	optExtendedHeaders = 11
	infoName           = 1
	infoDescription    = 2
)

// FuzzNegotiate feeds arbitrary client bytes through the server's
// handshake and option haggling. The negotiation must not panic, must end
// (scriptedConn: it stops reading when the client hangs up), must allocate no more than a bounded multiple of what the client
// sent plus one option's data, and must end either in an error or in the
// transmission phase of an export that exists, with the size and flags the
// client was told. Whatever the server sent must read, for a client, as a
// greeting and then replies to the client's options in order, each ending
// with an acknowledgement or an error.
func FuzzNegotiate(f *testing.F) {
	both := uint32(clientFixedNewstyle | clientNoZeroes)
	// What real clients send: the kernel's nbd-client and old clients
	// (NBD_OPT_EXPORT_NAME, with and without the zero padding), nbdinfo and
	// qemu (structured replies, meta contexts, extended headers, then
	// NBD_OPT_GO asking for name, description and block sizes), listing.
	f.Add([]byte(newHandshake(both).option(optExportName, []byte("r0"))))
	f.Add([]byte(newHandshake(clientFixedNewstyle).option(optExportName, []byte("ro"))))
	f.Add([]byte(newHandshake(both).option(optGo, infoRequest("r0", infoBlockSize))))
	f.Add([]byte(newHandshake(both).
		option(optExtendedHeaders, nil).
		option(optStructuredReply, nil).
		option(optSetMetaContext, append(infoRequest("r0")[:4+2], 0, 0, 0, 1, 0, 0, 0, 15, 'b', 'a', 's', 'e', ':', 'a', 'l', 'l', 'o', 'c', 'a', 't', 'i', 'o', 'n')).
		option(optGo, infoRequest("r0", infoName, infoDescription, infoBlockSize))))
	f.Add([]byte(newHandshake(both).option(optList, nil).option(optInfo, infoRequest("ro", infoBlockSize)).option(optGo, infoRequest("ro"))))
	f.Add([]byte(newHandshake(both).option(optGo, infoRequest("nope")).option(optGo, infoRequest("denied")).option(optExportName, []byte("r0"))))
	f.Add([]byte(newHandshake(both).option(optStartTLS, nil).option(optAbort, nil)))
	f.Add([]byte(newHandshake(both).option(optAbort, nil)))
	f.Add([]byte(newHandshake(both).option(optList, []byte("x")).option(optInfo, []byte{0, 0, 0, 9, 'r'})))
	// Options claiming more data than they carry: the largest allowed, and
	// the most a length can say.
	for _, length := range []uint32{maxOptionLength, 0xffffffff} {
		h := newHandshake(both).option(optGo, nil)
		binary.BigEndian.PutUint32(h[len(h)-4:], length)
		f.Add([]byte(append(h, infoRequest("r0")...)))
	}
	f.Add([]byte(newHandshake(4)))
	f.Add([]byte{})

	exports := map[string]Device{"r0": newMemDevice(1 << 20), "ro": &memDevice{data: make([]byte, 4096), readOnly: true, multiConn: true}}
	lookup := func(name string) (Device, error) {
		if name == "denied" {
			return nil, errors.New("refused by policy")
		}
		if dev, ok := exports[name]; ok {
			return dev, nil
		}
		return nil, fmt.Errorf("%w: %q", ErrNoSuchExport, name)
	}
	srv := NewServer(lookup, slog.New(slog.DiscardHandler), WithExportList(func() []string { return []string{"r0", "ro"} }))
	// Reused from one input to the next: the sink's growth is not the
	// server's allocation, and a fresh 64 KiB read buffer per input would
	// cost more than the negotiation.
	var out []byte
	br := bufio.NewReaderSize(nil, connReadBufferSize)
	// negotiate runs one negotiation of in and returns what the heap
	// allocated meanwhile: by default as runtime/metrics counts it, which
	// does not stop the world but counts small objects a span at a time
	// and sees the fuzzing engine's own allocations; precisely, with
	// runtime.ReadMemStats, to confirm an excess.
	allocated := [1]metrics.Sample{{Name: "/gc/heap/allocs:bytes"}}
	negotiate := func(in []byte, precise bool) (exp export, sent []byte, alloc uint64, err error) {
		nc := &scriptedConn{in: bytes.NewReader(in), out: out[:0]}
		br.Reset(nc)
		c := &conn{srv: srv, raw: nc, nc: nc, br: br, log: srv.log}
		if precise {
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			exp, err = c.negotiate()
			runtime.ReadMemStats(&after)
			alloc = after.TotalAlloc - before.TotalAlloc
		} else {
			metrics.Read(allocated[:])
			before := allocated[0].Value.Uint64()
			exp, err = c.negotiate()
			metrics.Read(allocated[:])
			alloc = allocated[0].Value.Uint64() - before
		}
		out = nc.out
		return exp, nc.out, alloc, err
	}

	f.Fuzz(func(t *testing.T, in []byte) {
		exp, sent, alloc, err := negotiate(in, false)
		// The client's bytes, the server's replies and their framing, and
		// the option whose data may have been allocated without arriving.
		limit := uint64(maxOptionLength + 64*len(in) + 2*len(sent) + 16<<10)
		if alloc > limit {
			if exp, sent, alloc, err = negotiate(in, true); alloc > limit {
				t.Fatalf("negotiation of %d input bytes allocated %d bytes, more than %d", len(in), alloc, limit)
			}
		}
		checkNegotiation(t, in, sent, exp, err, exports)
	})
}

// clientOption is an option as the server reads it from the client.
type clientOption struct {
	opt  uint32
	data []byte
}

// clientOptions returns the client flags and the complete options of in,
// up to the first one without the option magic.
func clientOptions(in []byte) (flags uint32, opts []clientOption) {
	if len(in) < 4 {
		return 0, nil
	}
	flags, in = binary.BigEndian.Uint32(in), in[4:]
	for len(in) >= 16 && binary.BigEndian.Uint64(in) == magicOption {
		opt, length := binary.BigEndian.Uint32(in[8:]), binary.BigEndian.Uint32(in[12:])
		if uint64(length) > uint64(len(in)-16) {
			break
		}
		opts = append(opts, clientOption{opt, in[16 : 16+length]})
		in = in[16+length:]
	}
	return flags, opts
}

// checkNegotiation reads what the server sent as a client would and checks
// it against what the client asked for and what negotiate returned.
func checkNegotiation(t *testing.T, in, out []byte, exp export, negErr error, exports map[string]Device) {
	t.Helper()
	if len(out) < 18 || binary.BigEndian.Uint64(out) != magicInit || binary.BigEndian.Uint64(out[8:]) != magicOption ||
		binary.BigEndian.Uint16(out[16:]) != flagFixedNewstyle|flagNoZeroes {
		t.Fatalf("greeting % x", out[:min(len(out), 18)])
	}
	out = out[18:]
	flags, opts := clientOptions(in)
	var last *clientOption // the option the server answered last, if it answered
	for i := range opts {
		o := &opts[i]
		if len(out) == 0 {
			break
		}
		if o.opt == optExportName {
			// Success has no reply header: the export's size and flags,
			// then the padding unless the client declined it.
			want := 10
			if flags&clientNoZeroes == 0 {
				want += exportNameZeroesSz
			}
			if negErr != nil || len(out) != want || !isZero(out[10:]) {
				t.Fatalf("NBD_OPT_EXPORT_NAME %q answered with % x (negotiation error %v)", o.data, out, negErr)
			}
			checkExport(t, exp, string(o.data), binary.BigEndian.Uint64(out), binary.BigEndian.Uint16(out[8:]), exports)
			return
		}
		last = o
		var name string
		var size uint64
		var expFlags uint16
		var typ uint32 // of the reply that ended the option
		for {
			if len(out) < 20 || binary.BigEndian.Uint64(out) != magicOptionReply {
				t.Fatalf("reply to %s: % x", optionName(o.opt), out[:min(len(out), 20)])
			}
			var opt, length uint32
			opt, typ, length = binary.BigEndian.Uint32(out[8:]), binary.BigEndian.Uint32(out[12:]), binary.BigEndian.Uint32(out[16:])
			if opt != o.opt || uint64(length) > uint64(len(out)-20) {
				t.Fatalf("reply to %s: option %d, %d bytes of data of %d sent", optionName(o.opt), opt, length, len(out)-20)
			}
			data := out[20 : 20+length]
			out = out[20+length:]
			switch {
			case typ == repAck:
			case typ&repFlagError != 0:
				if typ != repErrUnsup && typ != repErrPolicy && typ != repErrInvalid && typ != repErrUnknown {
					t.Fatalf("%s refused with unknown error %#x", optionName(o.opt), typ)
				}
			case typ == repServer && o.opt == optList:
				if len(data) < 4 || binary.BigEndian.Uint32(data) != uint32(len(data)-4) || exports[string(data[4:])] == nil {
					t.Fatalf("NBD_OPT_LIST entry % x", data)
				}
				continue
			case typ == repInfo && (o.opt == optGo || o.opt == optInfo) && len(data) >= 2:
				if binary.BigEndian.Uint16(data) == infoExport {
					if len(data) != 12 {
						t.Fatalf("NBD_INFO_EXPORT of %d bytes", len(data))
					}
					name, _ = parseInfoRequest(o.data)
					size, expFlags = binary.BigEndian.Uint64(data[2:]), binary.BigEndian.Uint16(data[10:])
				}
				continue
			default:
				t.Fatalf("%s answered with reply type %#x", optionName(o.opt), typ)
			}
			if typ == repAck && (o.opt == optGo || o.opt == optInfo) && name == "" {
				t.Fatalf("%s acknowledged without NBD_INFO_EXPORT", optionName(o.opt))
			}
			break
		}
		switch {
		case o.opt == optGo && typ == repAck:
			// The transmission phase begins: the server reads no option
			// after this one.
			if negErr != nil || len(out) != 0 {
				t.Fatalf("NBD_OPT_GO acknowledged, then %d more bytes and error %v", len(out), negErr)
			}
			checkExport(t, exp, name, size, expFlags, exports)
			return
		case o.opt == optAbort:
			if typ != repAck || !errors.Is(negErr, errClientAborted) || len(out) != 0 {
				t.Fatalf("NBD_OPT_ABORT answered with %#x, then %d more bytes and error %v", typ, len(out), negErr)
			}
			return
		}
	}
	if len(out) != 0 {
		t.Fatalf("%d bytes sent beyond the replies to the client's options: % x", len(out), out[:min(len(out), 40)])
	}
	if negErr == nil {
		t.Fatal("negotiation succeeded without a successful NBD_OPT_GO or NBD_OPT_EXPORT_NAME")
	}
	if errors.Is(negErr, errClientAborted) {
		t.Fatalf("negotiation aborted, but the last option answered was %v", last)
	}
	if exp.dev != nil {
		t.Fatalf("negotiation failed (%v) but returned export %q", negErr, exp.name)
	}
}

// checkExport checks the export negotiate returned against the one the
// client named and what the client was told of it.
func checkExport(t *testing.T, exp export, name string, size uint64, flags uint16, exports map[string]Device) {
	t.Helper()
	dev := exports[name]
	if dev == nil || exp.name != name || exp.dev != dev || exp.size != dev.Size() || exp.size != size || exp.flags != flags {
		t.Fatalf("export %q (size %d, flags %#x) told as %q size %d flags %#x", exp.name, exp.size, exp.flags, name, size, flags)
	}
	ro := dev.(*memDevice).readOnly
	if exp.readOnly != ro || (flags&flagReadOnly != 0) != ro || flags&flagHasFlags == 0 {
		t.Fatalf("export %q: read-only %v, flags %#x", name, exp.readOnly, flags)
	}
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
