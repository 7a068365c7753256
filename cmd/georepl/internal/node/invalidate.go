package node

import (
	"fmt"

	"github.com/georepl/georepl/core"
)

// Invalidate declares this node's copy of the resource bad: the connected
// Primary (peerName, or whichever peer is Primary when empty) resyncs it
// fully, skipping blocks found identical when csums is set. The engine
// refuses, saying why, when that makes no sense (this node is Primary, no
// Primary is connected, a resync runs).
func (r *resource) Invalidate(peerName string) error {
	return r.call(func() error {
		p, err := r.invalidatePeer(peerName, func(ps core.PeerStatus) bool {
			return ps.Conn == core.Connected && ps.Role == core.Primary
		}, "no connected peer is Primary: nothing to resynchronise from")
		if err == nil {
			err = r.engine.Invalidate(p.id)
		}
		if err != nil {
			return fmt.Errorf("cannot invalidate %s on %s: %w", r.cfg.Name, r.self.Name, err)
		}
		r.process()
		r.publishStatus()
		return r.failed
	})
}

// InvalidateRemote declares the copy of peerName bad (every connected peer
// when empty): this node, the Primary, resyncs it fully.
func (r *resource) InvalidateRemote(peerName string) error {
	return r.call(func() error {
		var targets []*peer
		if peerName != "" {
			p, err := r.invalidatePeer(peerName, nil, "")
			if err != nil {
				return fmt.Errorf("cannot invalidate %s on peer %s: %w", r.cfg.Name, peerName, err)
			}
			targets = []*peer{p}
		} else {
			for _, ps := range r.engine.Status().Peers {
				if ps.Conn == core.Connected {
					targets = append(targets, r.peers[ps.ID])
				}
			}
			if len(targets) == 0 {
				return fmt.Errorf("cannot invalidate %s on its peers: %w: no peer of %s is connected", r.cfg.Name, core.ErrWrongState, r.self.Name)
			}
		}
		for _, p := range targets {
			if err := r.engine.InvalidateRemote(p.id); err != nil {
				r.process()
				r.publishStatus()
				return fmt.Errorf("cannot invalidate %s on peer %s: %w", r.cfg.Name, p.node.Name, err)
			}
		}
		r.process()
		r.publishStatus()
		return r.failed
	})
}

// invalidatePeer is the peer called name, or if name is empty the first
// whose status satisfies pick (none: an error saying missing).
func (r *resource) invalidatePeer(name string, pick func(core.PeerStatus) bool, missing string) (*peer, error) {
	if name != "" {
		ps, err := r.peersNamed(name)
		if err != nil {
			return nil, err
		}
		return ps[0], nil
	}
	for _, ps := range r.engine.Status().Peers {
		if pick(ps) {
			return r.peers[ps.ID], nil
		}
	}
	return nil, fmt.Errorf("%w: %s", core.ErrWrongState, missing)
}
