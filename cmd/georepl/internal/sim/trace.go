package sim

import (
	"fmt"
	"io"
	"slices"
	"sync"
	"time"
)

// tracer records what a schedule did, a line per event, with the step and
// the virtual time: in full to out when replaying with a trace, and the
// last lines always, for the report of a failure. The scheduler and the
// application's goroutines both add lines.
type tracer struct {
	out   io.Writer // nil: keep only the tail
	start time.Time
	keep  int

	mu   sync.Mutex
	step int
	tail []string
}

// next counts a step.
func (t *tracer) next() {
	t.mu.Lock()
	t.step++
	t.mu.Unlock()
}

// steps returns the number of steps counted.
func (t *tracer) steps() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.step
}

// lines returns the tail.
func (t *tracer) lines() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return slices.Clone(t.tail)
}

func newTracer(out io.Writer, keep int) *tracer {
	return &tracer{out: out, keep: keep, start: time.Now()}
}

func (t *tracer) add(what, detail string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	line := t.line(what, detail)
	if t.out != nil {
		fmt.Fprintln(t.out, line)
	}
	t.keepLine(line)
}

// addQuiet records a line of little interest (a ping) in the full trace
// only.
func (t *tracer) addQuiet(what, detail string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.out != nil {
		fmt.Fprintln(t.out, t.line(what, detail))
	}
}

func (t *tracer) line(what, detail string) string {
	return fmt.Sprintf("%5d %9.3fs %-9s %s", t.step, time.Since(t.start).Seconds(), what, detail)
}

func (t *tracer) keepLine(line string) {
	if len(t.tail) == t.keep {
		copy(t.tail, t.tail[1:])
		t.tail = t.tail[:t.keep-1]
	}
	t.tail = append(t.tail, line)
}
