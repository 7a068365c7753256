package storage

import (
	"errors"
	"slices"
	"testing"
)

// ALState of every active extent, for the tests.
func (t *ALTable) states() map[uint64]ALState {
	out := map[uint64]ALState{}
	for x, e := range t.active {
		out[x] = e.state
	}
	return out
}

// observeAll observes every extent the table lists as unsettled, as if
// the engine reported each settled, with failures failed flushes handled.
func (t *ALTable) observeAll(failures uint64) { t.Observe(t.Unsettled(), failures) }

// write makes the pending transaction durable.
func (t *ALTable) write(tb *testing.T) []uint64 {
	tb.Helper()
	if !t.Pending() {
		tb.Fatal("no transaction pending")
	}
	extents, gen := t.Transaction()
	t.Written(gen, nil)
	return extents
}

func TestALTableTransactions(t *testing.T) {
	tb := NewALTable(4)
	if !tb.Activate(3, 3, false) || !tb.Activate(1, 2, true) {
		t.Fatal("activating new extents asks for no transaction")
	}
	if tb.Durable(1, 3) {
		t.Fatal("durable before any transaction was written")
	}
	extents, gen := tb.Transaction()
	if !slices.Equal(extents, []uint64{1, 2, 3}) {
		t.Fatalf("transaction %v, want [1 2 3]", extents)
	}
	if tb.Pending() {
		t.Fatal("a transaction is still pending while the last one is written")
	}
	// An activation while the transaction is written is in it only if
	// the extent was active already.
	if tb.Activate(2, 2, false) {
		t.Fatal("a hot extent asks for a transaction")
	}
	if !tb.Activate(0, 0, false) {
		t.Fatal("a new extent asks for no transaction")
	}
	tb.Written(gen, nil)
	if !tb.Durable(1, 3) || tb.Durable(0, 0) {
		t.Fatalf("after the first transaction: durable(1..3) %v, durable(0) %v; want true, false", tb.Durable(1, 3), tb.Durable(0, 0))
	}
	// A failed transaction: it is due again, and what it held waits for
	// the next one.
	extents, gen = tb.Transaction()
	tb.Written(gen, errors.New("metadata write failed"))
	if !tb.Pending() || tb.Durable(0, 0) {
		t.Fatal("after a failed transaction nothing is pending, or its extent counts as durable")
	}
	if got := tb.write(t); !slices.Equal(got, extents) || !tb.Durable(0, 3) {
		t.Fatalf("the retried transaction %v (want %v) did not make 0..3 durable", got, extents)
	}
}

// An extent is retired only by a flush that began after it was observed
// settled: a flush already running when the writes settled may have
// missed them in a volatile cache (issue 9, bug 3).
func TestALTableRetiresOnlyAfterAFlushBegunAfterTheObservation(t *testing.T) {
	tb := NewALTable(4)
	tb.Activate(0, 0, false)
	tb.Activate(1, 1, false)
	tb.write(t)
	tb.Observe([]ALCandidate{{0, tb.active[0].use}}, 0)
	flush := tb.BeginFlush()
	tb.Observe([]ALCandidate{{1, tb.active[1].use}}, 0) // settled while the flush runs
	if !tb.Flushed(flush, 0, nil) {
		t.Fatal("the flush retired nothing")
	}
	if got := tb.states(); got[0] != ALEvictable || got[1] != ALObserved {
		t.Fatalf("after the first flush: %v, want 0 evictable, 1 still observed", got)
	}
	if !tb.Flushed(tb.BeginFlush(), 0, nil) || tb.states()[1] != ALEvictable {
		t.Fatalf("the next flush did not retire extent 1: %v", tb.states())
	}
}

// A use of an extent after it was listed or observed voids the
// observation; so does a pin.
func TestALTableUseVoidsTheObservation(t *testing.T) {
	tb := NewALTable(4)
	tb.Activate(0, 1, false)
	tb.Activate(2, 2, true)
	tb.write(t)
	cands := tb.Unsettled()
	if len(cands) != 2 {
		t.Fatalf("unsettled %v: want extents 0 and 1, not the pinned 2", cands)
	}
	tb.Activate(0, 0, false) // a write after the engine was asked
	tb.Observe(cands, 0)
	tb.Observe([]ALCandidate{{2, tb.active[2].use}}, 0) // pinned
	if got := tb.states(); got[0] != ALBusy || got[1] != ALObserved || got[2] != ALBusy {
		t.Fatalf("states %v: want 0 busy (used since listed), 1 observed, 2 busy (pinned)", got)
	}
	flush := tb.BeginFlush()
	tb.Activate(1, 1, false) // a write after the observation
	if tb.Flushed(flush, 0, nil) {
		t.Fatalf("a flush retired an extent used since its observation: %v", tb.states())
	}
	if got := tb.states(); got[1] != ALBusy {
		t.Fatalf("extent 1 is %v after a use, want busy (observed again)", got[1])
	}
}

