//go:build !linux

package tcp

import (
	"net"
	"time"
)

// setUserTimeout does nothing where TCP_USER_TIMEOUT is not available:
// there, a peer that vanishes while data is in flight is noticed when the
// kernel's retransmissions give up.
func setUserTimeout(*net.TCPConn, time.Duration) error { return nil }
