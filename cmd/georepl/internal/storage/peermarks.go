package storage

import (
	"github.com/georepl/georepl/core"
	"github.com/georepl/georepl/core/meta"
)

// Both recoveries (the activity log's after a crash, the undo log's
// rollback) end the same way: blocks whose copy on a peer can no longer be
// trusted are marked in that peer's bitmap, and a peer's bitmap that had no
// generation yet is tied to the one these marks are relative to.

// markForPeers ORs marks into the on-disk bitmap of every peer that has a
// slot, never into this node's own.
func markForPeers(store *meta.Store, peers []core.NodeID, marks *core.Bitmap) error {
	sb := store.Superblock()
	for _, p := range peers {
		if int(p) >= sb.Slots || p == core.NodeID(sb.NodeID) {
			continue
		}
		words, err := store.ReadBitmap(int(p))
		if err != nil {
			return err
		}
		for i, w := range marks.Words() {
			words[i] |= w
		}
		if err := store.WriteBitmap(int(p), words); err != nil {
			return err
		}
	}
	return nil
}

// adoptUnmarked gives every peer whose bitmap has no generation id the id
// gen, for the caller to persist with the rest of its superblock update.
func adoptUnmarked(sb *meta.Superblock, peers []core.NodeID, gen uint64) {
	for _, p := range peers {
		if int(p) < len(sb.BitmapUUID) && p != core.NodeID(sb.NodeID) && sb.BitmapUUID[p] == 0 {
			sb.BitmapUUID[p] = gen
		}
	}
}
