package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/georepl/georepl/cmd/georepl/internal/checker"
)

// TestCrashConsistency runs the checker's kill points (issue #3's checker):
// the primary of a four-node loopback cluster is killed at 100 random
// moments; every survivor must hold what its protocol promises, and after
// the resync all images must be identical. The daemons are built without
// the race detector here to keep the run bounded: the other cluster tests
// cover the daemons under -race.
func TestCrashConsistency(t *testing.T) {
	if testing.Short() {
		t.Skip("100 kill points take about two minutes")
	}
	bin := filepath.Join(t.TempDir(), "georepl")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("building georepl: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	dir := t.TempDir()
	var out bytes.Buffer
	res, err := checker.Soak(ctx, checker.SoakOptions{
		Bin: bin, Dir: dir, Runs: 100, Seed: uint64(time.Now().UnixNano()), Out: &out,
	})
	t.Logf("%s", out.String())
	if err != nil {
		for _, n := range []string{"alpha", "bravo", "charlie", "dr"} {
			b, _ := os.ReadFile(filepath.Join(dir, n+".log"))
			t.Logf("log of %s (tail):\n%s", n, tail(b, 3000))
		}
		t.Fatal(err)
	}
	if res.Runs < 100 || res.Failures > 0 {
		t.Fatalf("%d runs, %d failures:\n%v", res.Runs, res.Failures, res.Failed)
	}
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}
