package kmod

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestFaults: nothing fails until the trigger file exists; an empty one
// fails everything with EIO, a range only what overlaps it (flushes go
// on); a malformed one says what is wrong; removing it disarms.
func TestFaults(t *testing.T) {
	b := newBacking(t, 1<<20)
	trigger := filepath.Join(t.TempDir(), "fail")
	b.InjectFaults(NewFaults(trigger))
	p := make([]byte, 4096)
	ops := map[string]func() error{
		"read":   func() error { _, err := b.ReadAt(p, 8192); return err },
		"write":  func() error { _, err := b.WriteAt(p, 8192); return err },
		"zeroes": func() error { return b.WriteZeroes(8192, 4096) },
		"punch":  func() error { return b.Punch(8192, 4096) },
		"sync":   b.Sync,
	}
	expect := func(state string, failing map[string]bool) {
		t.Helper()
		for name, op := range ops {
			err := op()
			if failing[name] != (err != nil) {
				t.Errorf("%s: %s: err = %v, want failing %v", state, name, err, failing[name])
			}
			if err != nil && !errors.Is(err, syscall.EIO) {
				t.Errorf("%s: %s: %v does not wrap EIO", state, name, err)
			}
		}
	}
	none := map[string]bool{}
	all := map[string]bool{"read": true, "write": true, "zeroes": true, "punch": true, "sync": true}
	ranged := map[string]bool{"read": true, "write": true, "zeroes": true, "punch": true}

	expect("no trigger", none)
	write := func(s string) {
		if err := os.WriteFile(trigger, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("")
	expect("empty trigger", all)
	write("12287 1\n")
	expect("range overlapping the ops' last byte", ranged)
	write("12288 4096")
	expect("range just after the ops", none)
	write("4096 4096")
	expect("range just before the ops", none)
	write("lots")
	expect("malformed trigger", all)
	if _, err := b.ReadAt(p, 0); err == nil || !strings.Contains(err.Error(), `holds "lots"`) {
		t.Errorf("malformed trigger: %v, want it quoted", err)
	}
	if err := os.Remove(trigger); err != nil {
		t.Fatal(err)
	}
	expect("trigger removed", none)
}
