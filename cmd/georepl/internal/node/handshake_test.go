package node

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestPrintable(t *testing.T) {
	long := strings.Repeat("é", maxReasonLen) // two bytes each
	for _, tc := range []struct{ in, want string }{
		{"authentication failed", "authentication failed"},
		{"two\nlines\x1b[31m", "two\uFFFDlines\uFFFD[31m"},
		{"bad \xff utf-8", "bad \uFFFD utf-8"},
		{long, strings.Repeat("é", maxReasonLen/2) + "... (cut at 256 bytes)"},
		{"a" + long, "a" + strings.Repeat("é", maxReasonLen/2-1) + "... (cut at 256 bytes)"}, // the cut splits an é
	} {
		got := printable([]byte(tc.in))
		if got != tc.want || !utf8.ValidString(got) {
			t.Errorf("printable(%.40q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestPreAuthLog(t *testing.T) {
	var buf bytes.Buffer
	l := &preAuthLog{log: slog.New(slog.NewTextHandler(&buf, nil))}
	for range 3 * preAuthLogBurst {
		l.Warn("refusing connection")
	}
	if n := strings.Count(buf.String(), "\n"); n != preAuthLogBurst {
		t.Fatalf("%d lines logged for %d calls at once, want the burst of %d", n, 3*preAuthLogBurst, preAuthLogBurst)
	}
	l.last = l.last.Add(-preAuthLogEvery) // a second later
	buf.Reset()
	l.Warn("refusing connection")
	l.Warn("refusing connection")
	if got := buf.String(); strings.Count(got, "\n") != 1 || !strings.Contains(got, "not_logged_before=40") {
		t.Fatalf("a second later: %q, want one line counting the 40 left out", got)
	}
}
