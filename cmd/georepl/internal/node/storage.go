package node

import (
	"errors"
	"io"
	"sync/atomic"

	"github.com/georepl/georepl/cmd/georepl/internal/storage"
	"github.com/georepl/georepl/configs"
	"github.com/georepl/georepl/core"
	"github.com/georepl/georepl/core/meta"
	"github.com/georepl/georepl/kmod"
)

// localDisk is a node's backing disk for one resource, attached
// (storage.Disk), with the layers the driver's goroutines run over its
// data area.
type localDisk struct {
	*storage.Disk
	data *storage.UndoRegion // every write activates its extents (and saves old blocks during a resync) first
	al   *activityLog
	// size is the data size, which a resize grows while the export's
	// clients read it.
	size atomic.Uint64
	// detached is set once the engine detached the disk after an I/O
	// error (resource.noteDetached): reads go to the peers, and the
	// metadata is written only on a best-effort basis.
	detached atomic.Bool
}

// bitmapSlots is the number of per-peer bitmap slots a resource's metadata
// holds: one per node id up to the highest configured. Changing node ids
// later needs create-md again, as the layout depends on it.
func bitmapSlots(rc *configs.Resource) int {
	maxID := 0
	for _, n := range rc.Nodes {
		maxID = max(maxID, n.ID)
	}
	return maxID + 1
}

// storageConfig says where node self keeps resource rc.
func storageConfig(rc *configs.Resource, self *configs.Node, opts Options, faults *kmod.Faults) *storage.Config {
	c := &storage.Config{
		Resource:   rc.Name,
		Node:       self.Name,
		NodeID:     uint8(self.ID),
		Slots:      bitmapSlots(rc),
		BlockSize:  uint32(rc.Disk.BlockSize),
		Disk:       self.Disk,
		MetaDisk:   metaDisk(self),
		OpenDevice: opts.openDevice,
		Faults:     faults,
	}
	for _, n := range rc.Peers(self.Name) {
		c.Peers = append(c.Peers, core.NodeID(n.ID))
	}
	if self.ResyncUndo != configs.ResyncUndoNone {
		c.UndoLog, c.UndoSize = self.ResyncUndo, rc.Disk.ResyncUndoSize
	}
	return c
}

// metaDisk is node self's external metadata file, "" for internal
// metadata (storage.Config's convention).
func metaDisk(self *configs.Node) string {
	if self.MetaDisk == configs.MetaDiskInternal {
		return ""
	}
	return self.MetaDisk
}

// openStorage attaches the disk (storage.Open) and starts its activity
// log. rollBack asks to restore, from the undo log, the image this sync
// target had before its resync (the operator promotes it without its
// source): it fails unless a session can do it.
func openStorage(rc *configs.Resource, self *configs.Node, opts Options, faults *kmod.Faults, rollBack bool) (*localDisk, error) {
	d, err := storage.Open(storageConfig(rc, self, opts, faults), rollBack)
	if err != nil {
		return nil, err
	}
	al := newActivityLog(d.Store, d.Gate, rc.Disk.ALExtents)
	s := &localDisk{
		Disk: d,
		data: storage.NewUndoRegion(&alRegion{GatedRegion: d.Region, al: al}, d.Undo),
		al:   al,
	}
	s.size.Store(d.DataSize)
	return s, nil
}

// Close flushes the data, retires the activity log's settled extents
// (empty after a clean shutdown: see activityLog.close) and closes the
// disks.
func (s *localDisk) Close() error {
	if s.Undo != nil {
		s.Undo.Freeze()
	}
	if s.detached.Load() {
		// Nothing on a detached disk counts any more: just let it go.
		_, _ = s.al.close(false)
		return s.Disk.Close()
	}
	// The activity log flushes the data and retires what the flush
	// covers: a failed flush retires nothing, nor does one while a failure
	// is not handled (the engine is stopped: none will be).
	_, err := s.al.close(true)
	return errors.Join(err, s.Disk.Close())
}

// CreateMetadata initialises the metadata of resource rc for node self, as
// `georepl create-md` does. The disk starts Inconsistent with generation
// ids zero ("just created"); force overwrites existing metadata.
func CreateMetadata(rc *configs.Resource, self *configs.Node, force bool) (*meta.Superblock, error) {
	return storage.CreateMetadata(storageConfig(rc, self, Options{}, nil), force)
}

// DumpMetadata prints the metadata of resource rc on node self, offline
// (the daemon must not have the disk open).
func DumpMetadata(w io.Writer, rc *configs.Resource, self *configs.Node, asJSON bool) error {
	return storage.DumpMetadata(w, storageConfig(rc, self, Options{}, nil), asJSON)
}
