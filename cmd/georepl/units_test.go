package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestSystemdUnitsCallRealCommands checks the systemd units in configs/systemd
// against the command line they run: every Exec line names a verb of
// georepl with flags and arguments it accepts, and the daemon's unit waits
// for the readiness notification the daemon sends.
func TestSystemdUnitsCallRealCommands(t *testing.T) {
	t.Parallel()
	units, err := filepath.Glob("../../configs/systemd/*.service")
	if err != nil || len(units) != 2 {
		t.Fatalf("units: %v %v; want georepl.service and georepl@.service", units, err)
	}
	variable := regexp.MustCompile(`\$\{[A-Z_]+\}|%[a-zA-Z]`)
	for _, path := range units {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		execs := 0
		for _, line := range strings.Split(string(b), "\n") {
			key, cmdline, ok := strings.Cut(line, "=")
			if !ok || !strings.HasPrefix(key, "Exec") || !strings.HasPrefix(cmdline, "/usr/local/sbin/georepl ") {
				continue
			}
			execs++
			args := strings.Fields(variable.ReplaceAllString(cmdline, "x"))[1:]
			root := rootCmd()
			cmd, rest, err := root.Find(args)
			if err != nil || cmd == root {
				t.Errorf("%s: %s: no such verb: %v", filepath.Base(path), line, err)
				continue
			}
			if err := cmd.ParseFlags(rest); err != nil {
				t.Errorf("%s: %s: %v", filepath.Base(path), line, err)
				continue
			}
			if err := cmd.ValidateArgs(cmd.Flags().Args()); err != nil {
				t.Errorf("%s: %s: %v", filepath.Base(path), line, err)
			}
			if err := cmd.ValidateRequiredFlags(); err != nil {
				t.Errorf("%s: %s: %v", filepath.Base(path), line, err)
			}
		}
		if execs == 0 {
			t.Errorf("%s runs no georepl command", filepath.Base(path))
		}
		if filepath.Base(path) == "georepl.service" && !strings.Contains(string(b), "\nType=notify\n") {
			t.Errorf("georepl.service is not Type=notify: systemd would not wait for the admin socket")
		}
	}
}
