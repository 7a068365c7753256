package core

import "fmt"

// Resize grows the device to size bytes, after the driver made the local
// disk (and its metadata) that large. Every per-peer bitmap grows with it.
// The blocks from the old size up to cleanFrom are marked out of sync
// towards every peer, so that the next resync with each sends them; the
// blocks from cleanFrom up to size are declared identical on every node
// (the operator's --assume-clean: the new space is zero everywhere) and are
// not marked. cleanFrom = size declares nothing clean.
//
// The marks are not covered by any activity-log extent: the Ready asks for
// the bitmaps to be written before the superblock that ties them to their
// bitmap ids (Ready.PersistBitmaps), as for invalidate. A node that never
// had a Primary (current id 0) marks nothing: its first connection makes a
// full sync anyway.
//
// It fails with ErrWrongState while any peer is connected: the peers agree
// on the size at the handshake (Connected refuses a hello of another size
// with ErrDeviceMismatch), so the driver disconnects first and the next
// handshake carries the new size. A write or resync frame in flight is
// never beyond the old size, which the peers still have.
func (e *Engine) Resize(size, cleanFrom uint64) error {
	defer e.finish()
	bs := uint64(e.blockSize)
	switch {
	case size < e.size:
		return fmt.Errorf("%w: the device would shrink from %d to %d bytes: georepl grows a device, never shrinks it (data beyond %d would be lost)", ErrWrongState, e.size, size, size)
	case size%bs != 0:
		return fmt.Errorf("%w: new size %d is not a multiple of the block size %d", ErrWrongState, size, bs)
	case cleanFrom < e.size || cleanFrom > size:
		return fmt.Errorf("%w: clean space from %d is outside the new space [%d, %d)", ErrWrongState, cleanFrom, e.size, size)
	}
	for _, p := range e.peers {
		if p.conn == Connected {
			return fmt.Errorf("%w: node %d (%s) is connected: peers agree on the size at the handshake, disconnect them first", ErrWrongState, p.cfg.ID, p.cfg.Name)
		}
	}
	if size == e.size {
		return nil
	}
	old := e.size
	e.size = size
	blocks := size / bs
	for _, p := range e.peers {
		p.bitmap.Grow(blocks)
		if p.resyncWrote != nil {
			p.resyncWrote.Grow(blocks)
		}
		if p.verify != nil {
			p.verify.found.Grow(blocks)
		}
	}
	if u := &e.unsynced; u.cur != nil {
		grains := (size + u.grain - 1) / u.grain
		u.cur.Grow(grains)
		u.prev.Grow(grains)
	}
	if cleanFrom > old && e.current != 0 {
		for _, p := range e.peers {
			e.markUncovered(p, old, cleanFrom-old)
		}
	}
	e.event(Event{What: "resize", Old: fmt.Sprint(old), New: fmt.Sprint(size),
		Detail: fmt.Sprintf("%d bytes marked out of sync, %d declared clean", cleanFrom-old, size-cleanFrom)})
	return nil
}
