package storage

import (
	"errors"
	"fmt"

	"github.com/georepl/georepl/core"
	"github.com/georepl/georepl/core/meta"
)

// recoverActivityLog runs at attach, before the engine starts. A non-empty
// log means the last shutdown was unclean: writes on its extents may be on
// this node and not on others, or the reverse. It marks every block of
// those extents in the bitmap of every peer, sets the bitmap id of each
// peer without marks to the current generation (core/doc.go), persists
// both and empties the log. It returns the number of extents marked; a log
// damaged in both slots marks every extent.
//
// syncData flushes the data disk first, whatever the log holds. After a
// process crash (not a power loss) the dead process's writes may still sit
// in the page cache; once the log is empty nothing records them, and a
// resync that clears their marks followed by a power loss would lose them
// unrecorded. A clean log does not rule them out: create-md after the
// crash empties the log those writes were in, and a forced promotion then
// takes them into a generation with nothing covering them.
func recoverActivityLog(store *meta.Store, peers []core.NodeID, syncData func() error) (marked int, err error) {
	extents, err := store.ReadActivityLog()
	if errors.Is(err, meta.ErrCorrupt) {
		extents = make([]uint64, store.ActivityLogExtents())
		for i := range extents {
			extents[i] = uint64(i)
		}
	} else if err != nil {
		return 0, err
	}
	if err := syncData(); err != nil {
		return 0, fmt.Errorf("flushing the data disk a previous process may have left writes in the page cache of: %w", err)
	}
	if len(extents) == 0 {
		return 0, nil
	}
	sb := store.Superblock()
	marks := core.NewBitmap(store.BitmapBits())
	for _, x := range extents {
		marks.SetBytes(x*meta.ActivityLogExtentSize, meta.ActivityLogExtentSize, sb.BlockSize)
	}
	if err := markForPeers(store, peers, marks); err != nil {
		return 0, err
	}
	if err := store.UpdateSuperblock(func(sb *meta.Superblock) { adoptUnmarked(sb, peers, sb.Current) }); err != nil {
		return 0, err
	}
	if err := store.WriteActivityLog(nil); err != nil {
		return 0, err
	}
	return len(extents), nil
}
