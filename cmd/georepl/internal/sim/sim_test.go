package sim

import (
	"flag"
	"fmt"
	"os"
	"regexp"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
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
	flagSchedules = flag.Int("sim.schedules", defaultSchedules, "number of random schedules")
	flagFirst     = flag.Uint64("sim.first", 1, "seed of the first random schedule")
	flagDuration  = flag.Duration("sim.duration", 0, "run random schedules for this long instead of -sim.schedules")
	flagKeepGoing = flag.Bool("sim.keepgoing", false, "report every failing schedule instead of stopping at the first")
	flagIgnore    = flag.String("sim.ignore", "", "comma-separated violation classes (a, b, c, d, protocol, liveness, leak, harness) that are counted but fail nothing, so that a known bug does not hide others")
	flagAvoid     = flag.String("sim.avoid", "", "comma-separated situations the scheduler steers clear of (handshake, split; see Run)")
)

func set(list string) map[string]bool {
	m := map[string]bool{}
	for _, c := range strings.Split(list, ",") {
		if c != "" {
			m[c] = true
		}
	}
	return m
}

// TestSim plays random schedules (or the one -sim.seed names) and fails
// with the command that replays the first one that breaks a promise.
func TestSim(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	// The nodes allocate a buffer per frame and per write; the collector
	// would run most of the time at the default target (the daemon sets
	// the same, see tuneGC in package main).
	defer debug.SetGCPercent(debug.SetGCPercent(400))
	ignore, avoid := set(*flagIgnore), set(*flagAvoid)
	if *flagSeed != 0 {
		if r := play(t, *flagSeed, ignore, avoid); len(r.Violations) > 0 {
			t.Fatalf("%s", report(r))
		}
		return
	}
	start := time.Now()
	n, failed := 0, 0
	seeds := map[string][]uint64{} // class → the first seeds that broke it
	count := map[string]int{}
	for seed := *flagFirst; ; seed++ {
		if *flagDuration > 0 && time.Since(start) >= *flagDuration || *flagDuration == 0 && n >= *flagSchedules {
			break
		}
		n++
		r := play(t, seed, ignore, avoid)
		seen := map[string]bool{}
		for _, v := range append(slices.Clone(r.Violations), r.Ignored...) {
			if !seen[v.Class] {
				seen[v.Class] = true
				count[v.Class]++
				if len(seeds[v.Class]) < 10 {
					seeds[v.Class] = append(seeds[v.Class], seed)
				}
			}
		}
		if len(r.Violations) == 0 {
			continue
		}
		failed++
		t.Errorf("%s", report(r))
		if !*flagKeepGoing {
			break
		}
	}
	el := time.Since(start)
	t.Logf("%d schedules in %v (%.1f per second), %d failed", n, el.Round(time.Millisecond), float64(n)/el.Seconds(), failed)
	classes := make([]string, 0, len(seeds))
	for c := range seeds {
		classes = append(classes, c)
	}
	slices.Sort(classes)
	for _, c := range classes {
		t.Logf("class %s: %d schedules, first seeds %v", c, count[c], seeds[c])
	}
}

// play runs one schedule in a bubble of its own.
func play(t *testing.T, seed uint64, ignore, avoid map[string]bool) (r Result) {
	cryptotest.SetGlobalRandom(t, seed)
	defer func() {
		// synctest fails a bubble whose goroutines are left blocked when
		// the schedule is over: a goroutine leak in the node.
		if e := recover(); e != nil {
			r.Params = drawParams(seed)
			v := Violation{Class: "leak", Text: fmt.Sprintf("after every node was stopped: %v:\n%s", e, leaked())}
			if ignore[v.Class] {
				r.Ignored = append(r.Ignored, v)
			} else {
				r.Violations = append(r.Violations, v)
			}
		}
	}()
	synctest.Test(t, func(t *testing.T) {
		if *flagTrace {
			r = Run(seed, os.Stdout, *flagLogs, ignore, avoid)
		} else {
			r = Run(seed, nil, false, ignore, avoid)
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
	if len(r.Tail) > 0 {
		fmt.Fprintf(&b, "last steps:\n  %s\n", strings.Join(r.Tail, "\n  "))
	}
	fmt.Fprintf(&b, "replay: go test ./cmd/georepl/internal/sim -run 'TestSim$' -sim.seed=%d", r.Params.Seed)
	if len(r.Avoided) > 0 {
		fmt.Fprintf(&b, " -sim.avoid=%s", strings.Join(r.Avoided, ","))
	}
	b.WriteString(" -sim.trace")
	return b.String()
}

// leaked returns the stacks of the goroutines a bubble left blocked.
func leaked() string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	// Earlier schedules' leaks stay blocked too: keep the last bubble's.
	bubbles := map[int][]string{}
	last := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		if m := bubbleRE.FindStringSubmatch(g); m != nil {
			id, _ := strconv.Atoi(m[1])
			bubbles[id] = append(bubbles[id], g)
			last = max(last, id)
		}
	}
	return strings.Join(bubbles[last], "\n\n")
}

var bubbleRE = regexp.MustCompile(`synctest bubble (\d+)`)

// TestSimRegressions replays the schedules in testdata/regressions.txt,
// each of which once broke a promise, and fails while one still does.
func TestSimRegressions(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	defer debug.SetGCPercent(debug.SetGCPercent(400))
	cases, err := readRegressions("testdata/regressions.txt")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cases {
		t.Run(fmt.Sprintf("seed=%d", c.seed), func(t *testing.T) {
			r := play(t, c.seed, nil, c.avoid)
			if len(r.Violations) > 0 {
				t.Errorf("still broken (%s): %s", c.what, report(r))
			}
		})
	}
}

type regression struct {
	seed  uint64
	avoid map[string]bool
	what  string
}

// readRegressions parses lines of "seed avoid what it found" ("-" for no
// avoided situation); # starts a comment.
func readRegressions(path string) ([]regression, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []regression
	for i, line := range strings.Split(string(b), "\n") {
		if line = strings.TrimSpace(line); line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 3 {
			return nil, fmt.Errorf("%s:%d: want seed, avoided situations and what it found", path, i+1)
		}
		seed, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("%s:%d: seed: %w", path, i+1, err)
		}
		avoid := map[string]bool{}
		if f[1] != "-" {
			avoid = set(f[1])
		}
		out = append(out, regression{seed: seed, avoid: avoid, what: strings.Join(f[2:], " ")})
	}
	return out, nil
}
