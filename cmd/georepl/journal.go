package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// journalSocket is where journald takes entries in its native protocol.
const journalSocket = "/run/systemd/journal/socket"

// underJournal reports whether standard error is the journal's stream:
// systemd sets JOURNAL_STREAM to its device and inode.
func underJournal() bool {
	want := os.Getenv("JOURNAL_STREAM")
	if want == "" {
		return false
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(os.Stderr.Fd()), &st); err != nil {
		return false
	}
	return want == fmt.Sprintf("%d:%d", st.Dev, st.Ino)
}

// journalHandler sends each record to journald as one native entry:
// MESSAGE, PRIORITY, SYSLOG_IDENTIFIER, and every attribute as a field of
// its own (resource=r0 becomes RESOURCE=r0, a group's keys are joined with
// '_'), so that `journalctl RESOURCE=r0 PEER=dr` selects a resource's and
// a peer's lines. A record the journal refuses (too large for a datagram)
// goes to fallback.
type journalHandler struct {
	conn     *net.UnixConn
	level    slog.Leveler
	fallback slog.Handler
	prefix   string   // of the open group, "GROUP_"
	attrs    [][]byte // fields of WithAttrs, serialised
	mu       *sync.Mutex
}

func newJournalHandler(socket string, level slog.Leveler, fallback slog.Handler) (*journalHandler, error) {
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: socket, Net: "unixgram"})
	if err != nil {
		return nil, fmt.Errorf("journal socket %s: %w", socket, err)
	}
	return &journalHandler{conn: conn, level: level, fallback: fallback, mu: &sync.Mutex{}}, nil
}

func (h *journalHandler) Enabled(_ context.Context, l slog.Level) bool {
	return l >= h.level.Level()
}

func (h *journalHandler) WithAttrs(as []slog.Attr) slog.Handler {
	h2 := *h
	h2.attrs = append([][]byte(nil), h.attrs...)
	for _, a := range as {
		h2.attrs = appendAttr(h2.attrs, h.prefix, a)
	}
	h2.fallback = h.fallback.WithAttrs(as)
	return &h2
}

func (h *journalHandler) WithGroup(name string) slog.Handler {
	h2 := *h
	h2.prefix = h.prefix + journalName(name) + "_"
	h2.fallback = h.fallback.WithGroup(name)
	return &h2
}

func (h *journalHandler) Handle(ctx context.Context, r slog.Record) error {
	var b bytes.Buffer
	writeField(&b, "MESSAGE", r.Message)
	writeField(&b, "PRIORITY", fmt.Sprint(journalPriority(r.Level)))
	writeField(&b, "SYSLOG_IDENTIFIER", "georepl")
	for _, f := range h.attrs {
		b.Write(f)
	}
	var fields [][]byte
	r.Attrs(func(a slog.Attr) bool {
		fields = appendAttr(fields, h.prefix, a)
		return true
	})
	for _, f := range fields {
		b.Write(f)
	}
	h.mu.Lock()
	_, err := h.conn.Write(b.Bytes())
	h.mu.Unlock()
	if err != nil {
		return h.fallback.Handle(ctx, r)
	}
	return nil
}

// appendAttr serialises a (a group: each of its attributes) as fields.
func appendAttr(fields [][]byte, prefix string, a slog.Attr) [][]byte {
	a.Value = a.Value.Resolve()
	if a.Equal(slog.Attr{}) {
		return fields
	}
	if a.Value.Kind() == slog.KindGroup {
		p := prefix
		if a.Key != "" {
			p += journalName(a.Key) + "_"
		}
		for _, g := range a.Value.Group() {
			fields = appendAttr(fields, p, g)
		}
		return fields
	}
	var b bytes.Buffer
	writeField(&b, prefix+journalName(a.Key), a.Value.String())
	return append(fields, b.Bytes())
}

// journalName makes key a journal field name: upper-case letters, digits
// and '_', not starting with '_' (those are the journal's own).
func journalName(key string) string {
	name := strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z':
			return r - 'a' + 'A'
		case r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
			return r
		}
		return '_'
	}, key)
	name = strings.TrimLeft(name, "_")
	if name == "" || name[0] >= '0' && name[0] <= '9' {
		name = "F" + name
	}
	return name
}

// writeField writes one field of the native protocol: NAME=value, or for
// a value with a newline NAME, newline, its length and the value.
func writeField(b *bytes.Buffer, name, value string) {
	b.WriteString(name)
	if !strings.Contains(value, "\n") {
		b.WriteByte('=')
		b.WriteString(value)
		b.WriteByte('\n')
		return
	}
	b.WriteByte('\n')
	binary.Write(b, binary.LittleEndian, uint64(len(value)))
	b.WriteString(value)
	b.WriteByte('\n')
}

// journalPriority maps a level to syslog's priorities.
func journalPriority(l slog.Level) int {
	switch {
	case l >= slog.LevelError:
		return 3
	case l >= slog.LevelWarn:
		return 4
	case l >= slog.LevelInfo:
		return 6
	}
	return 7
}
