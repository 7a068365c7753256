package core

import "fmt"

// NoQuorumPolicy is what a Primary that lost quorum (Config.Quorum) does
// with application writes and flushes. Reads are served either way.
type NoQuorumPolicy uint8

const (
	// SuspendIO holds them: a request submitted without quorum is not
	// started, and one that finishes without quorum is not completed,
	// until quorum returns (then they go on, in order) or the node is
	// demoted (then they fail with ErrNoQuorum). The application sees
	// writes hang, never an error it would have to recover from. The
	// default.
	SuspendIO NoQuorumPolicy = iota
	// IOErrorOnNoQuorum fails them with ErrNoQuorum: a request submitted
	// without quorum at once, one that finishes without quorum when it
	// finishes (its data may be on some disks: like any failed write,
	// its range holds old or new data).
	IOErrorOnNoQuorum
)

// NoQuorumPolicies lists every policy, the default first.
func NoQuorumPolicies() []NoQuorumPolicy { return []NoQuorumPolicy{SuspendIO, IOErrorOnNoQuorum} }

// String returns the policy's configuration spelling ("suspend-io").
func (q NoQuorumPolicy) String() string {
	return enumName(uint8(q), "NoQuorumPolicy", "suspend-io", "io-error")
}

// votes counts this node, every connected peer and every reachable
// witness: the nodes this one can reach. Two parts of a split resource
// cannot both reach a majority.
func (e *Engine) votes() int {
	n := 1 + e.witnessesUp
	for _, p := range e.peers {
		if p.conn == Connected {
			n++
		}
	}
	return n
}

// Witnesses tells the engine how many of the resource's witnesses
// (Config.Witnesses) are reachable now: each counts as a node for quorum,
// as a connected peer does. A witness is reachable for the side of a
// partition that the failover log commits on (the driver counts a
// witness whose report the log committed recently, which happens on one
// side only): so, as DRBD's diskless tiebreaker, it votes for the
// partition it can reach, and two data nodes and a witness keep writing
// when one data node is lost.
func (e *Engine) Witnesses(reachable int) {
	defer e.finish()
	e.witnessesUp = min(max(reachable, 0), e.witnesses)
}

// quorate reports whether this node has quorum: it is not a fenced
// Primary nor a Primary without a lease, and quorum is off, enough nodes
// are reachable, or the operator forced a promotion without it.
func (e *Engine) quorate() bool {
	if e.fenced() || e.unleased() {
		return false
	}
	return e.quorum == 0 || e.quorumForced || e.votes() >= e.quorum
}

// holdsForQuorum reports whether a Primary must hold or fail a write or
// flush now.
func (e *Engine) holdsForQuorum() bool {
	return e.role == Primary && !e.quorate()
}

// updateQuorum notes a change of quorum (an Event) and, when it returns,
// completes the requests held for it and starts those suspended. Called
// by finish, after any change of connections.
func (e *Engine) updateQuorum() {
	if e.leased && e.role == Primary && e.rotatePending {
		// A peer missed writes: writes completed from now on are not on
		// it, so they belong to a new generation, which the consensus log
		// must hold (Lease) before they complete. Otherwise the lost peer,
		// UpToDate in the generation the log knows, could be promoted
		// without them.
		e.newGeneration()
	}
	if e.quorum == 0 && e.hadQuorum && !e.fenced() && !e.unleased() {
		return
	}
	v := e.votes()
	if v >= e.quorum {
		e.quorumForced = false
	}
	have := e.quorate()
	if have == e.hadQuorum {
		return
	}
	e.hadQuorum = have
	old, now := "lost", "have"
	if !have {
		old, now = now, old
	}
	e.event(Event{What: "quorum", Old: old, New: now, Detail: e.quorumDetail()})
	if !have {
		return
	}
	for _, id := range e.parked {
		e.pending--
		e.rd.Completed = append(e.rd.Completed, Completion{ID: id})
	}
	e.parked = nil
	reqs := e.suspended
	e.suspended = nil
	for _, r := range reqs {
		e.pending--
		e.admit(r)
	}
}

// finishRequest completes a write or flush request (pending counts it
// until then), unless this node is a Primary without quorum: then
// SuspendIO parks a successful completion until quorum returns and
// IOErrorOnNoQuorum turns it into ErrNoQuorum.
func (e *Engine) finishRequest(id RequestID, err error) {
	if err == nil && e.holdsForQuorum() {
		if e.onNoQuorum == SuspendIO {
			e.parked = append(e.parked, id)
			return
		}
		err = e.noQuorumError(id)
	}
	e.pending--
	e.rd.Completed = append(e.rd.Completed, Completion{ID: id, Err: err})
}

func (e *Engine) noQuorumError(id RequestID) error {
	return fmt.Errorf("%w: request %d: %s", ErrNoQuorum, id, e.quorumDetail())
}

// quorumDetail says why this node has quorum or not.
func (e *Engine) quorumDetail() string {
	if e.fenced() {
		return fmt.Sprintf("fenced: Primary of term %d, term %d was promoted since", e.roleTerm, e.term)
	}
	if e.unleased() {
		if !e.leaseValid() {
			return "no failover lease: the consensus log has not vouched for this Primary recently (no majority of voters reached)"
		}
		if e.rotatePending {
			return "no failover lease: a peer missed writes, a new generation starts"
		}
		return fmt.Sprintf("no failover lease for generation %x yet (the log holds %x)", e.current, e.leaseGen)
	}
	if e.quorum == 0 {
		return "not fenced (quorum is off)"
	}
	return fmt.Sprintf("%d of %d nodes reachable, %d needed", e.votes(), e.nodes(), e.quorum)
}

// nodes counts the nodes that vote in quorum: this one, its peers and the
// witnesses.
func (e *Engine) nodes() int { return len(e.peers) + 1 + e.witnesses }

// failHeldForQuorum fails every request held for quorum (demotion).
func (e *Engine) failHeldForQuorum(why string) {
	for _, id := range e.parked {
		e.pending--
		e.rd.Completed = append(e.rd.Completed, Completion{ID: id, Err: fmt.Errorf("%w: request %d: %s", ErrNoQuorum, id, why)})
	}
	for _, r := range e.suspended {
		e.pending--
		e.rd.Completed = append(e.rd.Completed, Completion{ID: r.ID, Err: fmt.Errorf("%w: request %d: %s", ErrNoQuorum, r.ID, why)})
	}
	e.parked, e.suspended = nil, nil
}

// Lease tells a Primary under automatic failover (Config.Leased) what the
// consensus log vouches for: it committed this node's report, naming
// current generation gen, recently enough that no other node can be
// promoted before until (Config.Clock time; 0 ends the lease now). Such
// a Primary completes writes and flushes only before until and while its
// current generation is gen, and holds or fails them (OnNoQuorum)
// otherwise, as without quorum: so every write it acknowledges is in a
// generation the log knows, and none after another node may have been
// promoted. The lease is read from the clock when a request finishes;
// the driver also calls Lease(0, gen) when it ends, so that the change
// shows at once.
func (e *Engine) Lease(until, gen uint64) {
	defer e.finish()
	e.leaseUntil, e.leaseGen = until, gen
}

// unleased reports whether this node is a Primary under automatic
// failover that the log does not vouch for now (Lease).
func (e *Engine) unleased() bool {
	return e.leased && e.role == Primary && (!e.leaseValid() || e.leaseGen != e.current || e.rotatePending)
}

func (e *Engine) leaseValid() bool {
	return e.leaseUntil != 0 && (e.clock == nil || e.clock() < e.leaseUntil)
}
