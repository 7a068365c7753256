package node

import (
	"errors"
	"fmt"

	"github.com/georepl/georepl/cmd/georepl/internal/storage"
	"github.com/georepl/georepl/core/meta"
	"github.com/georepl/georepl/kmod/nbdkernel"
)

// Resize grows the resource to what its backing disk holds now, after the
// operator grew the disk: the metadata moves to the disk's new end
// (storage.Disk.Grow: crash-safe, a crash leaves the old size or the new
// one, each with all its data), the engine's bitmaps grow, and the export
// and an attached /dev/nbdX report the new size.
//
// The new space is marked out of sync towards every peer, so that each
// resync sends it; with assumeClean it is declared identical on every node
// (the operator zeroed it everywhere) and only the old metadata area, data
// from now on, is marked. Every connection is closed first: the peers
// agree on the size at the handshake, so they connect again once they run
// at the same size (each node resizes on its own; see attachLink's
// sizeMismatch).
//
// It returns what it did, for the operator.
func (r *resource) Resize(assumeClean bool) (string, error) {
	if _, isUblk := r.kernel.get().(ublkAttachment); isUblk {
		return "", fmt.Errorf("resize of %s on %s: the ublk kernel device %s cannot change its size on this kernel (UBLK_CMD_UPDATE_SIZE is newer than Linux 6.12): make this node Secondary, resize, then Primary again",
			r.cfg.Name, r.self.Name, r.kernel.get().Path())
	}
	var plan *storage.GrowPlan
	err := r.call(func() error {
		if r.st.detached.Load() {
			return fmt.Errorf("resize of %s on %s: the disk is detached", r.cfg.Name, r.self.Name)
		}
		var err error
		plan, err = r.st.PlanGrow(storageConfig(r.cfg, r.self, r.d.opts, nil))
		if err != nil {
			return fmt.Errorf("%s on %s: %w", r.cfg.Name, r.self.Name, err)
		}
		for _, p := range sortedPeers(r.peers) {
			if p.conn != nil {
				p.conn.close(errors.New("resize: the peers agree on the size at the next handshake"))
				r.setConn(p, nil)
				r.engine.Disconnected(p.id)
			}
		}
		r.process()
		bs := uint64(r.cfg.Disk.BlockSize)
		cleanFrom := plan.DataSize
		if assumeClean {
			// The old metadata area is data now, and only this node
			// knows where it was: it is resent, not declared clean.
			cleanFrom = min(max((plan.OldMetaEnd+bs-1)/bs*bs, plan.OldDataSize), plan.DataSize)
		}
		if err := r.engine.Resize(plan.DataSize, cleanFrom); err != nil {
			return fmt.Errorf("resize of %s on %s: %w", r.cfg.Name, r.self.Name, err)
		}
		// The grown bitmaps and the state that ties them to their ids
		// are committed with the moved metadata, in one step.
		words := map[int][]uint64{}
		for id := range r.peers {
			words[int(id)] = r.engine.Bitmap(id).Words()
		}
		ps := r.engine.Persistent()
		if err := r.st.Grow(plan, words, func(sb *meta.Superblock) { storage.ApplyPersistent(sb, &ps) }); err != nil {
			// The engine runs at the new size already: a disk that
			// cannot follow it must not be used.
			r.failMetadata(err)
			return fmt.Errorf("%s on %s: %w; the resource is down: bring it up again (at the old size if the resize did not commit)", r.cfg.Name, r.self.Name, err)
		}
		r.st.al.extents.Store(r.st.Store.ActivityLogExtents())
		r.st.size.Store(plan.DataSize)
		r.process()
		r.publishStatus()
		return r.failed
	})
	if err != nil {
		return "", err
	}
	msg := fmt.Sprintf("%s on %s: grown from %d to %d bytes", r.cfg.Name, r.self.Name, plan.OldDataSize, plan.DataSize)
	if assumeClean {
		msg += " (new space declared clean)"
	} else {
		msg += " (new space marked out of sync for every peer)"
	}
	if a, ok := r.kernel.get().(*nbdAttachment); ok {
		if err := resizeNBD(a.Index, r.kernelBackend(), plan.DataSize, uint64(r.cfg.Disk.LogicalBlockSize)); err != nil {
			return "", fmt.Errorf("%s; but %s still reports the old size: %w", msg, a.Path(), err)
		}
		msg += "; " + a.Path() + " resized"
	}
	r.log.Info("resized", "old", plan.OldDataSize, "new", plan.DataSize, "assume_clean", assumeClean)
	return msg + "\n", nil
}

// resizeNBD tells the kernel the new size of /dev/nbd<index>, attached
// with backend: the kernel refuses (EINVAL) a reconfigure of a device with
// a backend identifier that does not name it.
func resizeNBD(index int, backend string, size, blockSize uint64) error {
	nl, err := nbdkernel.Open()
	if err != nil {
		return err
	}
	defer nl.Close()
	return nl.Reconfigure(nbdkernel.Config{Index: index, Backend: backend, Size: size, BlockSize: blockSize}, nil)
}

// sizeMismatch refuses a connection whose peer runs at another size than
// this node: one of them grew and the other did not yet. The connection
// is closed without StandAlone (the engine's ErrDeviceMismatch would stop
// reconnecting), so that it connects again once the operator resized the
// other node; status shows why meanwhile. Called on the loop, emu held.
func (r *resource) sizeMismatch(p *peer, l *link) bool {
	ours := r.st.size.Load()
	if l.hello.Size == ours && l.ourHello.Size == ours {
		return false
	}
	what := fmt.Sprintf("node %s has %d bytes of %s, this node %d", p.node.Name, l.hello.Size, r.cfg.Name, ours)
	switch {
	case l.hello.Size > ours:
		what += ": grow this node's backing disk and run georepl resize here"
	case l.hello.Size < ours:
		what += fmt.Sprintf(": grow the backing disk of %s and run georepl resize there", p.node.Name)
	default:
		what += ": this node resized during the handshake"
	}
	l.close(errors.New(what))
	r.mu.Lock()
	p.lastErr = what
	r.mu.Unlock()
	r.log.Warn("connection refused: the sizes differ", "peer", p.node.Name, "reason", what)
	return true
}

// warnInterruptedResize says, at up, that a resize was interrupted before
// its commit and the disk came up at its old size.
func (r *resource) warnInterruptedResize(st *localDisk) {
	if rec := st.Resized; rec != nil {
		r.log.Warn("a resize was interrupted before it committed: the resource is up at its old size, with the old metadata; run georepl resize again",
			"old", rec.OldDataSize, "interrupted_to", rec.NewDataSize)
	}
}
