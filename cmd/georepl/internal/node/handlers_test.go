package node

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestRoleHandlers: under manual failover an operator's `primary` runs
// on_promote once, a second `primary` on the Primary runs nothing, and
// `secondary` runs on_demote before it demotes; each sees its event in its environment.
// (That on_promote runs only once the kernel device is attached is proved
// in the VM rig: kmod/vmtest, TestExt4AutoFailover.)
func TestRoleHandlers(t *testing.T) {
	dir := t.TempDir()
	record, script := filepath.Join(dir, "events"), filepath.Join(dir, "handler")
	if err := os.WriteFile(script, []byte("#!/bin/sh\necho \"$GEOREPL_NODE $GEOREPL_EVENT $1\" >> "+record+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	daemons := demoCluster(t, func(_, src string) string {
		block := fmt.Sprintf("  handlers {\n    on_promote = %q\n    on_demote = %q\n  }\n", script+" promote", script+" demote")
		return strings.Replace(src, "  net {\n", block+"\n  net {\n", 1)
	}, nil)
	alpha := daemons["alpha"].lookup("r0")
	recorded := func(want string) func() (bool, string) {
		return func() (bool, string) {
			b, err := os.ReadFile(record)
			return string(b) == want, fmt.Sprintf("%q (%v), want %q", b, err, want)
		}
	}
	if err := alpha.Primary(true); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "on_promote ran on alpha", recorded("alpha role promote\n"))
	if err := alpha.Primary(true); err != nil {
		t.Fatalf("primary on the Primary: %v", err)
	}
	if err := alpha.Secondary(); err != nil {
		t.Fatal(err)
	}
	// on_demote ran before the demotion (and the detach of a kernel
	// device, which it may unmount) and secondary waited for it. Had the
	// second primary started on_promote, its line would come before or
	// after on_demote's, but come.
	if ok, why := recorded("alpha role promote\nalpha role demote\n")(); !ok {
		t.Fatalf("when secondary returned: %s", why)
	}
	time.Sleep(100 * time.Millisecond)
	if ok, why := recorded("alpha role promote\nalpha role demote\n")(); !ok {
		t.Fatalf("after secondary: %s", why)
	}
}
