package main

import (
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/georepl/georepl/cmd/georepl/internal/checker"
)

// TestDaemonNotifiesReadyAndServesMetrics runs the daemon as systemd runs
// a Type=notify service: READY=1 reaches $NOTIFY_SOCKET only once the
// admin socket answers (and, with --up, the resource is up), the
// metrics_address of the configuration serves the resource's series,
// and SIGTERM sends STOPPING=1.
func TestDaemonNotifiesReadyAndServesMetrics(t *testing.T) {
	port, err := checker.FreePorts(1)
	if err != nil {
		t.Fatal(err)
	}
	metrics := "127.0.0.1:" + strconv.Itoa(port)
	c := newCluster(t, 8<<20, func(src string) string { return "metrics_address = \"" + metrics + "\"\n" + src })
	sock := filepath.Join(c.dir, "notify.sock")
	l, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	t.Setenv("NOTIFY_SOCKET", sock)
	next := func() string {
		t.Helper()
		buf := make([]byte, 4096)
		l.SetReadDeadline(time.Now().Add(30 * time.Second))
		n, err := l.Read(buf)
		if err != nil {
			t.Fatalf("no notification: %v\n%s", err, c.log("alpha"))
		}
		return string(buf[:n])
	}
	c.start("alpha")
	ready := next()
	if !strings.Contains(ready, "READY=1") || !strings.Contains(ready, "STATUS=admin socket "+c.adminSock("alpha")) {
		t.Fatalf("first notification %q; want READY=1 and the admin socket", ready)
	}
	resp, err := http.Get("http://" + metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if want := `georepl_resource_up{node="alpha",resource="r0"} 1`; !strings.Contains(string(body), want) {
		t.Fatalf("metrics lack %q:\n%s", want, body)
	}
	c.stopAll()
	if got := next(); got != "STOPPING=1" {
		t.Fatalf("notification at SIGTERM %q; want STOPPING=1", got)
	}
}