// After a failed flush of the data disk nothing retires: not by that
// flush, and not by a later successful one on observations from before
// the failure was handled. Only an observation made after it (with the
// engine's marks written) counts.
func TestALTableNothingRetiresAfterAFailure(t *testing.T) {
	t.Run("the flush fails", func(t *testing.T) {
		tb := NewALTable(4)
		tb.Activate(0, 1, false)
		tb.write(t)
		tb.observeAll(0)
		if tb.Flushed(tb.BeginFlush(), 0, errors.New("EIO")) {
			t.Fatal("a failed flush retired extents")
		}
		if got := tb.states(); got[0] != ALBusy || got[1] != ALBusy {
			t.Fatalf("after a failed flush: %v, want every extent busy", got)
		}
		if tb.NeedsFlush(true) || tb.Flushed(tb.BeginFlush(), 1, nil) {
			t.Fatal("a flush after the failure retires observations from before it")
		}
		tb.observeAll(1)
		if !tb.Flushed(tb.BeginFlush(), 1, nil) {
			t.Fatal("an observation after the failure was handled retired nothing")
		}
	})
	t.Run("another flush failed since the observation", func(t *testing.T) {
		tb := NewALTable(4)
		tb.Activate(0, 0, false)
		tb.write(t)
		tb.observeAll(0)
		// The engine's flush failed after the observation; this one began
		// with one failure counted, and succeeded.
		if tb.Flushed(tb.BeginFlush(), 1, nil) {
			t.Fatal("a flush retired an extent observed before a failure")
		}
		if got := tb.states()[0]; got != ALBusy {
			t.Fatalf("extent 0 is %v, want busy: to be observed again", got)
		}
		tb.observeAll(1)
		if !tb.Flushed(tb.BeginFlush(), 1, nil) {
			t.Fatal("a flush retired nothing observed after the failure")
		}
	})
}

// The writer flushes only under pressure (activations wait for a slot,
// or the log is over its capacity), and only with observed extents.
func TestALTableNeedsFlush(t *testing.T) {
	tb := NewALTable(2)
	tb.Activate(0, 0, false)
	tb.write(t)
	if tb.NeedsFlush(true) {
		t.Fatal("a flush with nothing observed")
	}
	tb.observeAll(0)
	if tb.NeedsFlush(false) {
		t.Fatal("a flush without pressure")
	}
	if !tb.NeedsFlush(true) {
		t.Fatal("no flush while activations wait and an extent is observed")
	}
	if !tb.Admit(1, 2, 16) {
		t.Fatal("a gated activation within the hard limit is refused")
	}
	tb.Activate(1, 2, false)
	if !tb.NeedsFlush(false) {
		t.Fatal("no flush while the log is over its capacity")
	}
}

// Eviction: least recently used first, only retired and unpinned extents,
// never those the activation needs; without one, the activation waits
// (admit false) unless its limit lets the log grow.
func TestALTableEvictsTheLeastRecentlyUsed(t *testing.T) {
	tb := NewALTable(3)
	for _, x := range []uint64{2, 0, 1} {
		tb.Activate(x, x, false)
	}
	tb.Activate(3, 3, true) // over capacity, pinned
	tb.write(t)
	if tb.Admit(4, 4, 3) {
		t.Fatal("admitted with every extent busy")
	}
	tb.observeAll(0)
	if !tb.Flushed(tb.BeginFlush(), 0, nil) {
		t.Fatal("nothing retired")
	}
	// The flush evicted down to the capacity: 2, the oldest.
	if got := tb.states(); len(got) != 3 || got[0] != ALEvictable || got[1] != ALEvictable || got[3] != ALBusy {
		t.Fatalf("after the flush: %v, want 0 and 1 evictable, 3 busy (pinned), 2 evicted (the least recently used)", got)
	}
	if !tb.Pending() {
		t.Fatal("an eviction asks for no transaction")
	}
	// 0 is older than 1; 3 is pinned; 4 needs one slot.
	if !tb.Admit(4, 4, 3) {
		t.Fatal("not admitted with evictable extents")
	}
	if got := tb.write(t); !slices.Equal(got, []uint64{1, 3}) {
		t.Fatalf("log %v after admitting extent 4 (not yet activated), want [1 3]", got)
	}
	// An activation never evicts its own extents: with 1 the only
	// evictable one, 1..2 waits, and 1 stays.
	tb.Activate(4, 4, false)
	if tb.Admit(1, 2, 3) {
		t.Fatal("admitted 1..2 into a full log whose only evictable extent is its own")
	}
	if _, ok := tb.active[1]; !ok {
		t.Fatal("the activation's own extent was evicted for it")
	}
}

// At a clean shutdown every retired extent not pinned leaves the log.
func TestALTableRetire(t *testing.T) {
	tb := NewALTable(4)
	tb.Activate(0, 2, false)
	tb.write(t)
	tb.Observe([]ALCandidate{{0, tb.active[0].use}, {1, tb.active[1].use}}, 0)
	tb.Flushed(tb.BeginFlush(), 0, nil)
	tb.active[1].pins++ // a request began on it since
	tb.Retire()
	if got := tb.write(t); !slices.Equal(got, []uint64{1, 2}) {
		t.Fatalf("log after retire %v, want [1 2]", got)
	}
}
