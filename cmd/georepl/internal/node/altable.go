package node

import "slices"

// alTable is the activity log's bookkeeping without goroutines, locks or
// I/O: the active extents in least-recently-used order, the state of each
// on its way out (alState), and the transactions that make them durable.
// activityLog drives it under its mutex: it activates extents before
// writes, observes them settled, flushes the data disk and writes the
// transactions the table asks for, and reports each flush and transaction
// back (flushed, written).
//
// The rules it keeps:
//   - an activation is durable once a transaction numbered at or above the
//     extent's needGen was written (durable);
//   - an extent is retired only by a successful flush of the data disk
//     that began after it was observed settled (beginFlush, flushed), with
//     no use of the extent since the observation and no failed flush of
//     the data disk between the observation and that flush's start;
//   - a failed flush retires nothing, and returns what was observed to
//     busy: it must be observed again once the failure is handled;
//   - a retired extent leaves the log when an activation needs its slot,
//     or the log holds more than its capacity (admit, flushed, retire).
type alTable struct {
	capacity int
	active   map[uint64]*alExtent
	tick     uint64 // use stamps
	nextGen  uint64 // generation of the next transaction
	doneGen  uint64 // generation of the last durable transaction
	dirty    bool   // active differs from the last transaction written
	// flushesBegun counts the flushes of the data disk begun for
	// retirement so far: an observation made while flush n runs is
	// stamped n, and only a flush numbered above its stamp retires the
	// extent.
	flushesBegun uint64
}

// alExtent is one active extent.
type alExtent struct {
	// needGen is the first transaction holding the extent: it is durable
	// once doneGen >= needGen.
	needGen uint64
	pins    int    // application requests between acquire and completion
	use     uint64 // stamp of the last activation: LRU order, observation validity
	state   alState
	seen    uint64 // use stamp when observed settled
	// seenFlushes is flushesBegun when observed settled: flushes up to
	// that number may have begun before the writes settled.
	seenFlushes uint64
	// seenFailures is the number of failed flushes of the data disk
	// (syncGate) when observed settled, all handled by the engine: a later
	// failure may have lost the writes, and only an observation after the
	// engine marked them (which persistBitmaps wrote) may retire it.
	seenFailures uint64
}

type alState int

const (
	// alBusy: written recently, or not yet observed settled.
	alBusy alState = iota
	// alObserved: observed settled; awaiting a flush of the data disk.
	alObserved
	// alEvictable: settled and flushed; may leave the log.
	alEvictable
)

// alCandidate is an extent to observe, with its use stamp when it was
// listed (unsettled).
type alCandidate struct{ x, use uint64 }

func newALTable(capacity int) *alTable {
	return &alTable{capacity: capacity, active: map[uint64]*alExtent{}, nextGen: 1}
}

// admit reports whether extents first..last fit in the log now, with at
// most limit extents, evicting settled ones to keep to the capacity.
func (t *alTable) admit(first, last uint64, limit int) bool {
	need := 0
	for x := first; x <= last; x++ {
		if t.active[x] == nil {
			need++
		}
	}
	// Keep to the capacity where settled extents allow it.
	if over := len(t.active) + need - t.capacity; need > 0 && over > 0 {
		t.evict(over, first, last)
	}
	// A request larger than the whole log goes in alone: nothing
	// outside its range may stay active (inside it, extents already
	// active cannot be evicted for it, and need no slot).
	outside := len(t.active) - (int(last-first+1) - need)
	return need == 0 || len(t.active)+need <= limit || outside == 0
}

// activate makes extents first..last active and busy, pinned if pin. It
// reports whether a transaction is due (an extent was added, or an
// earlier change is not written yet).
func (t *alTable) activate(first, last uint64, pin bool) (pending bool) {
	t.tick++
	for x := first; x <= last; x++ {
		e := t.active[x]
		if e == nil {
			e = &alExtent{needGen: t.nextGen}
			t.active[x] = e
			t.dirty = true
		}
		if pin {
			e.pins++
		}
		e.use, e.state = t.tick, alBusy
	}
	return t.dirty
}

// unpin drops a pin of each of extents first..last that is active.
func (t *alTable) unpin(first, last uint64) {
	for x := first; x <= last; x++ {
		if e := t.active[x]; e != nil {
			e.pins--
		}
	}
}

// durable reports whether every extent of first..last is active in a
// transaction written.
func (t *alTable) durable(first, last uint64) bool {
	for x := first; x <= last; x++ {
		if t.active[x].needGen > t.doneGen {
			return false
		}
	}
	return true
}

