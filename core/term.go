package core

import "fmt"

// ObserveTerm reports a failover term committed in the record of who is
// Primary (the driver's consensus log): some node was promoted in term t.
// The engine keeps the highest term it has seen (Persistent.Term) and
// fences by it (see "Failover terms" in the package documentation): it
// drops a connected Primary of an older term, and if this node is
// Primary of an older term it stops replicating and completing writes.
func (e *Engine) ObserveTerm(t uint64) {
	defer e.finish()
	e.learnTerm(t, "committed")
}

// learnTerm raises the highest term seen to t and fences what it makes
// stale: this node if it is Primary of an older term (every connection
// drops), otherwise every connected Primary of an older term.
func (e *Engine) learnTerm(t uint64, from string) {
	if t <= e.term {
		return
	}
	e.event(Event{What: "term", Old: fmt.Sprint(e.term), New: fmt.Sprint(t), Detail: from})
	e.term = t
	e.persistDirty = true
	for _, p := range e.peers {
		if p.conn != Connected {
			continue
		}
		switch {
		case e.fenced():
			e.dropPeer(p, fmt.Errorf("%w: this node is Primary of term %d and term %d was %s", ErrStaleTerm, e.roleTerm, t, from), false)
		case p.role == Primary && p.term < t:
			e.dropPeer(p, fmt.Errorf("%w: node %d is Primary of term %d and term %d was %s", ErrStaleTerm, p.cfg.ID, p.term, t, from), false)
		}
	}
}

// refusesStaleTerm handles the term of a peer's hello or state change,
// in which it acts as role: it drops the connection, and reports so, when
// the peer is Primary of a term older than one this node has seen, or
// when this node is Primary of a term older than one the peer has seen
// (this node is fenced, and replicates nothing more). Not StandAlone: the
// stale Primary is demoted by its driver and connects again as Secondary.
func (e *Engine) refusesStaleTerm(p *peer, t uint64, role Role) bool {
	p.term = t
	if role == Primary && t < e.term {
		e.dropPeer(p, fmt.Errorf("%w: node %d is Primary of term %d, this node has seen term %d", ErrStaleTerm, p.cfg.ID, t, e.term), false)
		return true
	}
	e.learnTerm(t, fmt.Sprintf("seen by node %d", p.cfg.ID))
	if p.conn != Connected {
		return true // learnTerm fenced this node
	}
	if e.fenced() {
		e.dropPeer(p, fmt.Errorf("%w: this node is Primary of term %d and has seen term %d", ErrStaleTerm, e.roleTerm, e.term), false)
		return true
	}
	return false
}

// fenced reports whether this node is Primary of a term older than the
// highest it has seen: another node was promoted since. It completes no
// write or flush (as without quorum) until it is demoted.
func (e *Engine) fenced() bool { return e.role == Primary && e.roleTerm < e.term }

// actingTerm is the term this node acts in, which its hellos and state
// changes carry: a Primary's promotion term, anyone else's highest seen.
func (e *Engine) actingTerm() uint64 {
	if e.role == Primary {
		return e.roleTerm
	}
	return e.term
}
