package sim

import (
	"io"
	"log/slog"
	"slices"
)

// Result is what one schedule found.
type Result struct {
	Params Params
	// Violations are the promises the schedule broke, in the order found;
	// empty if none. Ignored are those of the classes the caller ignored
	// (the schedule went on after them).
	Violations, Ignored []Violation
	// Steps is the number of scheduler steps taken.
	Steps int
	// Avoided lists the situations the scheduler steered clear of
	// (Run's avoid), sorted: a replay needs them too.
	Avoided []string
	// Tail is the end of the schedule's trace.
	Tail []string
}

// Run plays the schedule of seed and checks it. It must run inside a
// testing/synctest bubble (synctest.Test): the cluster's goroutines and
// virtual time belong to the bubble. trace, if not nil, receives a line
// per step; with nodeLogs, the nodes' logs too.
//
// Two sets tune the hunt when a known bug hides others: violations of the
// classes in ignore do not end the schedule, and the scheduler steers
// clear of the situations avoid names: "handshake" (no promotion,
// demotion or application I/O while two nodes are in the middle of a
// handshake), "split" (promote only the node that holds the most of the
// latest data, and never by force: no split brain).
func Run(seed uint64, trace io.Writer, nodeLogs bool, ignore, avoid map[string]bool) Result {
	p := drawParams(seed)
	tr := newTracer(trace, 25)
	logger := slog.New(slog.DiscardHandler)
	if trace != nil && nodeLogs {
		logger = slog.New(slog.NewTextHandler(trace, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	tr.add("params", p.String())
	w, err := newWorld(p, tr, logger, ignore, avoid)
	if err != nil {
		return Result{Params: p, Violations: []Violation{{Class: "harness", Text: err.Error()}}}
	}
	w.run()
	w.shutdown()
	r := Result{Params: p, Violations: w.violations, Ignored: w.ignored, Steps: tr.steps(), Tail: tr.lines()}
	for a := range avoid {
		r.Avoided = append(r.Avoided, a)
	}
	slices.Sort(r.Avoided)
	w.release()
	return r
}
