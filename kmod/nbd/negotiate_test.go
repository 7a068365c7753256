package nbd

import (
	"bufio"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// rawClient speaks the handshake by hand, to reach what Client never sends.
type rawClient struct {
	t  *testing.T
	nc net.Conn
	br *bufio.Reader
}

func rawHandshake(t *testing.T, path string, clientFlags uint32) *rawClient {
	t.Helper()
	nc, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	r := &rawClient{t: t, nc: nc, br: bufio.NewReader(nc)}
	hello := r.read(18)
	if binary.BigEndian.Uint64(hello) != magicInit || binary.BigEndian.Uint64(hello[8:]) != magicOption {
		t.Fatalf("bad greeting % x", hello)
	}
	if flags := binary.BigEndian.Uint16(hello[16:]); flags != flagFixedNewstyle|flagNoZeroes {
		t.Fatalf("handshake flags %#x", flags)
	}
	r.write(binary.BigEndian.AppendUint32(nil, clientFlags))
	return r
}

func (r *rawClient) read(n int) []byte {
	r.t.Helper()
	p := make([]byte, n)
	if _, err := io.ReadFull(r.br, p); err != nil {
		r.t.Fatalf("reading %d bytes: %v", n, err)
	}
	return p
}

func (r *rawClient) write(p []byte) {
	r.t.Helper()
	if _, err := r.nc.Write(p); err != nil {
		r.t.Fatal(err)
	}
}

func (r *rawClient) option(opt uint32, data []byte) {
	r.t.Helper()
	msg := binary.BigEndian.AppendUint64(nil, magicOption)
	msg = binary.BigEndian.AppendUint32(msg, opt)
	msg = binary.BigEndian.AppendUint32(msg, uint32(len(data)))
	r.write(append(msg, data...))
}

// reply reads one option reply, checking that it answers opt.
func (r *rawClient) reply(opt uint32) (uint32, []byte) {
	r.t.Helper()
	hdr := r.read(20)
	if magic := binary.BigEndian.Uint64(hdr); magic != magicOptionReply {
		r.t.Fatalf("option reply magic %#x", magic)
	}
	if got := binary.BigEndian.Uint32(hdr[8:]); got != opt {
		r.t.Fatalf("reply is for option %d, want %d", got, opt)
	}
	return binary.BigEndian.Uint32(hdr[12:]), r.read(int(binary.BigEndian.Uint32(hdr[16:])))
}

// expectClosed checks that the server hung up.
func (r *rawClient) expectClosed() {
	r.t.Helper()
	if n, err := r.br.Read(make([]byte, 1)); err == nil {
		r.t.Fatalf("connection still open (read %d bytes)", n)
	}
}

// flushRequest sends NBD_CMD_FLUSH and checks its simple reply.
func (r *rawClient) flushRequest() {
	r.t.Helper()
	var req [requestHeaderSize]byte
	putRequestHeader(req[:], 0, cmdFlush, 77, 0, 0)
	r.write(req[:])
	reply := r.read(replyHeaderSize)
	if binary.BigEndian.Uint32(reply) != magicSimpleReply || binary.BigEndian.Uint32(reply[4:]) != 0 ||
		binary.BigEndian.Uint64(reply[8:]) != 77 {
		r.t.Fatalf("flush reply % x", reply)
	}
}

func infoRequest(name string, infos ...uint16) []byte {
	data := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	data = append(data, name...)
	data = binary.BigEndian.AppendUint16(data, uint16(len(infos)))
	for _, info := range infos {
		data = binary.BigEndian.AppendUint16(data, info)
	}
	return data
}

func TestNegotiationOptions(t *testing.T) {
	dev := newMemDevice(1 << 20)
	s := startServer(t, map[string]Device{"r0": dev})
	r := rawHandshake(t, s.path, clientFixedNewstyle|clientNoZeroes)

	refusals := []struct {
		opt     uint32
		data    []byte
		want    uint32
		message string
	}{
		{optList, nil, repErrPolicy, "does not list its exports"},
		{optList, []byte("x"), repErrInvalid, "carries no data"},
		{optStructuredReply, nil, repErrUnsup, "simple replies"},
		{optStartTLS, nil, repErrUnsup, "TLS is not configured"},
		{42, []byte("whatever"), repErrUnsup, "option 42 is not supported"},
		{optInfo, []byte{0, 0, 0, 9, 'r'}, repErrInvalid, "shorter than the 6-byte minimum"},
		{optInfo, []byte{0, 0, 0, 9, 'r', '0', 0, 0}, repErrInvalid, "overruns"},
		{optInfo, append(infoRequest("r0"), 0), repErrInvalid, "information requests need"},
		{optGo, infoRequest("r1"), repErrUnknown, "no such export"},
	}
	for _, tc := range refusals {
		r.option(tc.opt, tc.data)
		got, message := r.reply(tc.opt)
		if got != tc.want || !strings.Contains(string(message), tc.message) {
			t.Errorf("%s: reply %#x %q, want %#x containing %q", optionName(tc.opt), got, message, tc.want, tc.message)
		}
	}

	// NBD_OPT_INFO, then NBD_OPT_GO, both with the full information.
	for _, opt := range []uint32{optInfo, optGo} {
		r.option(opt, infoRequest("r0", infoBlockSize))
		var sawExport, sawBlock bool
		for {
			typ, data := r.reply(opt)
			if typ == repAck {
				break
			}
			if typ != repInfo {
				t.Fatalf("%s: reply type %#x %q", optionName(opt), typ, data)
			}
			switch binary.BigEndian.Uint16(data) {
			case infoExport:
				sawExport = true
				size, flags := binary.BigEndian.Uint64(data[2:]), binary.BigEndian.Uint16(data[10:])
				want := uint16(flagHasFlags | flagSendFlush | flagSendFUA | flagSendTrim | flagSendWriteZeroes)
				if size != 1<<20 || flags != want {
					t.Fatalf("NBD_INFO_EXPORT size %d flags %#x, want %d %#x", size, flags, 1<<20, want)
				}
			case infoBlockSize:
				sawBlock = true
				minimum, preferred, maximum := binary.BigEndian.Uint32(data[2:]), binary.BigEndian.Uint32(data[6:]), binary.BigEndian.Uint32(data[10:])
				if minimum != 1 || preferred != 4096 || maximum != 32<<20 {
					t.Fatalf("NBD_INFO_BLOCK_SIZE %d/%d/%d", minimum, preferred, maximum)
				}
			}
		}
		if !sawExport || !sawBlock {
			t.Fatalf("%s: export info %v, block size %v", optionName(opt), sawExport, sawBlock)
		}
	}
	r.flushRequest()
}

func TestExportNameOption(t *testing.T) {
	dev := newMemDevice(4096)
	s := startServer(t, map[string]Device{"r0": dev})
	for _, noZeroes := range []bool{false, true} {
		flags := uint32(clientFixedNewstyle)
		padding := exportNameZeroesSz
		if noZeroes {
			flags |= clientNoZeroes
			padding = 0
		}
		r := rawHandshake(t, s.path, flags)
		r.option(optExportName, []byte("r0"))
		reply := r.read(10 + padding)
		if size := binary.BigEndian.Uint64(reply); size != 4096 {
			t.Fatalf("export size %d", size)
		}
		r.flushRequest() // in step: exactly the right number of zeroes came
	}

	r := rawHandshake(t, s.path, clientFixedNewstyle)
	r.option(optExportName, []byte("missing"))
	r.expectClosed() // the only refusal NBD_OPT_EXPORT_NAME allows
}

func TestListWithExportList(t *testing.T) {
	s := startServer(t, map[string]Device{"r0": newMemDevice(512)}, WithExportList(func() []string { return []string{"r0", "r1"} }))
	r := rawHandshake(t, s.path, clientFixedNewstyle)
	r.option(optList, nil)
	var names []string
	for {
		typ, data := r.reply(optList)
		if typ == repAck {
			break
		}
		if typ != repServer || int(binary.BigEndian.Uint32(data)) != len(data)-4 {
			t.Fatalf("list reply %#x % x", typ, data)
		}
		names = append(names, string(data[4:]))
	}
	if strings.Join(names, ",") != "r0,r1" {
		t.Fatalf("listed %q", names)
	}
}

func TestAbortAndProtocolViolationsEndNegotiation(t *testing.T) {
	s := startServer(t, map[string]Device{"r0": newMemDevice(512)})

	r := rawHandshake(t, s.path, clientFixedNewstyle)
	r.option(optAbort, nil)
	if typ, _ := r.reply(optAbort); typ != repAck {
		t.Fatalf("abort reply %#x", typ)
	}
	r.expectClosed()

	r = rawHandshake(t, s.path, clientFixedNewstyle|1<<5)
	r.expectClosed()

	r = rawHandshake(t, s.path, clientFixedNewstyle)
	r.write(make([]byte, 16)) // no IHAVEOPT magic
	r.expectClosed()

	r = rawHandshake(t, s.path, clientFixedNewstyle)
	msg := binary.BigEndian.AppendUint64(nil, magicOption)
	msg = binary.BigEndian.AppendUint32(msg, optGo)
	r.write(binary.BigEndian.AppendUint32(msg, maxOptionLength+1))
	r.expectClosed()
}

func TestListen(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "a.sock")
	l, err := Listen("unix:" + path)
	if err != nil {
		t.Fatal(err)
	}
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := info.Mode().Perm(); perm != 0o600 {
		t.Fatalf("socket mode %v, want 0600", perm)
	}
	if _, err := Listen("unix:" + path); !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("Listen on a live socket: %v, want EADDRINUSE", err)
	}
	// Leave a stale socket behind, as a crashed daemon would.
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("stale socket not left behind: %v", err)
	}
	l, err = Listen("unix:" + path)
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	l.Close()

	plain := filepath.Join(dir, "plain")
	if err := os.WriteFile(plain, []byte("keep me"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen("unix:" + plain); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("Listen over a regular file: %v", err)
	}
	if data, _ := os.ReadFile(plain); string(data) != "keep me" {
		t.Fatal("Listen damaged a regular file")
	}

	tl, err := Listen("tcp:127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if host, _, _ := net.SplitHostPort(tl.Addr().String()); host != "127.0.0.1" {
		t.Fatalf("tcp listener bound to %v", tl.Addr())
	}
	tl.Close()

	for _, bad := range []string{"tcp::10809", "tcp:localhost", "udp:127.0.0.1:1", "unix:", "/run/x.sock", ""} {
		if _, err := Listen(bad); !errors.Is(err, ErrBadSpec) || !strings.Contains(err.Error(), bad) {
			t.Errorf("Listen(%q): %v, want ErrBadSpec naming the spec", bad, err)
		}
	}
}

// TestSeveralListeners serves one device on a unix socket and on TCP.
func TestSeveralListeners(t *testing.T) {
	dev := newMemDevice(1 << 16)
	s := startServer(t, map[string]Device{"": dev})
	l, err := Listen("tcp:127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(l) }()
	overTCP := dial(t, "tcp:"+l.Addr().String(), "")
	if err := overTCP.WriteAt([]byte("tcp"), 1, true); err != nil {
		t.Fatal(err)
	}
	overUnix := dial(t, s.spec, "")
	got := make([]byte, 3)
	if _, err := overUnix.ReadAt(got, 1); err != nil || string(got) != "tcp" {
		t.Fatalf("read over unix after write over tcp: %q, %v", got, err)
	}
	overTCP.Close()
	overUnix.Close()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-served; !errors.Is(err, ErrServerClosed) {
		t.Fatalf("Serve(tcp) returned %v", err)
	}
}
