package node

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/georepl/georepl/core"
	"github.com/georepl/georepl/core/wire"
)

// execWorld is an executor whose operations, links and goroutines are
// recorded: each event names the goroutine that caused it. Goroutines the
// executor spawns run, in the order spawned, once the caller's part
// returned, named g1, g2, ...
type execWorld struct {
	x       executor
	who     string
	events  []string
	spawned []func()
	// next is the work that performing the named operation makes ready;
	// down names operations after which the resource is down.
	next map[string]work
	down map[string]bool
	// refuse names writes whose extents cannot be reserved without
	// waiting; reserved counts the reservations asked for.
	refuse   map[string]bool
	reserved int
	names    map[core.OpID]string
	links    map[string]*fakeOutlet
}

type fakeOutlet struct {
	name string
	w    *execWorld
}

func (o *fakeOutlet) flush(ch wire.Channel) { o.w.log("flush %s/%s", o.name, channelName(ch)) }
func (o *fakeOutlet) flushAll()             { o.w.log("flushAll %s", o.name) }
func (o *fakeOutlet) wake(ch wire.Channel)  { o.w.log("wake %s/%s", o.name, channelName(ch)) }

func newExecWorld() *execWorld {
	w := &execWorld{next: map[string]work{}, down: map[string]bool{}, refuse: map[string]bool{},
		names: map[core.OpID]string{}, links: map[string]*fakeOutlet{}}
	for _, n := range []string{"A", "B"} {
		w.links[n] = &fakeOutlet{n, w}
	}
	w.x = executor{
		perform: func(_ *core.Engine, op localOp) (work, bool) {
			name := w.names[op.ID]
			w.log("performs %s", name)
			return w.next[name], !w.down[name]
		},
		reserve: func(off, _ uint64) bool {
			w.reserved++
			return !w.refuse[w.nameAt(off)]
		},
		spawn: func(f func()) { w.spawned = append(w.spawned, f) },
	}
	return w
}

func (w *execWorld) log(format string, args ...any) {
	w.events = append(w.events, w.who+": "+fmt.Sprintf(format, args...))
}

// op returns an operation named name: its kind from the name's first
// letter (w write, z zeroes, t trim, f flush, r read, c checksum), its
// offset from its id.
func (w *execWorld) op(name string) localOp {
	id := core.OpID(len(w.names) + 1)
	w.names[id] = name
	kind := map[byte]core.OpKind{'w': core.OpWrite, 'z': core.OpZeroes, 't': core.OpTrim, 'f': core.OpFlush,
		'r': core.OpRead, 'c': core.OpChecksum}[name[0]]
	return localOp{LocalOp: core.LocalOp{ID: id, Kind: kind, Offset: uint64(id) << 22, Length: 4096}}
}

func (w *execWorld) nameAt(off uint64) string { return w.names[core.OpID(off>>22)] }

// work builds a work of the named operations and of frames queued on
// "link/channel" (channel data or control).
func (w *execWorld) work(ops []string, frames ...string) work {
	var out work
	for _, n := range ops {
		out.ops = append(out.ops, w.op(n))
	}
	for _, f := range frames {
		link, ch, _ := strings.Cut(f, "/")
		c := wire.ChannelData
		if ch == "control" {
			c = wire.ChannelControl
		}
		out.flushes = append(out.flushes, linkChannel{w.links[link], c})
	}
	return out
}

// carryOut runs the executor on the caller named who, then the goroutines
// it spawned, and returns every event.
func (w *execWorld) carryOut(who string, wk work, h holder) []string {
	w.who = who
	w.x.carryOut(wk, h)
	for i := 0; i < len(w.spawned); i++ {
		w.who = fmt.Sprintf("g%d", i+1)
		w.spawned[i]()
	}
	return w.events
}

func checkEvents(t *testing.T, got, want []string) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Errorf("events:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
}

// The resource's loop writes no frame and performs no operation: it wakes
// the writers and starts each operation on a goroutine, which carries the
// steps its operation makes ready itself, writing inline.
func TestExecutorLoopHandsEverythingOff(t *testing.T) {
	w := newExecWorld()
	wk := w.work([]string{"w1", "r2"}, "A/data", "B/data")
	w.next["w1"] = w.work([]string{"w3"}, "A/control")
	got := w.carryOut("loop", wk, loopHolder)
	checkEvents(t, got, []string{
		"loop: wake A/data",
		"loop: wake B/data",
		"g1: performs w1",
		"g1: flush A/control",
		"g1: performs w3",
		"g2: performs r2",
	})
	if w.reserved != 0 {
		t.Errorf("the loop reserved %d activity-log extents: only a reader needs to", w.reserved)
	}
}

// An application request's goroutine writes the frames itself (each
// channel once), performs the last operation itself and hands the others
// off, and carries the next steps the same way, until none is left.
func TestExecutorRequestRunsTheLastOperationItself(t *testing.T) {
	w := newExecWorld()
	wk := w.work([]string{"w1", "w2"}, "A/data", "B/data", "A/data")
	w.next["w2"] = w.work([]string{"f3", "r4"}, "B/control")
	w.next["r4"] = w.work(nil, "A/control")
	got := w.carryOut("req", wk, requestHolder)
	checkEvents(t, got, []string{
		"req: flush A/data",
		"req: flush B/data",
		"req: performs w2",
		"req: flush B/control",
		"req: performs r4",
		"req: flush A/control",
		"g1: performs w1",
		"g2: performs f3",
	})
}

