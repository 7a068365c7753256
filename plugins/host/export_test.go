package host

import (
	"syscall"
	"time"

	"github.com/georepl/georepl/transports"
)

// SetPingForTest shortens the health check for one test.
func SetPingForTest(interval, timeout time.Duration) (restore func()) {
	savedInterval, savedTimeout := pingInterval, pingTimeout
	pingInterval, pingTimeout = interval, timeout
	return func() { pingInterval, pingTimeout = savedInterval, savedTimeout }
}

// SocketForTest returns the socket behind channel ch of c, a connection
// on the socket data plane.
func SocketForTest(c transports.Conn, ch transports.Channel) (syscall.Conn, bool) {
	hc, ok := c.(*conn)
	if !ok {
		return nil, false
	}
	sc, ok := hc.streams[ch].sock.(syscall.Conn)
	return sc, ok
}
