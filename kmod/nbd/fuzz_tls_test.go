package nbd

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync/atomic"
	"testing"
	"time"
)

// FuzzNegotiateTLS feeds arbitrary client bytes to a server that insists
// on TLS. The first byte of an input chooses how they arrive:
//
//   - even: as they are, in the clear. The server must answer every
//     option but NBD_OPT_STARTTLS and NBD_OPT_ABORT with
//     NBD_REP_ERR_TLS_REQD, hang up on NBD_OPT_EXPORT_NAME, never
//     acknowledge NBD_OPT_STARTTLS with bytes behind it (they were sent in
//     the clear), never look an export up, and never end in the
//     transmission phase;
//   - odd: through TLS, after a genuine NBD_OPT_STARTTLS and TLS handshake
//     with a valid client certificate: what the server says must then read
//     as FuzzNegotiate requires, and NBD_REP_ERR_TLS_REQD never comes.
func FuzzNegotiateTLS(f *testing.F) {
	both := uint32(clientFixedNewstyle | clientNoZeroes)
	plain := func(h handshake) []byte { return append([]byte{0}, h...) }
	secured := func(h handshake) []byte { return append([]byte{1}, h[4:]...) } // the flags went before TLS
	f.Add(plain(newHandshake(both).option(optStartTLS, nil)))
	f.Add(plain(newHandshake(both).option(optGo, infoRequest("r0")).option(optStartTLS, nil)))
	f.Add(plain(newHandshake(both).option(optStartTLS, nil).option(optGo, infoRequest("r0"))))
	f.Add(plain(newHandshake(both).option(optList, nil).option(optInfo, infoRequest("r0")).option(optStartTLS, []byte("x")).option(optAbort, nil)))
	f.Add(plain(newHandshake(both).option(optExportName, []byte("r0"))))
	f.Add(plain(newHandshake(0).option(optStartTLS, nil)))
	f.Add(secured(newHandshake(both).option(optGo, infoRequest("r0", infoBlockSize))))
	f.Add(secured(newHandshake(both).option(optStartTLS, nil).option(optList, nil).option(optExportName, []byte("ro"))))
	f.Add(secured(newHandshake(both).option(optInfo, infoRequest("nope")).option(optAbort, nil)))

	ca := newTestCA(f, "export CA")
	serverConfig := (&exportPKI{ca: ca, server: ca.pair(f, "export", x509.ExtKeyUsageServerAuth)}).serverConfig()
	clientConfig := &tls.Config{RootCAs: ca.pool, ServerName: "localhost", Certificates: []tls.Certificate{ca.pair(f, "app", x509.ExtKeyUsageClientAuth)}}
	exports := map[string]Device{"r0": newMemDevice(1 << 20), "ro": &memDevice{data: make([]byte, 4096), readOnly: true, multiConn: true}}
	var lookups atomic.Int64
	srv := NewServer(func(name string) (Device, error) {
		lookups.Add(1)
		if dev, ok := exports[name]; ok {
			return dev, nil
		}
		return nil, fmt.Errorf("%w: %q", ErrNoSuchExport, name)
	}, slog.New(slog.DiscardHandler), WithTLS(serverConfig), WithExportList(func() []string { return []string{"r0", "ro"} }))

	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) == 0 {
			return
		}
		lookups.Store(0)
		if in[0]%2 == 0 {
			in = in[1:]
			nc := &scriptedConn{in: bytes.NewReader(in)}
			c := &conn{srv: srv, raw: nc, nc: nc, br: bufio.NewReader(nc), log: srv.log}
			exp, err := c.negotiate()
			checkBeforeTLS(t, in, nc.out, exp, err)
			if n := lookups.Load(); n != 0 {
				t.Fatalf("%d export lookups before TLS", n)
			}
			return
		}
		exp, in, out, err := negotiateThroughTLS(t, srv, clientConfig, in[1:])
		checkNegotiation(t, in, out, exp, err, exports)
	})
}

