package storage

import (
	"errors"
	"fmt"

	"github.com/georepl/georepl/core/meta"
	"github.com/georepl/georepl/kmod"
)

// GrowPlan is a resize of an attached disk, checked before anything
// changes: Disk.PlanGrow makes it, Disk.Grow carries it out.
type GrowPlan struct {
	// DeviceSize is the backing disk's new size, DataSize the data size
	// it holds with internal metadata at its new end; OldDataSize is the
	// current data size.
	DeviceSize            int64
	DataSize, OldDataSize uint64
	// OldMetaEnd is where the current metadata area ends: the new data
	// area holds it from the commit on (see Disk.Grow).
	OldMetaEnd uint64

	metaOff, metaSize int64
}

// grower is the ability of kmod.Backing that a resize needs.
type grower interface {
	Grow() (int64, error)
}

// PlanGrow reads the backing disk's size again, after the operator grew
// it, and says what a resize makes of it. It refuses, naming the reason:
// external metadata (its bitmap slots would move within the file, which
// cannot be done crash-safely in place), a resync undo log (its header
// records the data size), a backing disk that did not grow enough to hold
// more data, or one that grew less than the new metadata area, which must
// not overlap the current one until the resize commits.
func (d *Disk) PlanGrow(c *Config) (*GrowPlan, error) {
	switch {
	case !c.internalMeta():
		return nil, fmt.Errorf("resize: %s has external metadata (%s): its bitmap slots would move within that file, which georepl cannot do crash-safely in place; online resize needs internal metadata", c.Disk, c.MetaDisk)
	case d.Undo != nil:
		return nil, fmt.Errorf("resize: node %s keeps a resync undo log (%s), which records the data size: set resync_undo = \"none\", adjust, resize, then set it again", c.Node, c.UndoLog)
	}
	g, ok := d.Backing.(grower)
	if !ok {
		return nil, fmt.Errorf("resize: backing disk %s cannot be grown: it is not a file or block device", c.Disk)
	}
	size, err := g.Grow()
	if err != nil {
		return nil, fmt.Errorf("resize: %w", err)
	}
	dataSize, metaOff, metaSize, err := meta.InternalLayout(size, c.Slots, c.BlockSize)
	if err != nil {
		return nil, fmt.Errorf("resize: %s: %w", c.Disk, err)
	}
	oldEnd := d.metaOff + d.metaSize
	p := &GrowPlan{DeviceSize: size, DataSize: dataSize, OldDataSize: d.DataSize, OldMetaEnd: uint64(oldEnd),
		metaOff: metaOff, metaSize: metaSize}
	switch {
	case dataSize < d.DataSize:
		return nil, fmt.Errorf("resize: %s has %d bytes, which hold %d bytes of data, less than the %d in use: georepl never shrinks a device", c.Disk, size, dataSize, d.DataSize)
	case dataSize == d.DataSize:
		return nil, fmt.Errorf("resize: %s has %d bytes, which hold no more data than now (%d bytes): grow the backing disk first", c.Disk, size, d.DataSize)
	case metaOff < oldEnd:
		return nil, fmt.Errorf("resize: %s grew by %d bytes, too little to write the new metadata (%d bytes) beyond the current one, which must stay intact until the resize commits: grow it by at least %d bytes more",
			c.Disk, size-oldEnd, metaSize, oldEnd-metaOff)
	}
	return p, nil
}

// Grow carries out p: it moves the metadata to the backing disk's new end
// (meta.Store.Grow, with the per-slot bitmaps words and the superblock
// changes apply), grows the data area, and zeroes the old metadata area,
// now data. The caller stops every write to the metadata and the data
// beyond the old size meanwhile, and marks the old metadata area where the
// peers cannot know it (it is not zero until this returns: a crash may
// leave it as it was). An error before the commit leaves the disk as it
// was; one after it (growing the region, zeroing) is returned too, with
// the metadata moved.
func (d *Disk) Grow(p *GrowPlan, words map[int][]uint64, apply func(*meta.Superblock)) error {
	b, ok := d.Backing.(kmod.Store)
	if !ok {
		return errors.New("resize: the backing disk is not a block store")
	}
	region := kmod.NewRegion(b, p.metaOff, p.metaSize)
	if err := region.Err(); err != nil {
		return fmt.Errorf("resize: %w", err)
	}
	dev := &GatedMeta{Region: region, Gate: d.Gate}
	rec := meta.ResizeRecord{OldDeviceSize: d.metaOff + d.metaSize, OldDataSize: d.DataSize, NewDataSize: p.DataSize}
	if err := d.Store.Grow(dev, 0, p.DataSize, words, rec, apply); err != nil {
		return fmt.Errorf("resize: %w", err)
	}
	oldOff, oldSize := d.metaOff, d.metaSize
	d.metaOff, d.metaSize, d.DataSize, d.Resized = p.metaOff, p.metaSize, p.DataSize, nil
	if err := d.Region.Grow(int64(p.DataSize)); err != nil {
		return fmt.Errorf("resize: the metadata moved, but the data area did not grow: %w", err)
	}
	if err := d.Region.WriteZeroes(oldOff, oldSize); err != nil {
		return fmt.Errorf("resize: zeroing the old metadata area [%d, +%d): %w", oldOff, oldSize, err)
	}
	if err := d.Region.Sync(); err != nil {
		return fmt.Errorf("resize: sync after zeroing the old metadata area: %w", err)
	}
	return nil
}
