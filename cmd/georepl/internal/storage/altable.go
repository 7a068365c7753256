package storage

import "slices"

// ALTable is the activity log's bookkeeping without goroutines, locks or
// I/O: the active extents in least-recently-used order, the state of each
// on its way out (ALState), and the transactions that make them durable.
// The driver's activity log (its writer goroutine, the waiting, the
// metadata writes) drives it under a mutex: it activates extents before
// writes, observes them settled, flushes the data disk and writes the
// transactions the table asks for, and reports each flush and transaction
// back (Flushed, Written).
//
// The rules it keeps:
//   - an activation is durable once a transaction numbered at or above the
//     extent's needGen was written (Durable);
//   - an extent is retired only by a successful flush of the data disk
//     that began after it was observed settled (BeginFlush, Flushed), with
//     no use of the extent since the observation and no failed flush of
//     the data disk between the observation and that flush's start;
//   - a failed flush retires nothing, and returns what was observed to
//     busy: it must be observed again once the failure is handled;
//   - a retired extent leaves the log when an activation needs its slot,
//     or the log holds more than its capacity (Admit, Flushed, Retire).
type ALTable struct {
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
	state   ALState
	seen    uint64 // use stamp when observed settled
	// seenFlushes is flushesBegun when observed settled: flushes up to
	// that number may have begun before the writes settled.
	seenFlushes uint64
	// seenFailures is the number of failed flushes of the data disk
	// (SyncGate) when observed settled, all handled by the engine: a later
	// failure may have lost the writes, and only an observation after the
	// engine marked them (which persistBitmaps wrote) may retire it.
	seenFailures uint64
}

// ALState is where an active extent is on its way out of the log.
type ALState int

const (
	// ALBusy: written recently, or not yet observed settled.
	ALBusy ALState = iota
	// ALObserved: observed settled; awaiting a flush of the data disk.
	ALObserved
	// ALEvictable: settled and flushed; may leave the log.
	ALEvictable
)

// ALCandidate is an extent to observe, with its use stamp when it was
// listed (Unsettled).
type ALCandidate struct {
	Extent uint64
	use    uint64
}

// NewALTable returns an empty table of capacity extents.
func NewALTable(capacity int) *ALTable {
	return &ALTable{capacity: capacity, active: map[uint64]*alExtent{}, nextGen: 1}
}

// Admit reports whether extents first..last fit in the log now, with at
// most limit extents, evicting settled ones to keep to the capacity.
func (t *ALTable) Admit(first, last uint64, limit int) bool {
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

// Activate makes extents first..last active and busy, pinned if pin. It
// reports whether a transaction is due (an extent was added, or an
// earlier change is not written yet).
func (t *ALTable) Activate(first, last uint64, pin bool) (pending bool) {
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
		e.use, e.state = t.tick, ALBusy
	}
	return t.dirty
}

// Unpin drops a pin of each of extents first..last that is active.
func (t *ALTable) Unpin(first, last uint64) {
	for x := first; x <= last; x++ {
		if e := t.active[x]; e != nil {
			e.pins--
		}
	}
}

// Durable reports whether every extent of first..last is active in a
// transaction written.
func (t *ALTable) Durable(first, last uint64) bool {
	for x := first; x <= last; x++ {
		if t.active[x].needGen > t.doneGen {
			return false
		}
	}
	return true
}

// evict removes up to n evictable extents outside [first, last], least
// recently used first.
func (t *ALTable) evict(n int, first, last uint64) {
	for ; n > 0; n-- {
		var (
			victim uint64
			oldest *alExtent
		)
		for x, e := range t.active {
			if e.state == ALEvictable && e.pins == 0 && (x < first || x > last) && (oldest == nil || e.use < oldest.use) {
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

// Unsettled lists the extents to observe: active, not pinned, not yet
// observed settled.
func (t *ALTable) Unsettled() []ALCandidate {
	var cands []ALCandidate
	for x, e := range t.active {
		if e.state == ALBusy && e.pins == 0 {
			cands = append(cands, ALCandidate{x, e.use})
		}
	}
	return cands
}

// Observe records that the engine reported settled the candidates (from
// Unsettled) in settled, while the gate had counted failures failed
// flushes, every one handled. A candidate used since it was listed is
// not settled any more and is left busy.
func (t *ALTable) Observe(settled []ALCandidate, failures uint64) {
	for _, c := range settled {
		if e := t.active[c.Extent]; e != nil && e.use == c.use && e.pins == 0 && e.state == ALBusy {
			e.state, e.seen, e.seenFlushes, e.seenFailures = ALObserved, c.use, t.flushesBegun, failures
		}
	}
}

// OverCapacity reports whether the log holds more extents than its
// capacity (a gated write went beyond it).
func (t *ALTable) OverCapacity() bool { return len(t.active) > t.capacity }

// NeedsFlush reports whether a flush of the data disk would retire
// something the log needs room for: extents are observed settled, and
// activations wait for a slot (waiting) or the log is over capacity.
func (t *ALTable) NeedsFlush(waiting bool) bool {
	if !waiting && !t.OverCapacity() {
		return false
	}
	for _, e := range t.active {
		if e.state == ALObserved {
			return true
		}
	}
	return false
}

// BeginFlush numbers a flush of the data disk that begins now; report its
// result with Flushed.
func (t *ALTable) BeginFlush() (flush uint64) {
	t.flushesBegun++
	return t.flushesBegun
}

// Flushed reports the result of flush number flush (BeginFlush), which
// began when the gate had counted failures failed flushes: on success, it
// retires the extents still unused that were observed before it began
// with no failure since, and evicts retired ones beyond the capacity.
// Extents observed later stay observed, for the next flush; those
// observed before a failure, and every observed one if err is not nil,
// return to busy, to be observed again. It reports whether it retired
// any.
func (t *ALTable) Flushed(flush, failures uint64, err error) (retired bool) {
	if err != nil {
		for _, e := range t.active {
			if e.state == ALObserved {
				e.state = ALBusy
			}
		}
		return false
	}
	for _, e := range t.active {
		switch {
		case e.state != ALObserved || e.seenFlushes >= flush:
		case e.use == e.seen && e.pins == 0 && e.seenFailures == failures:
			e.state = ALEvictable
			retired = true
		default:
			e.state = ALBusy
		}
	}
	if retired {
		if over := len(t.active) - t.capacity; over > 0 {
			t.evict(over, 1, 0) // [1, 0] excludes nothing
		}
	}
	return retired
}

// Retire removes every retired extent not pinned: at a clean shutdown.
func (t *ALTable) Retire() {
	for x, e := range t.active {
		if e.state == ALEvictable && e.pins == 0 {
			delete(t.active, x)
			t.dirty = true
		}
	}
}

// Pending reports whether a transaction is due.
func (t *ALTable) Pending() bool { return t.dirty }

// Transaction returns the transaction to write now, every active extent
// in increasing order, and its generation; report its result with
// Written.
func (t *ALTable) Transaction() (extents []uint64, gen uint64) {
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

// Written reports the result of transaction gen: once written, the
// activations it holds are durable; if it failed, a transaction is due
// again, and the activations not yet durable wait for the next one.
func (t *ALTable) Written(gen uint64, err error) {
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

// Size is the number of active extents.
func (t *ALTable) Size() int { return len(t.active) }

// Capacity is the number of extents the log keeps to where settled ones
// allow it.
func (t *ALTable) Capacity() int { return t.capacity }

// State reports the state of extent x, and whether it is active at all.
func (t *ALTable) State(x uint64) (s ALState, active bool) {
	if e := t.active[x]; e != nil {
		return e.state, true
	}
	return ALBusy, false
}
