package node

import (
	"fmt"
	"time"

	"github.com/georepl/georepl/core"
	"github.com/georepl/georepl/core/meta"
)

// The resource's part of a consistent resync (storage.UndoGuard has the
// mechanism): sessions begin and end with the persists of the disk state,
// the operator is told what the undo log did and offers, and a forced
// promotion rolls back first.

// persistWithUndo writes the engine's durable state, starting the undo
// log's session before the disk is first persisted Inconsistent (the
// resync's writes follow that Ready) and ending it once the disk is
// persisted as anything else (the resync is done, or the node was
// promoted with force) but Diskless: a detached disk's session is
// discarded at its next attach, if its disk is no longer Inconsistent.
func (r *resource) persistWithUndo(p *core.Persistent) error {
	g := r.st.Undo
	if g != nil && p.Disk == core.Inconsistent {
		sb := r.st.Store.Superblock()
		began, err := g.Begin(sb)
		if err != nil {
			return fmt.Errorf("starting the resync undo log %s: %w", g.Path(), err)
		}
		if began {
			r.undoEvent(fmt.Sprintf("consistent resync: old blocks are saved in %s before their first overwrite; the image of generation %X can be restored", g.Path(), sb.Current), false)
		}
	}
	if err := r.st.Persist(p); err != nil {
		return err
	}
	if g != nil && p.Disk != core.Inconsistent && p.Disk != core.Diskless {
		ended, err := g.End()
		if err != nil {
			return fmt.Errorf("ending the resync undo log %s: %w", g.Path(), err)
		}
		if ended {
			r.undoEvent(fmt.Sprintf("consistent resync: undo log discarded, the disk is %v", p.Disk), false)
		}
	}
	return nil
}

// undoEvent logs and publishes what the undo log did; warn for what the
// operator must know (space exhausted).
func (r *resource) undoEvent(msg string, warn bool) {
	if warn {
		r.log.Warn(msg)
	} else {
		r.log.Info(msg)
	}
	r.d.events.publish(Event{Time: time.Now().UTC(), Resource: r.cfg.Name, Node: r.self.Name, What: "resync-undo", Detail: msg})
}

// startUndo reports what attach did with an undo session and routes the
// space warning to the events.
func (r *resource) startUndo(st *localDisk) {
	if st.Undo == nil {
		return
	}
	st.Undo.SetWarn(func(msg string) { r.undoEvent(msg, true) })
	if st.UndoRecovered != "" {
		r.undoEvent("resync undo log at attach: "+st.UndoRecovered, false)
	}
}

// canRollBack reports, on the loop, whether Primary with force rolls this
// node back first: a Secondary whose disk is Inconsistent, with an active
// undo session, and no resync into it running nor a Primary connected
// (the engine refuses those promotions with their own reasons).
func (r *resource) canRollBack() bool {
	if r.st.Undo == nil || r.st.Undo.Header().State != meta.UndoActive {
		return false
	}
	es := r.engine.Status()
	if es.Role == core.Primary || es.Disk != core.Inconsistent {
		return false
	}
	for _, p := range es.Peers {
		if p.Conn == core.Connected && (p.Repl == core.SyncTarget || p.Role == core.Primary) {
			return false
		}
	}
	return true
}

// undoHint explains, after a refused promotion of an Inconsistent disk,
// what the undo log offers.
func (r *resource) undoHint() string {
	if r.st.Undo == nil || r.engine.Status().Disk != core.Inconsistent {
		return ""
	}
	h := r.st.Undo.Header()
	switch h.State {
	case meta.UndoActive:
		return fmt.Sprintf("; its resync undo log can restore the consistent image of generation %X from before the resync: `georepl primary --force %s` rolls back to it and promotes (once the resync source is gone)", h.Current, r.cfg.Name)
	case meta.UndoExhausted:
		return "; the resync undo log ran out of space during the resync, so no consistent image is left: --force would promote an inconsistent image (wait for the resync to finish instead if you can)"
	}
	return ""
}

// rollBackAndPromote takes the resource down, brings it up again rolling
// back to the image from before the resync, and promotes it with force
// (that image is older than its lost source's: Outdated).
func (r *resource) rollBackAndPromote() error {
	if err := r.forceDown(); err != nil {
		r.log.Warn("taking the resource down for the rollback", "err", err)
	}
	r.rollBack = true
	err := r.Up()
	r.rollBack = false
	if err != nil {
		return fmt.Errorf("cannot make %s Primary on %s: rolling back to the image from before the resync failed: %w", r.cfg.Name, r.self.Name, err)
	}
	return r.call(func() error {
		if err := r.engine.Promote(true); err != nil {
			return fmt.Errorf("cannot make %s Primary on %s after rolling back to the image from before the resync: %w", r.cfg.Name, r.self.Name, err)
		}
		r.process()
		r.publishStatus()
		return r.failed
	})
}
