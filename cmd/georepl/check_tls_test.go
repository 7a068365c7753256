package main

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/georepl/georepl/kmod/nbd"
	"github.com/georepl/georepl/transports/nodetls"
)

// memDevice is a device in memory, for an NBD server under test.
type memDevice struct {
	mu     sync.Mutex
	data   []byte
	writes int
}

func (m *memDevice) Size() uint64 { return uint64(len(m.data)) }
func (m *memDevice) ReadAt(_ context.Context, p []byte, off uint64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	copy(p, m.data[off:])
	return nil
}
func (m *memDevice) WriteAt(_ context.Context, p []byte, off uint64, _ bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	copy(m.data[off:], p)
	m.writes++
	return nil
}
func (m *memDevice) Flush(context.Context) error { return nil }
func (m *memDevice) Trim(_ context.Context, off, length uint64) error {
	return m.WriteZeroes(context.Background(), off, length, false)
}
func (m *memDevice) WriteZeroes(_ context.Context, off, length uint64, _ bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	clear(m.data[off : off+length])
	return nil
}

// TestCheckWriteTLS: `georepl check write` against an export that
// requires TLS, with the files `georepl tls init` writes: with
// --tls-certificates it writes through TLS; without, it says which flag
// is missing; a client key others may read is refused.
func TestCheckWriteTLS(t *testing.T) {
	dir := t.TempDir()
	if err := exportInit([]string{"alpha"}, map[string][]string{"alpha": {"127.0.0.1"}}, dir, time.Hour, time.Now()); err != nil {
		t.Fatal(err)
	}
	id, err := nodetls.LoadExport(nodetls.Files{CA: filepath.Join(dir, "export-ca.crt"), Cert: filepath.Join(dir, "alpha-export.crt"), Key: filepath.Join(dir, "alpha-export.key")})
	if err != nil {
		t.Fatal(err)
	}
	dev := &memDevice{data: make([]byte, 1<<20)}
	srv := nbd.NewServer(func(string) (nbd.Device, error) { return dev, nil }, slog.New(slog.DiscardHandler), nbd.WithTLS(id.ServerConfig()))
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	export := "tcp:" + l.Addr().String()

	run := func(args ...string) (string, error) {
		cmd := checkWriteCmd()
		var out bytes.Buffer
		cmd.SetOut(&out)
		cmd.SetErr(&out)
		cmd.SetArgs(append([]string{"--export", export, "--name", "r0", "--log", filepath.Join(t.TempDir(), "check.log"), "--blocks", "64"}, args...))
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		defer cancel()
		err := cmd.ExecuteContext(ctx)
		return out.String(), err
	}

	out, err := run("--tls-certificates", dir)
	if err != nil {
		t.Fatalf("check write with TLS: %v\n%s", err, out)
	}
	dev.mu.Lock()
	writes := dev.writes
	dev.mu.Unlock()
	if writes == 0 || !strings.Contains(out, "writes completed") {
		t.Errorf("check write with TLS: %d writes reached the device; it said %q", writes, out)
	}
	t.Logf("%d writes through TLS: %s", writes, strings.TrimSpace(out))

	if _, err := run(); err == nil || !strings.Contains(err.Error(), "--tls-certificates") || !strings.Contains(err.Error(), "requires TLS") {
		t.Errorf("check write without TLS: %v, want told the export requires TLS and to give --tls-certificates", err)
	}

	// qemu's and libnbd's names, with a key others may read.
	libnbd := t.TempDir()
	for from, to := range map[string]string{"export-ca.crt": "ca-cert.pem", "client.crt": "client-cert.pem", "client.key": "client-key.pem"} {
		b, err := os.ReadFile(filepath.Join(dir, from))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(libnbd, to), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := run("--tls-certificates", libnbd); err == nil || !strings.Contains(err.Error(), "readable by group or others") {
		t.Errorf("check write with a key others may read: %v, want refused", err)
	}
	if err := os.Chmod(filepath.Join(libnbd, "client-key.pem"), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := run("--tls-certificates", libnbd); err != nil {
		t.Errorf("check write with qemu's file names: %v\n%s", err, out)
	}
}