// evict removes up to n evictable extents outside [first, last], least
// recently used first.
func (t *alTable) evict(n int, first, last uint64) {
	for ; n > 0; n-- {
		var (
			victim uint64
			oldest *alExtent
		)
		for x, e := range t.active {
			if e.state == alEvictable && e.pins == 0 && (x < first || x > last) && (oldest == nil || e.use < oldest.use) {
				victim, oldest = x, e
			}
		}
		if oldest == nil {
			return
		}
		delete(t.active, victim)
		t.dirty = true
	}
}

// unsettled lists the extents to observe: active, not pinned, not yet
// observed settled.
func (t *alTable) unsettled() []alCandidate {
	var cands []alCandidate
	for x, e := range t.active {
		if e.state == alBusy && e.pins == 0 {
			cands = append(cands, alCandidate{x, e.use})
		}
	}
	return cands
}

// observe records that the engine reported settled the candidates (from
// unsettled) in settled, while the gate had counted failures failed
// flushes, every one handled. A candidate used since it was listed is
// not settled any more and is left busy.
func (t *alTable) observe(settled []alCandidate, failures uint64) {
	for _, c := range settled {
		if e := t.active[c.x]; e != nil && e.use == c.use && e.pins == 0 && e.state == alBusy {
			e.state, e.seen, e.seenFlushes, e.seenFailures = alObserved, c.use, t.flushesBegun, failures
		}
	}
}

// overCapacity reports whether the log holds more extents than its
// capacity (a gated write went beyond it).
func (t *alTable) overCapacity() bool { return len(t.active) > t.capacity }

// needsFlush reports whether a flush of the data disk would retire
// something the log needs room for: extents are observed settled, and
// activations wait for a slot (waiting) or the log is over capacity.
func (t *alTable) needsFlush(waiting bool) bool {
	if !waiting && !t.overCapacity() {
		return false
	}
	for _, e := range t.active {
		if e.state == alObserved {
			return true
		}
	}
	return false
}

// beginFlush numbers a flush of the data disk that begins now; report its
// result with flushed.
func (t *alTable) beginFlush() (flush uint64) {
	t.flushesBegun++
	return t.flushesBegun
}

// flushed reports the result of flush number flush (beginFlush), which
// began when the gate had counted failures failed flushes: on success, it
// retires the extents still unused that were observed before it began
// with no failure since, and evicts retired ones beyond the capacity.
// Extents observed later stay observed, for the next flush; those
// observed before a failure, and every observed one if err is not nil,
// return to busy, to be observed again. It reports whether it retired
// any.
func (t *alTable) flushed(flush, failures uint64, err error) (retired bool) {
	if err != nil {
		for _, e := range t.active {
			if e.state == alObserved {
				e.state = alBusy
			}
		}
		return false
	}
	for _, e := range t.active {
		switch {
		case e.state != alObserved || e.seenFlushes >= flush:
		case e.use == e.seen && e.pins == 0 && e.seenFailures == failures:
			e.state = alEvictable
			retired = true
		default:
			e.state = alBusy
		}
	}
	if retired {
		if over := len(t.active) - t.capacity; over > 0 {
			t.evict(over, 1, 0) // [1, 0] excludes nothing
		}
	}
	return retired
}

// retire removes every retired extent not pinned: at a clean shutdown.
func (t *alTable) retire() {
	for x, e := range t.active {
		if e.state == alEvictable && e.pins == 0 {
			delete(t.active, x)
			t.dirty = true
		}
	}
}

// pending reports whether a transaction is due.
func (t *alTable) pending() bool { return t.dirty }

// transaction returns the transaction to write now, every active extent
// in increasing order, and its generation; report its result with
// written.
func (t *alTable) transaction() (extents []uint64, gen uint64) {
	extents = make([]uint64, 0, len(t.active))
	for x := range t.active {
		extents = append(extents, x)
	}
	slices.Sort(extents)
	gen = t.nextGen
	t.nextGen++
	t.dirty = false
	return extents, gen
}

// written reports the result of transaction gen: once written, the
// activations it holds are durable; if it failed, a transaction is due
// again, and the activations not yet durable wait for the next one.
func (t *alTable) written(gen uint64, err error) {
	if err == nil {
		t.doneGen = gen
		return
	}
	t.dirty = true
	for _, e := range t.active {
		if e.needGen > t.doneGen {
			e.needGen = t.nextGen
		}
	}
}

// size is the number of active extents.
func (t *alTable) size() int { return len(t.active) }