// negotiateThroughTLS runs a negotiation in which a client starts TLS and
// then sends options, the bytes of in, through it. It returns the export
// negotiated, what the client sent and received as if there were no TLS
// (its flags then in; the greeting then the replies after the handshake),
// and the negotiation's error.
func negotiateThroughTLS(t *testing.T, srv *Server, config *tls.Config, in []byte) (export, []byte, []byte, error) {
	server, client := net.Pipe()
	defer server.Close()
	defer client.Close()
	deadline := time.Now().Add(10 * time.Second)
	server.SetDeadline(deadline)
	client.SetDeadline(deadline)
	type result struct {
		exp export
		err error
	}
	done := make(chan result, 1)
	c := &conn{srv: srv, raw: server, nc: server, br: bufio.NewReader(server), log: srv.log}
	go func() {
		exp, err := c.negotiate()
		c.nc.Close()
		done <- result{exp, err}
	}()
	flags := uint32(clientFixedNewstyle | clientNoZeroes)
	greeting := make([]byte, 18)
	if _, err := io.ReadFull(client, greeting); err != nil {
		t.Fatal(err)
	}
	msg := binary.BigEndian.AppendUint32(nil, flags)
	msg = append(msg, newHandshake(0).option(optStartTLS, nil)[4:]...)
	if _, err := client.Write(msg); err != nil {
		t.Fatal(err)
	}
	ack := make([]byte, 20)
	if _, err := io.ReadFull(client, ack); err != nil || binary.BigEndian.Uint32(ack[12:]) != repAck {
		t.Fatalf("NBD_OPT_STARTTLS: % x, %v", ack, err)
	}
	tc := tls.Client(client, config)
	if err := tc.Handshake(); err != nil {
		t.Fatalf("TLS handshake: %v", err)
	}
	go func() {
		// The client hangs up after its bytes, as scriptedConn does. The
		// write fails if the server stopped reading and hung up first.
		if _, err := tc.Write(in); err == nil {
			tc.CloseWrite()
		}
	}()
	replies, _ := io.ReadAll(tc)
	r := <-done
	return r.exp, append(binary.BigEndian.AppendUint32(nil, flags), in...), append(greeting, replies...), r.err
}

// checkBeforeTLS checks what a server that insists on TLS sent to a client
// that sent in, in the clear.
func checkBeforeTLS(t *testing.T, in, out []byte, exp export, negErr error) {
	t.Helper()
	if len(out) < 18 || binary.BigEndian.Uint64(out) != magicInit || binary.BigEndian.Uint64(out[8:]) != magicOption {
		t.Fatalf("greeting % x", out[:min(len(out), 18)])
	}
	if negErr == nil || exp.dev != nil {
		t.Fatalf("negotiation without TLS ended in export %q, error %v", exp.name, negErr)
	}
	out = out[18:]
	flags, opts := clientOptions(in)
	if flags&clientFixedNewstyle == 0 && len(out) != 0 {
		t.Fatalf("%d bytes sent to a client without fixed newstyle, which cannot start TLS", len(out))
	}
	consumed := 4
	for _, o := range opts {
		consumed += 16 + len(o.data)
		if len(out) == 0 {
			break
		}
		if o.opt == optExportName {
			t.Fatalf("NBD_OPT_EXPORT_NAME before TLS answered with % x", out[:min(len(out), 40)])
		}
		if len(out) < 20 || binary.BigEndian.Uint64(out) != magicOptionReply || binary.BigEndian.Uint32(out[8:]) != o.opt {
			t.Fatalf("reply to %s: % x", optionName(o.opt), out[:min(len(out), 20)])
		}
		typ, length := binary.BigEndian.Uint32(out[12:]), binary.BigEndian.Uint32(out[16:])
		if uint64(length) > uint64(len(out)-20) {
			t.Fatalf("reply to %s claims %d bytes of %d", optionName(o.opt), length, len(out)-20)
		}
		out = out[20+length:]
		switch {
		case o.opt == optAbort:
			if typ != repAck || len(out) != 0 || !errors.Is(negErr, errClientAborted) {
				t.Fatalf("NBD_OPT_ABORT: reply %#x, then %d bytes, error %v", typ, len(out), negErr)
			}
			return
		case o.opt == optStartTLS && len(o.data) == 0:
			if typ != repAck {
				t.Fatalf("NBD_OPT_STARTTLS answered with %#x", typ)
			}
			if consumed != len(in) {
				t.Fatalf("NBD_OPT_STARTTLS acknowledged with %d bytes of the client's behind it, sent in the clear", len(in)-consumed)
			}
			return // what follows is TLS, which these bytes cannot complete
		case o.opt == optStartTLS:
			if typ != repErrInvalid {
				t.Fatalf("NBD_OPT_STARTTLS with data answered with %#x", typ)
			}
		case typ != repErrTLSReqd:
			t.Fatalf("%s before TLS answered with %#x, want NBD_REP_ERR_TLS_REQD", optionName(o.opt), typ)
		}
	}
	if len(out) != 0 {
		t.Fatalf("%d bytes sent beyond the replies to the client's options", len(out))
	}
}
