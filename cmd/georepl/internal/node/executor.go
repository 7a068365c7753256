package node

import (
	"slices"

	"github.com/georepl/georepl/core"
	"github.com/georepl/georepl/core/wire"
)

// executor carries out what a holder of the engine collected while it
// processed a Ready (work), once it released the engine's mutex: which
// goroutine writes which queued frames, and which goroutine performs
// which local operation. The execution model (docs/architecture.md,
// "Engine and driver"): whichever goroutine has the event runs the
// engine, then carries out the Ready itself as far as that costs no
// wake-up of another goroutine, and hands the rest off. carryOut is the
// one place that decides; its rules, by the goroutine that holds the
// work (holder):
//
//   - The resource's loop, and any goroutine that must wait neither on a
//     peer's socket nor on the disk (loopHolder), writes no frame itself:
//     it wakes the channels' writers, and starts every operation on a
//     goroutine of its own.
//   - An application request's goroutine (requestHolder) writes the queued
//     frames itself where the link allows it (link.flush: protocol B or
//     C, small, no write under way), starts every operation but the last
//     on a goroutine of its own and performs the last itself; then it
//     carries out the work that operation made ready the same way. So a
//     goroutine that would only wait carries the next step itself: the
//     secondary's next epoch starts on the goroutine that finished the
//     previous one, and a write with no peer to wait for completes
//     without any goroutine switch. A goroutine started for an operation
//     goes on the same way.
//   - A link's reader (readerHolder) writes inline only to its own peer: a
//     hung peer's full socket must not stall the reader of another peer,
//     whose own peer would then time out too; the other links' writers
//     are woken. It performs operations itself only when nothing more
//     has arrived (more is false) and they are inline-safe; otherwise it
//     starts each on a goroutine of its own and goes on reading. Inline,
//     it goes on as a request's goroutine does, still writing only to its
//     own peer, and hands off, at any step, operations that are not
//     inline-safe. While it has operations to perform, or more has
//     arrived, it leaves its own peer's frames queued and writes them
//     later with what it has yet to queue (a barrier's acknowledgement
//     and the next write's in one system call): waking its peer's writer
//     would only move that system call to another thread, at the cost of
//     a wake-up.
//
// Operations are inline-safe for a reader when none of them may wait for
// frames the reader has yet to read. A write can wait like that for room
// in the activity log (retiring extents needs barriers from the peer), so
// each write's extents must be reserved without waiting. Flushes are left
// to goroutines too: slow, and a protocol B peer's receipts would wait
// for them.
type executor struct {
	// perform performs op, reports it to eng and returns the work that
	// made ready; ok is false if the resource went down meanwhile (then
	// nothing waits for the result, and there is nothing more to do).
	perform func(eng *core.Engine, op localOp) (next work, ok bool)
	// reserve reserves the activity-log extents of [off, off+length)
	// without waiting (activityLog.reserve); false if that would wait.
	reserve func(off, length uint64) bool
	// spawn runs f on a goroutine of its own.
	spawn func(f func())
}

// holder is the goroutine that carries out a work: see executor.
type holder struct {
	// loop: the goroutine must wait neither on a socket nor on the disk.
	loop bool
	// reader, if not nil, is the link whose reader holds the work.
	reader frameOutlet
	// more: the reader has the next frame already buffered.
	more bool
}

var (
	// loopHolder is the resource's loop, or another goroutine that must
	// not block on a peer or the disk.
	loopHolder = holder{loop: true}
	// requestHolder is an application request's goroutine (or an
	// operation's), which would otherwise only wait.
	requestHolder = holder{}
)

// readerHolder is the reader of link l; more reports whether its next
// frame has already arrived.
func readerHolder(l frameOutlet, more bool) holder { return holder{reader: l, more: more} }

