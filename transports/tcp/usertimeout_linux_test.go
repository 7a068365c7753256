package tcp

import (
	"context"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/georepl/georepl/transports"
)

func TestIdleTimeoutBecomesTCPUserTimeoutOnBothEnds(t *testing.T) {
	opts := transports.Options{KeepAlive: time.Second, IdleTimeout: 7 * time.Second}
	ln, err := New().Listen("127.0.0.1:0", opts)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	accepted := make(chan transports.Conn, 1)
	go func() {
		c, _ := ln.Accept(ctx)
		accepted <- c
	}()
	dialed, err := New().Dial(ctx, ln.Addr().String(), opts)
	if err != nil {
		t.Fatal(err)
	}
	defer dialed.Close()
	peer := <-accepted
	if peer == nil {
		t.Fatal("Accept failed")
	}
	defer peer.Close()

	for end, c := range map[string]transports.Conn{"dialer": dialed, "acceptor": peer} {
		for ch, sock := range c.(*conn).socks {
			raw, err := sock.sock.SyscallConn()
			if err != nil {
				t.Fatal(err)
			}
			var ms int
			var getErr error
			raw.Control(func(fd uintptr) {
				ms, getErr = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT)
			})
			if getErr != nil || ms != 7000 {
				t.Errorf("%s channel %d: TCP_USER_TIMEOUT = %d ms (%v), want 7000", end, ch, ms, getErr)
			}
		}
	}
}
