package main

import (
	"fmt"
	"net"
	"os"
	"strings"
)

// sdNotify sends state (such as "READY=1") to the service manager when
// the daemon runs as a systemd Type=notify service ($NOTIFY_SOCKET is
// set); without one it does nothing. The protocol is one datagram on a
// unix socket, an abstract one when the path begins with '@'.
func sdNotify(state ...string) error {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return nil
	}
	if !strings.HasPrefix(path, "/") && !strings.HasPrefix(path, "@") {
		return fmt.Errorf("NOTIFY_SOCKET=%q: neither a path nor an abstract socket name", path)
	}
	name := path
	if name[0] == '@' {
		name = "\x00" + name[1:]
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("notifying the service manager at %s: %w", path, err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(strings.Join(state, "\n"))); err != nil {
		return fmt.Errorf("notifying the service manager at %s: %w", path, err)
	}
	return nil
}
