package main

import (
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// TestSysmonEnv: the daemon's re-exec adds the schedtrace setting to
// GODEBUG once, keeps the operator's other settings, and leaves a
// schedtrace the operator chose alone.
func TestSysmonEnv(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		environ []string
		again   bool
		godebug string
	}{
		{[]string{"PATH=/bin"}, true, "GODEBUG=" + sysmonAwake},
		{[]string{"GODEBUG=madvdontneed=1", "PATH=/bin"}, true, "GODEBUG=madvdontneed=1," + sysmonAwake},
		{[]string{"GODEBUG=", "PATH=/bin"}, true, "GODEBUG=" + sysmonAwake},
		{[]string{"GODEBUG=schedtrace=0", "PATH=/bin"}, false, "GODEBUG=schedtrace=0"},
		{[]string{"GODEBUG=gctrace=1,schedtrace=" + strings.TrimPrefix(sysmonAwake, "schedtrace="), "PATH=/bin"}, false, "GODEBUG=gctrace=1," + sysmonAwake},
		// The runtime reads the first GODEBUG; a second one goes.
		{[]string{"GODEBUG=gctrace=1", "GODEBUG=x=2", "PATH=/bin"}, true, "GODEBUG=gctrace=1," + sysmonAwake},
	} {
		env, again := sysmonEnv(tc.environ)
		if again != tc.again {
			t.Errorf("%q: re-exec %v, want %v", tc.environ, again, tc.again)
		}
		var godebug []string
		for _, kv := range env {
			if strings.HasPrefix(kv, "GODEBUG=") {
				godebug = append(godebug, kv)
			}
		}
		if len(godebug) != 1 || godebug[0] != tc.godebug {
			t.Errorf("%q: GODEBUG entries %q, want exactly %q", tc.environ, godebug, tc.godebug)
		}
		if !slices.Contains(env, "PATH=/bin") {
			t.Errorf("%q: lost PATH: %q", tc.environ, env)
		}
	}
}

// daemonGodebug is the GODEBUG a running daemon's process has, from /proc.
func daemonGodebug(t *testing.T, pid int) string {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ")
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range strings.Split(string(b), "\x00") {
		if v, ok := strings.CutPrefix(kv, "GODEBUG="); ok {
			return v
		}
	}
	return ""
}
