package node

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/georepl/georepl/cmd/georepl/internal/storage"
	"github.com/georepl/georepl/core"
)

// Primary promotes the resource on this node and attaches the kernel
// device the configuration names, if any.
//
// With force, a sync target whose resync was interrupted and whose undo
// log holds the image from before the resync is first rolled back to that
// image (the resource goes down and up again; see consistentresync.go),
// then promoted: the operator gets a consistent, older image rather than
// a mix.
//
// Writes this node received from the Primary it lost (or that demoted
// itself since) are applied first: Promote is refused (core.ErrBusy) until
// they are on the disk, which takes a few local writes, so it is retried.
//
// Under automatic failover the promotion goes through the consensus log:
// this node is promoted when the log commits it, in the next term.
func (r *resource) Primary(force bool) error {
	l := r.failover.Load()
	if l == nil {
		return r.promoteHere(force)
	}
	if err := r.call(func() error {
		if r.engine.Status().Role == core.Primary {
			return fmt.Errorf("resource %s is already Primary on %s", r.cfg.Name, r.self.Name)
		}
		return nil
	}); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return l.PromoteHere(ctx, force)
}

// promoteHere promotes the resource on this node (Primary without the
// consensus log).
func (r *resource) promoteHere(force bool) error { return r.promoteInTerm(force, 0) }

// errReplacedPromotion: a promotion of this node in a term older than one
// its engine has seen.
var errReplacedPromotion = errors.New("the log has promoted another node since")

// promoteInTerm is promoteHere for the log's promotion in term (0: not
// the log's): it is refused, atomically with the promotion, if the engine
// has seen a newer term (errReplacedPromotion), for the engine's Primary
// holds the newest term it has seen.
func (r *resource) promoteInTerm(force bool, term uint64) error {
	rollBack := false
	became := false // this call made the node Primary
	promote := func() error {
		if seen := r.engine.Status().Term; term != 0 && seen > term {
			return fmt.Errorf("%w: %s on %s was promoted in term %d, and term %d has been seen", errReplacedPromotion, r.cfg.Name, r.self.Name, term, seen)
		}
		if force && r.canRollBack() {
			rollBack = true
			return nil
		}
		became = r.engine.Status().Role != core.Primary
		if err := r.engine.Promote(force); err != nil {
			if errors.Is(err, core.ErrNoQuorum) {
				return fmt.Errorf("cannot make %s Primary on %s: %w (--force promotes anyway: only if the nodes it cannot reach are down, or two Primaries may write)", r.cfg.Name, r.self.Name, err)
			}
			return fmt.Errorf("cannot make %s Primary on %s: %w%s", r.cfg.Name, r.self.Name, err, r.undoHint())
		}
		r.process()
		r.publishStatus()
		return r.failed
	}
	deadline := time.Now().Add(30 * time.Second)
	err := r.call(promote)
	for errors.Is(err, core.ErrBusy) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
		err = r.call(promote)
	}
	if err == nil && rollBack {
		err = r.rollBackAndPromote()
		became = true
	}
	if err != nil {
		return err
	}
	if err := r.attachKernelDevice(); err != nil {
		return fmt.Errorf("%s is Primary on %s and its export serves, but the kernel device is not attached: %w", r.cfg.Name, r.self.Name, err)
	}
	if became {
		r.promoted()
	}
	return nil
}

