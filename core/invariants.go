//go:build invariants

package core

import (
	"fmt"

	"github.com/georepl/georepl/core/wire"
	"github.com/georepl/georepl/protocols"
)

// invariantState is what checkInvariants remembers between calls.
type invariantState struct {
	checkedMessages int // Messages of the current Ready already checked
	lastSeq         [MaxNodes]uint64
	lastEpoch       [MaxNodes]uint64
}

// readyTaken notes that Ready handed out the messages checked so far.
func (s *invariantState) readyTaken() { s.checkedMessages = 0 }

// checkInvariants panics if the engine broke one of its safety rules. It
// runs at the end of every public method in builds with the invariants tag
// (the Makefile's test target sets it).
func (e *Engine) checkInvariants() {
	// No two overlapping writes are ever on the local disk at once.
	for i, x := range e.inflight {
		for _, y := range e.inflight[i+1:] {
			if (x.write || y.write) && x.overlaps(y.off, y.end) {
				panic(fmt.Sprintf("core invariant: overlapping local operations in flight [%d,%d) and [%d,%d)", x.off, x.end, y.off, y.end))
			}
		}
	}
	// Data and resync frames leave in increasing sequence order per peer,
	// barriers and data in non-decreasing epoch order.
	for _, m := range e.rd.Messages[e.inv.checkedMessages:] {
		f := &m.Frame
		switch f.Type {
		case wire.TypeData, wire.TypeResyncData, wire.TypeResyncCsum, wire.TypeVerifyCsum:
			if f.Seq <= e.inv.lastSeq[m.To] && e.inv.lastSeq[m.To] != 0 && f.Seq != 0 {
				panic(fmt.Sprintf("core invariant: seq %d sent to %d after seq %d", f.Seq, m.To, e.inv.lastSeq[m.To]))
			}
			e.inv.lastSeq[m.To] = f.Seq
		}
		if f.Type == wire.TypeData || f.Type == wire.TypeBarrier {
			if f.Epoch < e.inv.lastEpoch[m.To] {
				panic(fmt.Sprintf("core invariant: epoch %d sent to %d after epoch %d", f.Epoch, m.To, e.inv.lastEpoch[m.To]))
			}
			e.inv.lastEpoch[m.To] = f.Epoch
		}
	}
	e.inv.checkedMessages = len(e.rd.Messages)
	// Only the oldest segment of a receiver has writes on the disk, and
	// only a receiver that no other one holds anything older than.
	for _, rx := range e.receivers() {
		for j, seg := range rx.segs {
			for _, w := range seg.writes {
				switch {
				case w.ext != nil && j > 0:
					panic(fmt.Sprintf("core invariant: write seq %d of a later epoch issued before the barrier", w.op.Seq))
				case w.ext != nil && !e.mayIssue(rx):
					panic(fmt.Sprintf("core invariant: write seq %d issued while another receiver holds writes received before", w.op.Seq))
				}
			}
		}
	}
	// Writes held by MaxBuffer are at level None and add up.
	for _, p := range e.peers {
		var held uint64
		for _, w := range p.blockedQ {
			if pr := w.prog[p.idx]; !pr.sent || pr.level != protocols.None {
				panic(fmt.Sprintf("core invariant: write seq %d held for peer %d at level %v", w.seq, p.cfg.ID, pr.level))
			}
			held += w.prog[p.idx].bytes
		}
		if held != p.blockedBytes || held > p.unacked {
			panic(fmt.Sprintf("core invariant: peer %d: %d bytes held, %d counted, %d unacknowledged", p.cfg.ID, held, p.blockedBytes, p.unacked))
		}
	}
	// Every application request is accounted for.
	n := len(e.held) + len(e.flushes) + len(e.reads) + len(e.parked) + len(e.suspended)
	for _, w := range e.writes {
		if !w.completed {
			n++
		}
	}
	if n != e.pending {
		panic(fmt.Sprintf("core invariant: %d requests pending, %d tracked", e.pending, n))
	}
}
