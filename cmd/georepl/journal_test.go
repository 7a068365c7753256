package main

import (
	"bytes"
	"encoding/binary"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestJournalHandlerFields sends records to a stand-in journal socket and
// checks the native entries: message, priority, identifier, attributes
// (also those of With and groups) as upper-case fields, and a value with
// a newline in the length-prefixed form.
func TestJournalHandlerFields(t *testing.T) {
	t.Parallel()
	sock := filepath.Join(t.TempDir(), "journal.sock")
	l, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var fallback bytes.Buffer
	h, err := newJournalHandler(sock, slog.LevelInfo, slog.NewTextHandler(&fallback, nil))
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(h).With("resource", "r0")
	log.Debug("not at this level")
	log.WithGroup("link").Warn("dropping connection", "peer", "dr", "reason", "line one\nline two")
	buf := make([]byte, 65536)
	l.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := l.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	entry := buf[:n]
	for _, want := range []string{"MESSAGE=dropping connection\n", "PRIORITY=4\n", "SYSLOG_IDENTIFIER=georepl\n", "RESOURCE=r0\n", "LINK_PEER=dr\n"} {
		if !bytes.Contains(entry, []byte(want)) {
			t.Errorf("entry lacks %q:\n%q", want, entry)
		}
	}
	value := "line one\nline two"
	var binaryField bytes.Buffer
	binaryField.WriteString("LINK_REASON\n")
	binary.Write(&binaryField, binary.LittleEndian, uint64(len(value)))
	binaryField.WriteString(value + "\n")
	if !bytes.Contains(entry, binaryField.Bytes()) {
		t.Errorf("entry lacks the length-prefixed LINK_REASON:\n%q", entry)
	}
	if strings.Contains(string(entry), "not at this level") || fallback.Len() > 0 {
		t.Errorf("a debug record went out: %q / %q", entry, fallback.String())
	}
	if got := journalName("9lives.x-y"); got != "F9LIVES_X_Y" {
		t.Errorf("journalName = %q", got)
	}
}
