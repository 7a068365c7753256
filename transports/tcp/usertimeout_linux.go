package tcp

import (
	"fmt"
	"net"
	"time"

	"golang.org/x/sys/unix"
)

// setUserTimeout sets TCP_USER_TIMEOUT: the kernel aborts the connection
// when data stays unacknowledged for d. Keep-alive probes only run while
// nothing is outstanding; without this, a peer that vanished while data
// was in flight would be noticed only after the kernel's retransmissions
// give up, about 15 minutes, and protocol C writes would wait that long.
func setUserTimeout(sock *net.TCPConn, d time.Duration) error {
	raw, err := sock.SyscallConn()
	if err != nil {
		return fmt.Errorf("TCP_USER_TIMEOUT: %w", err)
	}
	var sockErr error
	err = raw.Control(func(fd uintptr) {
		sockErr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(d.Milliseconds()))
	})
	if err == nil {
		err = sockErr
	}
	if err != nil {
		return fmt.Errorf("TCP_USER_TIMEOUT: %w", err)
	}
	return nil
}
