package top

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	tea "github.com/charmbracelet/bubbletea"

	"github.com/georepl/georepl/cmd/georepl/internal/node"
)

// status is a daemon's status after sent bytes to bravo, in 4 KiB writes:
// each took 2 ms from submission to completion and 1.5 ms from hand-over
// to bravo's acknowledgement. charlie, an asynchronous peer, lacks 3 MiB
// of writes completed up to 12.5 s ago, beyond its rpo_warning.
func status(sent uint64) []*node.ResourceStatus {
	writes := sent / 4096
	return []*node.ResourceStatus{{
		Name: "r0", Up: true, Role: "Primary", Disk: "UpToDate", Size: 1 << 30,
		AppWriteLatency: node.LatencySnapshot{Count: writes, Sum: float64(writes) * 0.002},
		Peers: []node.PeerStatus{
			{Name: "bravo", Conn: "Established", Repl: "Established", Role: "Secondary", Disk: "UpToDate",
				Protocol: "C", Transport: "tcp", BytesSent: sent,
				AckLatency: node.LatencySnapshot{Count: writes, Sum: float64(writes) * 0.0015}},
			{Name: "charlie", Conn: "Established", Repl: "SyncSource", Role: "Secondary", Disk: "Inconsistent",
				Protocol: "A", Transport: "quic", OutOfSync: 512 << 20,
				Resync: &node.Resync{Percent: 50, Rate: 10 << 20, ETASeconds: 51},
				RPO:    &node.RPO{AgeSeconds: 12.5, Bytes: 3 << 20, WarningSeconds: 10, Exceeded: true}},
		},
	}}
}

func key(s string) tea.KeyMsg {
	switch s {
	case "down":
		return tea.KeyMsg{Type: tea.KeyDown}
	case "up":
		return tea.KeyMsg{Type: tea.KeyUp}
	}
	return tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune(s)}
}

func update(t *testing.T, m Model, msg tea.Msg) (Model, tea.Cmd) {
	t.Helper()
	next, cmd := m.Update(msg)
	return next.(Model), cmd
}

func TestModel(t *testing.T) {
	sent := uint64(0)
	fetch := func(context.Context) ([]*node.ResourceStatus, error) { return status(sent), nil }
	var controlled []string
	control := func(_ context.Context, verb, res, peer string) error {
		controlled = append(controlled, verb+" "+res+" "+peer)
		return nil
	}
	m := New(fetch, control)
	if v := m.View(); !strings.Contains(v, "waiting for the daemon") {
		t.Errorf("before the first status:\n%s", v)
	}
	first, ok := m.Init()().(StatusMsg)
	if !ok || first.Err != nil {
		t.Fatalf("Init's command returned %#v", first)
	}
	m, cmd := update(t, m, first)
	if cmd == nil {
		t.Fatal("a status schedules no next fetch")
	}
	if _, ok := cmd().(TickMsg); !ok {
		t.Error("the command after a status is not the tick")
	}

	// One second later bravo has been sent 2 MiB more.
	sent = 2 << 20
	m, _ = update(t, m, StatusMsg{Status: status(sent), At: first.At.Add(time.Second)})
	v := m.View()
	for _, want := range []string{
		"r0  Primary  UpToDate  1.0GiB  write latency 2.00ms",
		"> bravo ", "tx 2.0MiB/s rx 0B/s", "out-of-sync 0B  ack 1.50ms",
		"  charlie ", "SyncSource", "out-of-sync 512.0MiB  RPO 12.5s 3.0MiB (beyond rpo_warning)",
		"resync [##########----------]  50.0% 10.0MiB/s ETA 51s",
	} {
		if !strings.Contains(v, want) {
			t.Errorf("view has no %q:\n%s", want, v)
		}
	}

	// Select charlie and pause, then resume, its resync.
	m, _ = update(t, m, key("down"))
	m, _ = update(t, m, key("down")) // stays on the last row
	if !strings.Contains(m.View(), "> charlie ") {
		t.Errorf("down did not select charlie:\n%s", m.View())
	}
	for _, k := range []string{"p", "r"} {
		var cmd tea.Cmd
		m, cmd = update(t, m, key(k))
		if cmd == nil {
			t.Fatalf("key %s: no command", k)
		}
		m, _ = update(t, m, cmd())
	}
	if got := strings.Join(controlled, ", "); got != "pause-sync r0 charlie, resume-sync r0 charlie" {
		t.Errorf("controls run: %s", got)
	}
	if !strings.Contains(m.View(), "resume-sync r0 charlie: done") {
		t.Errorf("the outcome is not shown:\n%s", m.View())
	}
	m, _ = update(t, m, key("up"))
	if !strings.Contains(m.View(), "> bravo ") {
		t.Errorf("up did not select bravo:\n%s", m.View())
	}

	// A failed pause shows its error.
	m.control = func(context.Context, string, string, string) error { return errors.New("no resync to pause") }
	m, cmd = update(t, m, key("p"))
	m, _ = update(t, m, cmd())
	if !strings.Contains(m.View(), "no resync to pause") {
		t.Errorf("the control's error is not shown:\n%s", m.View())
	}

	// A failed fetch keeps the last status and shows the error.
	m, _ = update(t, m, StatusMsg{Err: errors.New("cannot reach the georepl daemon")})
	if v := m.View(); !strings.Contains(v, "error: cannot reach the georepl daemon") || !strings.Contains(v, "charlie") {
		t.Errorf("after a failed fetch:\n%s", v)
	}

	if _, cmd := update(t, m, key("q")); cmd == nil {
		t.Error("q does not quit")
	} else if _, ok := cmd().(tea.QuitMsg); !ok {
		t.Error("q's command is not quit")
	}
}

// TestModelNewConnection: counters that went down (a new connection) give
// no rate rather than a huge one.
func TestModelNewConnection(t *testing.T) {
	m := New(nil, nil)
	at := time.Now()
	m, _ = update(t, m, StatusMsg{Status: status(10 << 20), At: at})
	m, _ = update(t, m, StatusMsg{Status: status(1 << 20), At: at.Add(time.Second)})
	if v := m.View(); !strings.Contains(v, "tx 0B/s") || strings.Contains(v, "ack ") || strings.Contains(v, "latency") {
		t.Errorf("after the counters restarted (no rate, no latency):\n%s", v)
	}
}

func TestRunPlain(t *testing.T) {
	sent := uint64(0)
	fetch := func(context.Context) ([]*node.ResourceStatus, error) {
		sent += 1 << 20
		return status(sent), nil
	}
	var out bytes.Buffer
	if err := RunPlain(t.Context(), &out, fetch, 2); err != nil {
		t.Fatal(err)
	}
	s := out.String()
	if n := strings.Count(s, "r0  Primary"); n != 2 {
		t.Errorf("%d snapshots, want 2:\n%s", n, s)
	}
	if strings.Contains(s, "> ") || strings.Contains(s, "quit") {
		t.Errorf("plain lines with a cursor or keys:\n%s", s)
	}
	if !strings.Contains(s, "ETA 51s") {
		t.Errorf("plain lines without the resync:\n%s", s)
	}
}
