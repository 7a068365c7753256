package sim

import (
	"io"
	"log/slog"
)

// Result is what one schedule found.
type Result struct {
	Params Params
	// Violations are the promises the schedule broke, in the order found;
	// empty if none.
	Violations []string
	// Steps is the number of scheduler steps taken.
	Steps int
	// Leak, set by the caller, describes goroutines of the nodes left
	// blocked after every node stopped.
	Leak string
	// Tail is the end of the schedule's trace.
	Tail []string
}

// Run plays the schedule of seed and checks it. It must run inside a
// testing/synctest bubble (synctest.Test): the cluster's goroutines and
// virtual time belong to the bubble. trace, if not nil, receives a line
// per step; with nodeLogs, the nodes' logs too.
func Run(seed uint64, trace io.Writer, nodeLogs bool) Result {
	p := drawParams(seed)
	tr := newTracer(trace, 25)
	logger := slog.New(slog.DiscardHandler)
	if trace != nil && nodeLogs {
		logger = slog.New(slog.NewTextHandler(trace, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	tr.add("params", p.String())
	w, err := newWorld(p, tr, logger)
	if err != nil {
		return Result{Params: p, Violations: []string{err.Error()}}
	}
	w.run()
	w.shutdown()
	return Result{Params: p, Violations: w.violations, Steps: tr.step, Tail: tr.tail}
}