// When the resource went down while an operation ran, nothing of what
// its step collected is carried out (the work is empty by then) and the
// goroutine stops.
func TestExecutorStopsWhenTheResourceWentDown(t *testing.T) {
	w := newExecWorld()
	wk := w.work([]string{"w1"})
	w.down["w1"] = true
	w.next["w1"] = w.work([]string{"w2"}, "A/data")
	got := w.carryOut("req", wk, requestHolder)
	checkEvents(t, got, []string{"req: performs w1"})
}

// A reader whose next frame has already arrived performs nothing itself
// and reserves nothing; its own peer's frames stay queued for the next
// receive to write with its own, and the other peers' writers are woken.
func TestExecutorReaderWithMoreToReadHandsOff(t *testing.T) {
	w := newExecWorld()
	wk := w.work([]string{"w1"}, "A/control", "B/data")
	got := w.carryOut("readerA", wk, readerHolder(w.links["A"], true))
	checkEvents(t, got, []string{
		"readerA: wake B/data",
		"g1: performs w1",
	})
	if w.reserved != 0 {
		t.Errorf("a reader with more to read reserved %d activity-log extents", w.reserved)
	}
}

// A reader with nothing more to read performs inline-safe operations
// itself (the last on itself, the others handed off), and writes only to
// its own peer, after the operations: the acknowledgements go out with
// the frames queued before them in one write.
func TestExecutorReaderPerformsInlineAndWritesOnlyToItsPeer(t *testing.T) {
	w := newExecWorld()
	wk := w.work([]string{"r1", "w2"}, "A/control", "B/data")
	w.next["w2"] = w.work([]string{"c3"}, "A/control", "B/control")
	w.next["c3"] = w.work(nil, "B/data")
	got := w.carryOut("readerA", wk, readerHolder(w.links["A"], false))
	checkEvents(t, got, []string{
		"readerA: wake B/data",
		"readerA: performs w2",
		"readerA: wake B/control",
		"readerA: flushAll A",
		"readerA: performs c3",
		"readerA: wake B/data",
		"readerA: flushAll A",
		"g1: performs r1",
	})
}

// Operations a reader may not perform (a flush; a write whose extents
// need room in the activity log) go to goroutines at once, and the
// reader writes its own peer's frames before it reads on.
func TestExecutorReaderHandsOffUnsafeOperations(t *testing.T) {
	for _, tc := range []struct {
		name string
		ops  []string
	}{
		{"flush", []string{"f1"}},
		{"write waiting for the activity log", []string{"r1", "w2"}},
		{"zeroes waiting for the activity log", []string{"z1"}},
		{"trim waiting for the activity log", []string{"t1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newExecWorld()
			w.refuse["w2"], w.refuse["z1"], w.refuse["t1"] = true, true, true
			wk := w.work(tc.ops, "A/control", "B/data")
			got := w.carryOut("readerA", wk, readerHolder(w.links["A"], false))
			want := []string{"readerA: wake B/data", "readerA: flushAll A"}
			for i, op := range tc.ops {
				want = append(want, fmt.Sprintf("g%d: performs %s", i+1, op))
			}
			checkEvents(t, got, want)
		})
	}
}

// A reader that performs operations inline hands off, at the step where
// they appear, the operations that are not inline-safe, after writing
// what it left queued for its peer.
func TestExecutorReaderHandsOffALaterUnsafeStep(t *testing.T) {
	w := newExecWorld()
	wk := w.work([]string{"w1"})
	w.next["w1"] = w.work([]string{"f2"}, "A/control", "B/data")
	got := w.carryOut("readerA", wk, readerHolder(w.links["A"], false))
	checkEvents(t, got, []string{
		"readerA: performs w1",
		"readerA: wake B/data",
		"readerA: flushAll A",
		"readerA: flushAll A",
		"g1: performs f2",
	})
}

// A reader with nothing to perform writes its own peer's frames (also
// those an earlier receive left queued) and wakes the other writers.
func TestExecutorReaderWithoutOperationsWritesItsPeer(t *testing.T) {
	w := newExecWorld()
	got := w.carryOut("readerA", w.work(nil, "B/data", "B/control"), readerHolder(w.links["A"], false))
	checkEvents(t, got, []string{
		"readerA: wake B/data",
		"readerA: wake B/control",
		"readerA: flushAll A",
	})
}

// inlineSafe: reads and checksums are always safe, flushes never, and
// writes, zeroings and trims only if their extents are reserved.
func TestExecutorInlineSafe(t *testing.T) {
	for _, tc := range []struct {
		ops    []string
		refuse string
		want   bool
	}{
		{[]string{"r1", "c2"}, "", true},
		{[]string{"w1", "z2", "t3"}, "", true},
		{[]string{"f1"}, "", false},
		{[]string{"r1", "f2"}, "", false},
		{[]string{"w1", "w2"}, "w2", false},
		{[]string{"z1"}, "z1", false},
		{[]string{"t1"}, "t1", false},
		{nil, "", true},
	} {
		w := newExecWorld()
		w.refuse[tc.refuse] = true
		wk := w.work(tc.ops)
		if got := w.x.inlineSafe(wk.ops); got != tc.want {
			t.Errorf("inlineSafe(%v) with %q refused = %v, want %v", tc.ops, tc.refuse, got, tc.want)
		}
	}
}
