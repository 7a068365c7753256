// Command tcp-dscp is a georepl transport plugin: TCP whose packets carry
// a DSCP class, so that routers on the way can give replication its own
// priority. docs/plugins.md walks through it.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"syscall"

	"github.com/georepl/georepl/plugins/sdk"
	"github.com/georepl/georepl/transports"
)

func main() { sdk.Serve(&transport{}) }

type transport struct{ dscp int }

// Configure takes the plugin block's config: config = { dscp = 10 }.
// Without one (null), packets keep class 0, best effort.
func (t *transport) Configure(config json.RawMessage) error {
	var c struct{ DSCP int }
	dec := json.NewDecoder(bytes.NewReader(config))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	if c.DSCP < 0 || c.DSCP > 63 {
		return fmt.Errorf("config: dscp %d is no DSCP class (0 to 63)", c.DSCP)
	}
	t.dscp = c.DSCP
	return nil
}

// mark sets the class on a socket before it connects or listens; the
// sockets a listener accepts inherit it.
func (t *transport) mark(network, _ string, rc syscall.RawConn) (err error) {
	level, opt := syscall.IPPROTO_IP, syscall.IP_TOS
	if network == "tcp6" {
		level, opt = syscall.IPPROTO_IPV6, syscall.IPV6_TCLASS
	}
	rc.Control(func(fd uintptr) { err = syscall.SetsockoptInt(int(fd), level, opt, t.dscp<<2) })
	return err
}

// Dial opens a socket per channel; the SDK names them for the listener,
// which pairs them into one connection, and hands them to georepl.
func (t *transport) Dial(ctx context.Context, addr string, opts transports.Options) (transports.Conn, error) {
	d := net.Dialer{Control: t.mark, KeepAlive: opts.KeepAlive}
	return sdk.DialChannels(ctx, func(ctx context.Context) (net.Conn, error) {
		return d.DialContext(ctx, "tcp", addr)
	})
}

func (t *transport) Listen(addr string, opts transports.Options) (transports.Listener, error) {
	lc := net.ListenConfig{Control: t.mark, KeepAlive: opts.KeepAlive}
	ln, err := lc.Listen(context.Background(), "tcp", addr)
	if err != nil {
		return nil, err
	}
	return sdk.ListenChannels(ln), nil
}