// Secondary demotes the resource: clients of the export are disconnected
// first, the engine is demoted once their outstanding requests ended or
// are held for quorum (the demotion fails those with EIO), and then the
// connections are waited for.
func (r *resource) Secondary() error {
	if err := r.call(func() error {
		if r.engine.Status().Role != core.Primary {
			return fmt.Errorf("resource %s is already Secondary on %s", r.cfg.Name, r.self.Name)
		}
		return nil
	}); err != nil {
		return err
	}
	// on_demote may stop the service and unmount the device. Then the
	// kernel device goes first: it refuses, naming the holder, while it
	// is mounted or open, and then nothing else has changed.
	r.demoting()
	if err := r.detachKernelDevice(); err != nil {
		return err
	}
	// Waiting for the connections before demoting would wait for ever on
	// a request held for quorum, which only the demotion ends.
	var stopped <-chan struct{}
	if r.export != nil {
		stopped = r.export.StopConnections()
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := r.call(func() error {
			err := r.engine.Demote()
			if err == nil {
				r.process()
				r.publishStatus()
				err = r.failed
			}
			return err
		})
		if err == nil {
			break
		}
		if !errors.Is(err, core.ErrBusy) || time.Now().After(deadline) {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
	if stopped != nil {
		<-stopped // the last replies; a request that was not submitted yet fails, as on a Secondary
	}
	return nil
}

// Connect lets this node connect to peerName again (all peers when
// empty). discardMyData makes this node the victim if the next handshake
// finds a split brain (core.Engine.DiscardMyData); a Primary refuses it.
func (r *resource) Connect(peerName string, discardMyData bool) error {
	if discardMyData {
		targets, err := r.peersNamed(peerName)
		if err != nil {
			return err
		}
		if err := r.call(func() error {
			if r.engine.Status().Role == core.Primary {
				return fmt.Errorf("resource %s is Primary on %s, and a Primary's data is never discarded: run `georepl secondary %s` first", r.cfg.Name, r.self.Name, r.cfg.Name)
			}
			for _, p := range targets {
				r.mu.Lock()
				connected := p.conn != nil
				r.mu.Unlock()
				if connected && peerName != "" {
					return fmt.Errorf("resource %s on %s is connected to %s: there is no split brain to resolve, and --discard-my-data would discard nothing", r.cfg.Name, r.self.Name, p.node.Name)
				}
				r.engine.DiscardMyData(p.id)
			}
			return nil
		}); err != nil {
			return err
		}
	}
	return r.setWanted(peerName, true)
}

// Disconnect closes the connection to peerName (all peers when empty) and
// keeps it closed (StandAlone) until Connect.
func (r *resource) Disconnect(peerName string) error {
	return r.setWanted(peerName, false)
}

func (r *resource) setWanted(peerName string, wanted bool) error {
	targets, err := r.peersNamed(peerName)
	if err != nil {
		return err
	}
	return r.call(func() error {
		for _, p := range targets {
			r.mu.Lock()
			p.wanted = wanted
			if wanted {
				p.lastErr = ""
			}
			r.mu.Unlock()
			if !wanted && p.conn != nil {
				p.conn.close(errors.New("disconnected by the administrator"))
				r.setConn(p, nil)
				r.engine.Disconnected(p.id)
			}
		}
		r.process()
		// Now, not at the next tick: a wait-sync right after connect
		// must not see the connection as it was before the disconnect.
		r.publishStatus()
		return nil
	})
}

// PauseSync pauses (paused true) or resumes the resync from this node to
// peerName (every peer when empty): no new resync block is read for it
// until resumed; the pause lasts until resume-sync or the resource goes
// down, across reconnections.
func (r *resource) PauseSync(peerName string, paused bool) error {
	targets, err := r.peersNamed(peerName)
	if err != nil {
		return err
	}
	return r.call(func() error {
		for _, p := range targets {
			if err := r.engine.PauseResync(p.id, paused); err != nil {
				return err
			}
		}
		r.process()
		r.publishStatus()
		return nil
	})
}

func (r *resource) peersNamed(name string) ([]*peer, error) {
	if name == "" {
		return sortedPeers(r.peers), nil
	}
	for _, p := range r.peers {
		if p.node.Name == name {
			return []*peer{p}, nil
		}
	}
	names := []string{}
	for _, p := range sortedPeers(r.peers) {
		names = append(names, p.node.Name)
	}
	return nil, fmt.Errorf("resource %s has no peer %q on node %s (peers: %v)", r.cfg.Name, name, r.self.Name, names)
}

// forceDown takes the resource down even when Primary (daemon shutdown).
// It is idempotent: a resource that failed takes itself down, and the
// daemon's shutdown may try again.
func (r *resource) forceDown() error {
	r.mu.Lock()
	if !r.up {
		r.mu.Unlock()
		return nil
	}
	r.up = false
	r.mu.Unlock()
	if l := r.failover.Swap(nil); l != nil {
		if err := l.Close(); err != nil {
			r.log.Warn("failover: closing the voter", "err", err)
		}
	}
	// The export's requests are carried out before the loop stops, except
	// those held for quorum: they end only when the loop stops (failing
	// them), so the wait ends when quorum is lost too.
	exportClosed := r.stopExport()
	r.awaitRequests(exportClosed)
	close(r.stop)
	<-r.loopDone
	<-exportClosed // before the storage closes: a read may still be on the disk
	for _, p := range r.peers {
		if p.dialDone != nil {
			<-p.dialDone
			p.dialDone = nil
		}
	}
	err := r.st.Close()
	r.publishStatus()
	return err
}

// awaitRequests waits until ended is closed, or until this node is a
// Primary without quorum: then the requests it holds end only when it goes
// down or is demoted.
func (r *resource) awaitRequests(ended <-chan struct{}) {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ended:
			return
		case <-tick.C:
		}
		r.emu.Lock()
		held := false
		if r.engine != nil {
			st := r.engine.Status()
			held = st.Role == core.Primary && !st.Quorate
		}
		r.unlockEngine()
		if held {
			return
		}
	}
}

// DumpMD prints the metadata of a resource that is up.
func (r *resource) DumpMD(w io.Writer, asJSON bool) error {
	return r.call(func() error {
		r.persistBitmaps()
		return storage.DumpStore(w, r.st.Store, asJSON)
	})
}
