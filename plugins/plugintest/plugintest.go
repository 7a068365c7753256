// Package plugintest starts transport plugins in tests, so that the
// conformance suite (transports/transporttest) runs on a plugin exactly as
// on a built-in transport:
//
//	func TestConformance(t *testing.T) {
//		bin := plugintest.Build(t, "example.com/mytransport/cmd/plugin")
//		transporttest.Run(t, func(t *testing.T) (transports.Transport, string) {
//			return plugintest.Start(t, "mytransport", bin), "127.0.0.1:0"
//		})
//	}
package plugintest

import (
	"bytes"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/georepl/georepl/plugins/host"
)

// Build compiles the main package pkg (an import path, or a directory as
// the go command takes it) into t's temporary directory and returns the
// binary's path. Build it once per test, not per subtest: Start is cheap.
func Build(t testing.TB, pkg string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), filepath.Base(strings.TrimSuffix(pkg, "/")))
	out, err := exec.Command("go", "build", "-o", bin, pkg).CombinedOutput()
	if err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, out)
	}
	return bin
}

// Checksum returns the SHA-256 of the file at path.
func Checksum(t testing.TB, path string) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sum, err := host.FileSHA256(f)
	if err != nil {
		t.Fatal(err)
	}
	return sum
}

// Start starts the plugin binary at path (with args) as transport name,
// with its own checksum and no configuration, and stops it at the end of
// the test. Its log goes to the test's log.
func Start(t testing.TB, name, path string, args ...string) *host.Plugin {
	t.Helper()
	return StartConfig(t, host.Config{Name: name, Path: path, Args: args})
}

// StartConfig starts the plugin cfg describes, as Start does: with the
// binary's own checksum and the test's log unless cfg has its own.
func StartConfig(t testing.TB, cfg host.Config) *host.Plugin {
	t.Helper()
	if cfg.SHA256 == nil {
		cfg.SHA256 = Checksum(t, cfg.Path)
	}
	if cfg.Log == nil {
		cfg.Log = Logger(t)
	}
	p, err := host.Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// Logger returns a logger that writes to t's log until t ends, and then
// nowhere (a plugin may still log while it stops).
func Logger(t testing.TB) *slog.Logger {
	w := &testWriter{t: t}
	t.Cleanup(func() {
		w.mu.Lock()
		w.done = true
		w.mu.Unlock()
	})
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct {
	t    testing.TB
	mu   sync.Mutex
	done bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(string(bytes.TrimRight(p, "\n")))
	}
	return len(p), nil
}
