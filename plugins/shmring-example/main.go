// Command shmring-example is a transport plugin whose bytes go through
// shared-memory rings between georepl and the plugin: the built-in tcp
// transport with its sockets hidden, as a transport without a kernel
// socket per channel (RDMA, a user-space stack) would be. The SDK sees
// streams that are no sockets and moves their bytes through the rings.
package main

import (
	"context"
	"io"

	"github.com/georepl/georepl/plugins/sdk"
	"github.com/georepl/georepl/transports"
	"github.com/georepl/georepl/transports/tcp"
)

func main() { sdk.Serve(transport{tcp.New()}) }

type transport struct{ tcp *tcp.Transport }

func (t transport) Dial(ctx context.Context, addr string, opts transports.Options) (transports.Conn, error) {
	c, err := t.tcp.Dial(ctx, addr, opts)
	if err != nil {
		return nil, err
	}
	return conn{c}, nil
}

func (t transport) Listen(addr string, opts transports.Options) (transports.Listener, error) {
	l, err := t.tcp.Listen(addr, opts)
	if err != nil {
		return nil, err
	}
	return listener{l}, nil
}

type listener struct{ transports.Listener }

func (l listener) Accept(ctx context.Context) (transports.Conn, error) {
	c, err := l.Listener.Accept(ctx)
	if err != nil {
		return nil, err
	}
	return conn{c}, nil
}

// conn hides its streams' sockets: only Read and Write are left.
type conn struct{ transports.Conn }

func (c conn) Stream(ch transports.Channel) io.ReadWriter {
	return struct{ io.ReadWriter }{c.Conn.Stream(ch)}
}
