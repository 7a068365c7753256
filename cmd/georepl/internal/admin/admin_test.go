package admin

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// failingListener fails its first fails Accepts with EMFILE, as in a
// process out of descriptors, then accepts from the real listener.
type failingListener struct {
	net.Listener
	fails int
}

func (l *failingListener) Accept() (net.Conn, error) {
	if l.fails > 0 {
		l.fails--
		return nil, &net.OpError{Op: "accept", Net: "unix", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	}
	return l.Listener.Accept()
}

func TestServeSurvivesAcceptErrors(t *testing.T) {
	path := filepath.Join(t.TempDir(), "admin.sock")
	l, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() {
		served <- Serve(&failingListener{Listener: l, fails: 8}, func(ctx context.Context, req Request, send func(Reply) error) error {
			return send(Reply{Text: "status of " + req.Resource})
		})
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var got string
	err = Call(ctx, path, Request{Verb: "status", Resource: "r0"}, func(r Reply) error {
		got = r.Text
		return nil
	})
	if err != nil || got != "status of r0" {
		select {
		case err := <-served:
			t.Fatalf("Serve returned %v after accept errors", err)
		default:
		}
		t.Fatalf("call after accept errors: %q, %v", got, err)
	}
	l.Close()
	if err := <-served; err != nil {
		t.Fatalf("Serve after Close: %v", err)
	}
}
