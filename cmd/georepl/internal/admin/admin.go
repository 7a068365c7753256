// Package admin is the control path between the georepl CLI and a running
// daemon: a unix socket, created owner-only (0600), carrying one JSON
// request per connection and a stream of JSON replies (one per line). The
// socket is the only way to control a daemon.
//
// A lock file beside the socket (SOCKET.lock, flock'ed for the daemon's
// lifetime) makes a second daemon for the same socket fail at start instead
// of stealing the socket from the first.
package admin

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultSocket is where the daemon listens and the CLI connects unless
// told otherwise (--admin, or the GEOREPL_ADMIN environment variable).
const DefaultSocket = "/run/georepl/georepl.sock"

// Request is one CLI command.
type Request struct {
	Verb     string `json:"verb"`
	Resource string `json:"resource,omitempty"`
	Peer     string `json:"peer,omitempty"`
	Force    bool   `json:"force,omitempty"`
	JSON     bool   `json:"json,omitempty"`
	Proc     bool   `json:"proc,omitempty"`
	// DiscardMyData: connect offering to be the victim of a split brain.
	DiscardMyData bool `json:"discard_my_data,omitempty"`
	// DryRun: adjust says what it would change, and changes nothing.
	DryRun bool `json:"dry_run,omitempty"`
	// AssumeClean: resize declares the new space identical (zero) on
	// every node instead of resynchronising it.
	AssumeClean bool `json:"assume_clean,omitempty"`
}

// Reply is one line of a daemon's answer. A request's answer ends with a
// Reply that has Done set (or Error).
type Reply struct {
	Error string          `json:"error,omitempty"`
	Text  string          `json:"text,omitempty"`
	Data  json.RawMessage `json:"data,omitempty"`
	Done  bool            `json:"done,omitempty"`
}

// ErrDaemonRunning means another daemon holds the socket's lock.
var ErrDaemonRunning = errors.New("another georepl daemon is already running")

// Handler answers one request; send streams replies. Returning an error
// ends the answer with that error; returning nil ends it with Done.
type Handler func(ctx context.Context, req Request, send func(Reply) error) error

// Listener is the daemon's admin socket.
type Listener struct {
	net.Listener
	lock *os.File
	path string
}

// Listen creates the admin socket at path (mode 0600, its directory 0700 if
// it has to be created), after taking the lock that keeps a second daemon
// away.
func Listen(path string) (*Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("admin socket directory: %w", err)
	}
	lock, err := os.OpenFile(path+".lock", os.O_CREATE|os.O_RDWR|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("admin socket lock: %w", err)
	}
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		lock.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w on admin socket %s", ErrDaemonRunning, path)
		}
		return nil, fmt.Errorf("admin socket lock %s.lock: %w", path, err)
	}
	// We hold the lock, so a socket file left here is stale.
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		lock.Close()
		return nil, fmt.Errorf("removing stale admin socket: %w", err)
	}
	old := unix.Umask(0o177)
	l, err := net.Listen("unix", path)
	unix.Umask(old)
	if err != nil {
		lock.Close()
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		lock.Close()
		return nil, err
	}
	return &Listener{Listener: l, lock: lock, path: path}, nil
}

// Close removes the socket and releases the lock.
func (l *Listener) Close() error {
	err := l.Listener.Close()
	os.Remove(l.path)
	l.lock.Close()
	return err
}

// Serve answers requests until the listener is closed. Other accept
// errors (the process is out of descriptors, a client went away before
// its connection was accepted) do not end it: it waits, from 5 ms
// doubling up to a second, and accepts again, as net/http's Server does;
// the admin socket is how an operator sees the trouble.
func Serve(l net.Listener, h Handler) error {
	var delay time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			time.Sleep(delay)
			continue
		}
		delay = 0
		go serveConn(c, h)
	}
}

func serveConn(c net.Conn, h Handler) {
	defer c.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var req Request
	dec := json.NewDecoder(c)
	if err := dec.Decode(&req); err != nil {
		json.NewEncoder(c).Encode(Reply{Error: "bad admin request: " + err.Error()})
		return
	}
	// The client closes its side when it goes away (e.g. Ctrl-C on
	// `georepl events`): cancel streaming handlers then.
	go func() {
		io.Copy(io.Discard, c)
		cancel()
	}()
	enc := json.NewEncoder(c)
	send := func(r Reply) error { return enc.Encode(r) }
	if err := h(ctx, req, send); err != nil {
		send(Reply{Error: err.Error()})
		return
	}
	send(Reply{Done: true})
}

// Call sends req to the daemon at path and hands each reply to each until
// the final one. A daemon-side error is returned as an error.
func Call(ctx context.Context, path string, req Request, each func(Reply) error) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return fmt.Errorf("cannot reach the georepl daemon at %s (is it running? --admin or GEOREPL_ADMIN name another socket): %w", path, err)
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	if err := json.NewEncoder(c).Encode(req); err != nil {
		return err
	}
	sc := bufio.NewScanner(c)
	sc.Buffer(make([]byte, 64*1024), 64*1024*1024)
	for sc.Scan() {
		var r Reply
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			return fmt.Errorf("bad reply from the daemon: %w", err)
		}
		if r.Error != "" {
			return errors.New(r.Error)
		}
		if r.Done {
			return nil
		}
		if err := each(r); err != nil {
			return err
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := sc.Err(); err != nil {
		return err
	}
	return errors.New("the daemon closed the admin connection without an answer")
}
