package sim

import (
	"flag"
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
	"testing/cryptotest"
	"testing/synctest"
	"time"
)

var (
	flagSeed      = flag.Uint64("sim.seed", 0, "replay this schedule only")
	flagTrace     = flag.Bool("sim.trace", false, "print the step trace of each schedule")
	flagLogs      = flag.Bool("sim.logs", false, "with -sim.trace, print the nodes' logs too")
	flagSchedules = flag.Int("sim.schedules", 2000, "number of random schedules")
	flagFirst     = flag.Uint64("sim.first", 1, "seed of the first random schedule")
	flagDuration  = flag.Duration("sim.duration", 0, "run random schedules for this long instead of -sim.schedules")
	flagKeepGoing = flag.Bool("sim.keepgoing", false, "report every failing schedule instead of stopping at the first")
	flagLeaks     = flag.Bool("sim.leaks", true, "fail a schedule that leaves goroutines of the nodes blocked after every node stopped (false: count them only)")
)

// TestSim plays random schedules (or the one -sim.seed names) and fails with
// the command that replays the first one that breaks a promise.
func TestSim(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	if *flagSeed != 0 {
		if r := play(t, *flagSeed); len(r.Violations) > 0 || r.Leak != "" {
			t.Fatalf("%s", report(r))
		}
		return
	}
	start := time.Now()
	n, failed, leaks := 0, 0, 0
	for seed := *flagFirst; ; seed++ {
		if *flagDuration > 0 && time.Since(start) >= *flagDuration || *flagDuration == 0 && n >= *flagSchedules {
			break
		}
		n++
		r := play(t, seed)
		if r.Leak != "" && !*flagLeaks {
			if leaks == 0 {
				t.Logf("seed %d leaked goroutines (not failing: -sim.leaks=false):\n%s", seed, r.Leak)
			}
			leaks++
			r.Leak = ""
		}
		if len(r.Violations) == 0 && r.Leak == "" {
			continue
		}
		failed++
		t.Errorf("%s", report(r))
		if !*flagKeepGoing {
			break
		}
	}
	el := time.Since(start)
	t.Logf("%d schedules in %v (%.1f per second), %d failed, %d leaked goroutines", n, el.Round(time.Millisecond), float64(n)/el.Seconds(), failed, leaks)
}

// play runs one schedule in a bubble of its own.
func play(t *testing.T, seed uint64) (r Result) {
	cryptotest.SetGlobalRandom(t, seed)
	var out *os.File
	if *flagTrace {
		out = os.Stdout
	}
	defer func() {
		// synctest fails a bubble whose goroutines are left blocked when
		// the schedule is over: a goroutine leak in the node.
		if e := recover(); e != nil {
			r.Params = drawParams(seed)
			r.Leak = fmt.Sprintf("after every node was stopped: %v:\n%s", e, leaked())
		}
	}()
	synctest.Test(t, func(t *testing.T) {
		if out != nil {
			r = Run(seed, out, *flagLogs)
		} else {
			r = Run(seed, nil, false)
		}
	})
	return r
}

func report(r Result) string {
	var b strings.Builder
	fmt.Fprintf(&b, "schedule %s broke a promise:\n", r.Params)
	for _, v := range r.Violations {
		fmt.Fprintf(&b, "  %s\n", v)
	}
	if r.Leak != "" {
		fmt.Fprintf(&b, "  %s\n", r.Leak)
	}
	if len(r.Tail) > 0 {
		fmt.Fprintf(&b, "last steps:\n  %s\n", strings.Join(r.Tail, "\n  "))
	}
	fmt.Fprintf(&b, "replay: go test ./cmd/georepl/internal/sim -run 'TestSim$' -sim.seed=%d -sim.trace", r.Params.Seed)
	return b.String()
}

// leaked returns the stacks of the goroutines a bubble left blocked.
func leaked() string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "synctest bubble") {
			out = append(out, g)
		}
	}
	return strings.Join(out, "\n\n")
}
