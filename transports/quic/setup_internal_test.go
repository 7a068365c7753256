package quic

import (
	"context"
	"crypto/tls"
	"errors"
	"testing"
	"time"

	quicgo "github.com/quic-go/quic-go"

	"github.com/georepl/georepl/transports"
)

// dialRaw opens a QUIC connection to ln with plain quic-go, so that a
// test can break the stream set-up rules.
func dialRaw(t *testing.T, ln transports.Listener, alpn string) (*quicgo.Conn, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	tlsConf := &tls.Config{InsecureSkipVerify: true, NextProtos: []string{alpn}, MinVersion: tls.VersionTLS13}
	qc, err := quicgo.DialAddr(ctx, ln.Addr().String(), tlsConf, nil)
	if err == nil {
		t.Cleanup(func() { qc.CloseWithError(0, "") })
	}
	return qc, err
}

// expectSetupRefused waits until the listener closes qc with codeBadSetup.
func expectSetupRefused(t *testing.T, qc *quicgo.Conn, why string) {
	t.Helper()
	select {
	case <-qc.Context().Done():
	case <-time.After(streamSetupTimeout + 5*time.Second):
		t.Fatalf("%s: the listener kept the connection", why)
	}
	var appErr *quicgo.ApplicationError
	if err := context.Cause(qc.Context()); !errors.As(err, &appErr) || appErr.ErrorCode != codeBadSetup {
		t.Errorf("%s: connection ended with %v, want application error %d", why, err, codeBadSetup)
	}
}

func TestListenerRefusesBadStreamSetUp(t *testing.T) {
	saved := streamSetupTimeout
	streamSetupTimeout = 300 * time.Millisecond
	defer func() { streamSetupTimeout = saved }()
	ln, err := New().Listen("127.0.0.1:0", transports.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()

	cases := []struct {
		name    string
		indexes []byte
	}{
		{"unknown channel", []byte{0, transports.NumChannels}},
		{"repeated channel", []byte{1, 1}},
		{"one channel only", []byte{0}},
		{"no stream announced", nil},
	}
	for _, tc := range cases {
		qc, err := dialRaw(t, ln, ALPN)
		if err != nil {
			t.Fatalf("%s: dial: %v", tc.name, err)
		}
		if tc.indexes == nil {
			if _, err := qc.OpenStream(); err != nil {
				t.Fatal(err)
			}
		}
		for _, index := range tc.indexes {
			s, err := qc.OpenStream()
			if err != nil {
				t.Fatal(err)
			}
			if _, err := s.Write([]byte{index}); err != nil {
				t.Fatal(err)
			}
		}
		expectSetupRefused(t, qc, tc.name)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if c, err := ln.Accept(ctx); err == nil {
		c.Close()
		t.Fatal("Accept returned a connection with a bad set-up")
	}
}

func TestListenerRequiresALPN(t *testing.T) {
	ln, err := New().Listen("127.0.0.1:0", transports.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if _, err := dialRaw(t, ln, "h3"); err == nil {
		t.Fatal("a client with ALPN h3 completed the handshake")
	}
}

// TestListenerBoundsSetUps: connections that completed their TLS
// handshake but have not set up their streams (nothing authenticates a
// peer before that) are bounded per source address: one more from the
// same address is refused at once, not held for streamSetupTimeout.
func TestListenerBoundsSetUps(t *testing.T) {
	ln, err := New().Listen("127.0.0.1:0", transports.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var held []*quicgo.Conn
	for range maxSetUpsPerSource {
		qc, err := dialRaw(t, ln, ALPN)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, qc)
	}
	extra, err := dialRaw(t, ln, ALPN)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-extra.Context().Done():
	case <-time.After(streamSetupTimeout / 2):
		t.Fatalf("connection %d from one address is held (its set-up may take %v)", maxSetUpsPerSource+1, streamSetupTimeout)
	}
	var appErr *quicgo.ApplicationError
	if err := context.Cause(extra.Context()); !errors.As(err, &appErr) || appErr.ErrorCode != codeBadSetup {
		t.Errorf("the extra connection ended with %v, want application error %d", err, codeBadSetup)
	}
	for i, qc := range held {
		if qc.Context().Err() != nil {
			t.Errorf("connection %d, within the bound, was closed: %v", i, context.Cause(qc.Context()))
		}
	}
}
