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
// the resync all images must be identical. Half of the kill points rejoin
// the killed primary and the lagging peers by reconnecting them as they
// are (the activity log and the bitmaps must find every difference), half
// with fresh metadata and a full sync. The daemons are built without the
// race detector here to keep the run bounded: the other cluster tests
// cover the daemons under -race.
func TestCrashConsistency(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("100 kill points take about two minutes")
	}
	bin := filepath.Join(t.TempDir(), "georepl")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("building georepl: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	for _, rejoin := range []string{checker.RejoinBitmap, checker.RejoinFull} {
		const runs = 50
		dir := t.TempDir()
		var out bytes.Buffer
		res, err := checker.Soak(ctx, checker.SoakOptions{
			Bin: bin, Dir: dir, Runs: runs, Seed: uint64(time.Now().UnixNano()), Out: &out, Rejoin: rejoin,
		})
		t.Logf("rejoin %s:\n%s", rejoin, out.String())
		if err != nil {
			for _, n := range []string{"alpha", "bravo", "charlie", "dr"} {
				b, _ := os.ReadFile(filepath.Join(dir, n+".log"))
				t.Logf("log of %s (tail):\n%s", n, tail(b, 3000))
			}
			t.Fatalf("rejoin %s: %v", rejoin, err)
		}
		if res.Runs < runs || res.Failures > 0 {
			t.Fatalf("rejoin %s: %d runs, %d failures:\n%v", rejoin, res.Runs, res.Failures, res.Failed)
		}
	}
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}
