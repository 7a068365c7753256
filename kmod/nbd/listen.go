package nbd

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"strings"
	"syscall"
	"time"
)

// ErrBadSpec is wrapped by the errors Listen and Dial return for an export
// spec they cannot parse.
var ErrBadSpec = errors.New("bad export spec")

// parseSpec splits an export spec ("unix:/path" or "tcp:host:port") into a
// network and an address for package net.
func parseSpec(spec string) (network, address string, err error) {
	kind, rest, ok := strings.Cut(spec, ":")
	switch {
	case ok && kind == "unix":
		if rest == "" {
			return "", "", fmt.Errorf("nbd: export spec %q: %w: no socket path after \"unix:\"", spec, ErrBadSpec)
		}
		return "unix", rest, nil
	case ok && kind == "tcp":
		host, port, err := net.SplitHostPort(rest)
		if err != nil {
			return "", "", fmt.Errorf("nbd: export spec %q: %w: %v", spec, ErrBadSpec, err)
		}
		if host == "" || port == "" {
			return "", "", fmt.Errorf("nbd: export spec %q: %w: want tcp:HOST:PORT with both set (tcp:0.0.0.0:PORT means every address)", spec, ErrBadSpec)
		}
		return "tcp", rest, nil
	}
	return "", "", fmt.Errorf("nbd: export spec %q: %w: want unix:/path/to/socket or tcp:host:port", spec, ErrBadSpec)
}

// Listen opens the listener an export spec names:
//
//   - "unix:/path" — a unix socket at /path, mode 0600 (only its owner may
//     connect). A socket file left over at /path is removed first, but only
//     if nothing is listening on it; any other file there is an error. The
//     socket file is removed when the listener is closed.
//   - "tcp:host:port" — a TCP listener bound to exactly that address
//     ("tcp:127.0.0.1:10809"; port 0 picks a free port). NBD carries no
//     authentication or encryption: keep it on loopback or a private link.
func Listen(spec string) (net.Listener, error) {
	network, address, err := parseSpec(spec)
	if err != nil {
		return nil, err
	}
	if network == "tcp" {
		l, err := net.Listen("tcp", address)
		if err != nil {
			return nil, fmt.Errorf("nbd: listen on %s: %w", spec, err)
		}
		return l, nil
	}
	if err := removeStaleSocket(address); err != nil {
		return nil, err
	}
	l, err := net.Listen("unix", address)
	if err != nil {
		return nil, fmt.Errorf("nbd: listen on %s: %w", spec, err)
	}
	// There is a moment between bind and chmod when the umask decides who
	// may connect; changing the process-wide umask instead would race with
	// every other file this process creates.
	if err := os.Chmod(address, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("nbd: listen on %s: %w", spec, err)
	}
	return l, nil
}

// removeStaleSocket removes a unix socket file nothing listens on.
func removeStaleSocket(path string) error {
	info, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("nbd: listen on unix:%s: %w", path, err)
	}
	if info.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("nbd: listen on unix:%s: the path exists and is not a socket (mode %v); refusing to remove it", path, info.Mode())
	}
	probe, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		probe.Close()
		return fmt.Errorf("nbd: listen on unix:%s: %w: another process is listening on this socket", path, syscall.EADDRINUSE)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("nbd: listen on unix:%s: cannot tell whether the existing socket is in use: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("nbd: listen on unix:%s: removing the stale socket: %w", path, err)
	}
	return nil
}
