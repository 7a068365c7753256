package storage

import (
	"fmt"

	"github.com/georepl/georepl/core"
	"github.com/georepl/georepl/core/meta"
)

// blockWriter is where a rollback writes the saved blocks back: the data
// area.
type blockWriter interface {
	WriteAt(p []byte, off int64) (int, error)
	Sync() error
}

// recoverUndo runs at attach, before the engine starts, after the
// superblock was read. A session whose disk is no longer Inconsistent is
// over (the resync finished, or a rollback completed): it is discarded. A
// session marked rolling back (the operator asked for it, or a crash
// interrupted it) is rolled back now. An active or exhausted session of
// an Inconsistent disk goes on. It returns what it did, for the log.
func recoverUndo(store *meta.Store, u *meta.UndoLog, data blockWriter, peers []core.NodeID) (string, error) {
	h := u.Header()
	sb := store.Superblock()
	switch {
	case h.State == meta.UndoIdle:
		return "", nil
	case core.DiskState(sb.DiskState) != core.Inconsistent:
		if err := u.End(); err != nil {
			return "", err
		}
		return fmt.Sprintf("discarded a %s session: the disk is %v", h.State, core.DiskState(sb.DiskState)), nil
	case h.Current != sb.Current || h.History != sb.History:
		// Not the image the metadata describes: never restore it.
		if h.State == meta.UndoActive || h.State == meta.UndoRollingBack {
			if err := u.SetState(meta.UndoExhausted); err != nil {
				return "", err
			}
		}
		return fmt.Sprintf("the session began at generation %X, the metadata is at %X: no rollback possible (marked exhausted)", h.Current, sb.Current), nil
	case h.State == meta.UndoRollingBack:
		n, err := rollBackUndo(store, u, data, peers)
		if err != nil {
			return "", fmt.Errorf("rolling back from the resync undo log: %w", err)
		}
		return fmt.Sprintf("rolled back %d blocks to the image of generation %X from before the resync", n, h.Current), nil
	}
	return fmt.Sprintf("the %s session goes on (the disk stays Inconsistent until its resync is done or it is rolled back)", h.State), nil
}

// rollBackUndo writes every saved block back (the first save of a block
// wins, though a session saves each block once), syncs the data, marks
// the restored blocks for every peer (their bitmap ids set to the restored
// current id where they had none), makes the disk Outdated with the
// generation ids of the session's start, and ends the session. Every step
// can be repeated after a crash: the records do not change until End.
func rollBackUndo(store *meta.Store, u *meta.UndoLog, data blockWriter, peers []core.NodeID) (restored uint64, err error) {
	h := u.Header()
	sb := store.Superblock()
	bs := uint64(sb.BlockSize)
	done := core.NewBitmap(store.BitmapBits())
	err = u.Records(func(first uint64, d []byte) error {
		n := uint64(len(d)) / bs
		for i := uint64(0); i < n; i++ {
			b := first + i
			if b >= done.Len() || done.Test(b) {
				continue
			}
			if _, err := data.WriteAt(d[i*bs:(i+1)*bs], int64(b*bs)); err != nil {
				return fmt.Errorf("restoring block %d: %w", b, err)
			}
			done.SetRange(b, 1)
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	if err := data.Sync(); err != nil {
		return 0, fmt.Errorf("syncing the restored blocks: %w", err)
	}
	if err := markForPeers(store, peers, done); err != nil {
		return 0, err
	}
	if err := store.UpdateSuperblock(func(s *meta.Superblock) {
		s.DiskState = uint8(core.Outdated)
		s.Primary = false
		s.Current, s.History = h.Current, h.History
		adoptUnmarked(s, peers, h.Current)
	}); err != nil {
		return 0, err
	}
	if err := u.End(); err != nil {
		return 0, err
	}
	return done.Count(), nil
}

// requestRollback marks the undo log's session as rolling back, durably,
// so that recoverUndo restores it (and does so again after a crash in the
// middle). Only an active session of an Inconsistent disk can.
func requestRollback(store *meta.Store, u *meta.UndoLog) error {
	h, sb := u.Header(), store.Superblock()
	switch {
	case core.DiskState(sb.DiskState) != core.Inconsistent:
		return fmt.Errorf("the disk is %v, not an interrupted sync target: nothing to roll back", core.DiskState(sb.DiskState))
	case h.State == meta.UndoRollingBack:
		return nil
	case h.State == meta.UndoExhausted:
		return fmt.Errorf("the resync undo log ran out of space during the resync: the image from before it is gone")
	case h.State != meta.UndoActive:
		return fmt.Errorf("the resync undo log holds no session (the disk became Inconsistent without a consistent image to keep)")
	}
	return u.SetState(meta.UndoRollingBack)
}