// carryOut carries out w on the calling goroutine h, as far as the rules
// (executor) allow, and hands the rest off. It returns once the caller's
// part is done: the operations it performs itself, and the steps they
// made ready that fall to it.
func (x *executor) carryOut(w work, h holder) {
	switch {
	case h.loop:
		w.wake()
		x.handOff(w.eng, w.ops)
	case h.reader == nil:
		w.flush() // the peers start their writes while this goroutine does the local one
		x.run(w.eng, w.ops, nil)
	default:
		inline := !h.more && x.inlineSafe(w.ops)
		if h.more || inline && len(w.ops) > 0 {
			w.wakeOthers(h.reader)
		} else {
			w.flushTo(h.reader)
		}
		if !inline {
			x.handOff(w.eng, w.ops)
			return
		}
		x.run(w.eng, w.ops, h.reader)
	}
}

// handOff starts each operation on a goroutine of its own, which then
// goes on as a request's goroutine does.
func (x *executor) handOff(eng *core.Engine, ops []localOp) {
	for _, op := range ops {
		x.spawn(func() { x.run(eng, []localOp{op}, nil) })
	}
}

// run performs the last of ops itself and hands the others off, then does
// the same with the operations that made ready, until none is left.
// reader, if not nil, is the link whose reader runs it: then operations
// that are not inline-safe are handed off, and only reader's frames are
// written inline.
func (x *executor) run(eng *core.Engine, ops []localOp, reader frameOutlet) {
	for len(ops) > 0 {
		if reader != nil && !x.inlineSafe(ops) {
			reader.flushAll() // what carryOut left queued for it
			x.handOff(eng, ops)
			return
		}
		x.handOff(eng, ops[:len(ops)-1])
		w, ok := x.perform(eng, ops[len(ops)-1])
		if !ok {
			return
		}
		if reader != nil {
			w.flushTo(reader)
		} else {
			w.flush()
		}
		ops = w.ops
	}
}

// inlineSafe reports whether a link's reader may perform ops itself (see
// executor). It reserves the extents of the writes it accepts.
func (x *executor) inlineSafe(ops []localOp) bool {
	for _, op := range ops {
		switch op.Kind {
		case core.OpWrite, core.OpZeroes, core.OpTrim:
			if !x.reserve(op.Offset, op.Length) {
				return false
			}
		case core.OpFlush:
			return false
		}
	}
	return true
}

// work is what process collected for the goroutine that called it to
// carry out once it released emu (executor.carryOut): local operations
// to perform for eng, and frames it queued without waking their writers.
type work struct {
	eng     *core.Engine
	ops     []localOp
	flushes []linkChannel
}

// frameOutlet is a link as the executor sees it: channels whose queued
// frames the caller writes itself where the link allows it (flush), or
// leaves to the channel's writer (wake).
type frameOutlet interface {
	flush(ch wire.Channel)
	flushAll()
	wake(ch wire.Channel)
}

// linkChannel is a channel of a link with frames queued.
type linkChannel struct {
	l  frameOutlet
	ch wire.Channel
}

// flush writes the queued frames on the calling goroutine where the link
// allows it (link.flush).
func (w work) flush() {
	for i, lc := range w.flushes {
		if !slices.Contains(w.flushes[:i], lc) {
			lc.l.flush(lc.ch)
		}
	}
}

// flushTo writes the frames queued for l itself, and leaves the others
// to their writers.
//
// l's frames are written whether or not they were queued by this work:
// a receive that left them queued (more was true) counts on it.
func (w work) flushTo(l frameOutlet) {
	w.wakeOthers(l)
	l.flushAll()
}

// wakeOthers leaves the frames queued for links other than l to their
// writers, and l's queued: for a reader of l that writes them later itself
// (flushTo), together with what it has yet to queue.
func (w work) wakeOthers(l frameOutlet) {
	for _, lc := range w.flushes {
		if lc.l != l {
			lc.l.wake(lc.ch)
		}
	}
}

// wake leaves the queued frames to the links' writers: for a goroutine
// that must not block on a peer's socket (the resource loop).
func (w work) wake() {
	for _, lc := range w.flushes {
		lc.l.wake(lc.ch)
	}
}
