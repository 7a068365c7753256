package node

import (
	"bytes"
	"strings"
	"testing"
)

// TestVerifyInStatus: a running verify shows as DRBD's VerifyS in the
// /proc layout, and a finished one lists its ranges in the text status.
func TestVerifyInStatus(t *testing.T) {
	st := &ResourceStatus{Name: "r0", Node: "alpha", Up: true, Role: "Primary", Disk: "UpToDate", Size: 1 << 20,
		Peers: []PeerStatus{{Name: "bravo", ID: 1, Conn: "Connected", Repl: "Established", Role: "Secondary", Disk: "UpToDate", Protocol: "C",
			Verify: &Verify{Running: true, Percent: 50, DoneBytes: 512 << 10, TotalBytes: 1 << 20, Ranges: []VerifyRange{}}}}}
	var proc bytes.Buffer
	WriteProc(&proc, []*ResourceStatus{st})
	if !strings.Contains(proc.String(), "cs:VerifyS ro:Primary/Secondary") {
		t.Errorf("status --proc during a verify:\n%s", proc.String())
	}
	st.Peers[0].Verify = &Verify{Percent: 100, DoneBytes: 1 << 20, TotalBytes: 1 << 20, OutOfSyncBytes: 12288,
		Ranges: []VerifyRange{{Offset: 4096, Length: 4096}, {Offset: 65536, Length: 8192}}}
	var text bytes.Buffer
	WriteStatus(&text, []*ResourceStatus{st})
	if want := "verify: done, 12.0KiB out of sync in [4096, +4096) [65536, +8192)"; !strings.Contains(text.String(), want) {
		t.Errorf("status after a verify lacks %q:\n%s", want, text.String())
	}
	proc.Reset()
	WriteProc(&proc, []*ResourceStatus{st})
	if !strings.Contains(proc.String(), "cs:Connected ro:Primary/Secondary") {
		t.Errorf("status --proc after a verify:\n%s", proc.String())
	}
}
