package host

import "time"

// SetPingForTest shortens the health check for one test.
func SetPingForTest(interval, timeout time.Duration) (restore func()) {
	savedInterval, savedTimeout := pingInterval, pingTimeout
	pingInterval, pingTimeout = interval, timeout
	return func() { pingInterval, pingTimeout = savedInterval, savedTimeout }
}
