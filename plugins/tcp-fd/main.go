// Command tcp-fd is a georepl transport plugin: TCP with one socket per
// channel, set up here and handed to georepl, which moves the data itself.
// docs/plugins.md walks through it.
package main

import (
	"context"
	"crypto/rand"
	"io"
	"net"
	"time"

	"github.com/georepl/georepl/plugins/sdk"
	"github.com/georepl/georepl/transports"
)

func main() { sdk.Serve(transport{}) }

type transport struct{}

// conn holds one *net.TCPConn per channel: the SDK hands them to georepl.
type conn [transports.NumChannels]net.Conn

func (c conn) Stream(ch transports.Channel) io.ReadWriter { return c[ch] }
func (c conn) LocalAddr() net.Addr                        { return c[0].LocalAddr() }
func (c conn) RemoteAddr() net.Addr                       { return c[0].RemoteAddr() }
func (c conn) Close() error {
	for _, s := range c {
		if s != nil {
			s.Close()
		}
	}
	return nil
}

// Dial opens a socket per channel and sends on each the connection's
// random id and the channel number, then waits for the listener's answers.
func (transport) Dial(ctx context.Context, addr string, _ transports.Options) (transports.Conn, error) {
	var c conn
	err := c.setUp(ctx, addr)
	if ctx.Err() != nil {
		err = ctx.Err()
	}
	if err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

func (c *conn) setUp(ctx context.Context, addr string) (err error) {
	for ch := range c {
		if c[ch], err = (&net.Dialer{}).DialContext(ctx, "tcp", addr); err != nil {
			return err
		}
	}
	stop := context.AfterFunc(ctx, func() { c.setDeadline(time.Unix(1, 0)) })
	defer stop()
	hello := make([]byte, 9)
	rand.Read(hello[:8])
	for ch, s := range c {
		if hello[8] = byte(ch); err == nil {
			_, err = s.Write(hello)
		}
	}
	for _, s := range c {
		if err == nil {
			_, err = io.ReadFull(s, hello[8:])
		}
	}
	return err
}

func (c *conn) setDeadline(t time.Time) {
	for _, s := range c {
		s.SetDeadline(t)
	}
}

type listener struct {
	net.Listener
	ready, closing chan conn
}

func (transport) Listen(addr string, _ transports.Options) (transports.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	l := &listener{ln, make(chan conn), make(chan conn)}
	go l.serve()
	return l, nil
}

// serve reads each socket's hello (one at a time, to stay short) and
// queues a connection for Accept once all its channels came.
func (l *listener) serve() {
	sets := map[string]*conn{}
	for {
		s, err := l.Listener.Accept()
		if err != nil {
			return
		}
		hello := make([]byte, 9)
		s.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := io.ReadFull(s, hello); err != nil || hello[8] >= transports.NumChannels {
			s.Close()
			continue
		}
		s.SetReadDeadline(time.Time{})
		id := string(hello[:8])
		if sets[id] == nil {
			sets[id] = new(conn)
		}
		c := sets[id]
		if c[hello[8]] = s; c[0] == nil || c[1] == nil {
			continue
		}
		delete(sets, id)
		for _, s := range c {
			s.Write([]byte{1})
		}
		select {
		case l.ready <- *c:
		case <-l.closing:
			c.Close()
		}
	}
}

func (l *listener) Accept(ctx context.Context) (transports.Conn, error) {
	select {
	case c := <-l.ready:
		return c, nil
	case <-l.closing:
		return nil, net.ErrClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (l *listener) Close() error { close(l.closing); return l.Listener.Close() }
