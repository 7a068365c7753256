package host

import (
	"log/slog"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/georepl/georepl/plugins/internal/control"
	"github.com/georepl/georepl/transports"
)

// TestHandoffGarbageFailsOneConnection: a plugin that sends a malformed
// hand-off packet fails the connection it was for (within the hand-off
// timeout), and the next connection is handed
// over fine.
func TestHandoffGarbageFailsOneConnection(t *testing.T) {
	saved := handoffTimeout
	handoffTimeout = 300 * time.Millisecond
	defer func() { handoffTimeout = saved }()
	h, theirs, err := newHandoffPair(slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer h.close()
	nc, err := net.FileConn(theirs)
	theirs.Close()
	if err != nil {
		t.Fatal(err)
	}
	plugin := nc.(*net.UnixConn)
	defer plugin.Close()
	send := func(payload []byte, files ...*os.File) {
		t.Helper()
		fds := make([]int, len(files))
		for i, f := range files {
			fds[i] = int(f.Fd())
		}
		var oob []byte
		if len(fds) > 0 {
			oob = unix.UnixRights(fds...)
		}
		if _, _, err := plugin.WriteMsgUnix(payload, oob, nil); err != nil {
			t.Fatal(err)
		}
	}
	pipe := func() *os.File {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		w.Close()
		return r
	}

	bad, badCh := h.reserve()
	one := pipe()
	send(control.EncodeHandoff(bad), one)   // one descriptor instead of two
	send([]byte("garbage"), pipe(), pipe()) // no valid id
	if _, err := h.take(bad, badCh); err == nil || !strings.Contains(err.Error(), "did not come") {
		t.Fatalf("take after a malformed packet: %v, want a protocol error", err)
	}

	good, goodCh := h.reserve()
	files := make([]*os.File, transports.NumChannels)
	for i := range files {
		files[i] = pipe()
	}
	send(control.EncodeHandoff(good), files...)
	got, err := h.take(good, goodCh)
	if err != nil || len(got) != transports.NumChannels {
		t.Fatalf("take after a good packet: %d files, %v", len(got), err)
	}
	closeFiles(got)
}
