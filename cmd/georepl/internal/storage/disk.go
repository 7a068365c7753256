package storage

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/georepl/georepl/core"
	"github.com/georepl/georepl/core/meta"
	"github.com/georepl/georepl/kmod"
)

// Device is a backing disk or an external metadata file: kmod.Backing, or
// a stand-in with the same contract (kmod.Store).
type Device interface {
	kmod.Store
	Close() error
}

// Config is where a node's disks for one resource are and what its
// metadata must say. The driver builds it from the configuration, with
// the defaults applied.
type Config struct {
	Resource  string
	Node      string // the node's name, for messages
	NodeID    uint8
	Slots     int    // per-peer bitmap slots of the metadata layout
	BlockSize uint32 // bytes per bitmap bit
	// Disk is the backing disk; MetaDisk the external metadata file, or
	// "" for metadata at the end of Disk.
	Disk, MetaDisk string
	// UndoLog is the consistent-resync undo log's path ("": none), of
	// UndoSize bytes when Open creates or resizes it.
	UndoLog  string
	UndoSize int64
	// Peers are the node ids of the other nodes: recovery marks for them
	// what an unclean shutdown or a rollback may have left different.
	Peers []core.NodeID
	// OpenDevice opens Disk and MetaDisk. (The undo log, a file Open
	// creates and resizes itself, is always opened with kmod.)
	OpenDevice func(path string) (Device, error)
	// Faults, if not nil, is armed on the backing disk (a test facility:
	// see kmod.Faults).
	Faults *kmod.Faults
}

func (c *Config) internalMeta() bool { return c.MetaDisk == "" }

// MetaPlace names where the metadata of backing disk disk is, for
// messages: metaDisk, or disk itself ("").
func MetaPlace(disk, metaDisk string) string {
	if metaDisk == "" {
		return disk + " (internal)"
	}
	return metaDisk
}

// Disk is a node's backing disk for one resource, attached: the data area
// the application sees and the metadata, internal (at the end of the disk)
// or external (its own file), recovered from an unclean shutdown.
type Disk struct {
	Backing  Device
	MetaFile Device // nil for internal metadata
	// Region is the data area on the backing disk; its flushes go through
	// Gate.
	Region *GatedRegion
	// Gate is the one owner of the backing disk's flushes: every flush
	// of the data area and of internal metadata goes through it.
	Gate     *SyncGate
	Store    *meta.Store
	DataSize uint64
	// ALRecovered is the number of extents the activity log of an
	// unclean shutdown held, marked for every peer at attach.
	ALRecovered int
	// Undo is the consistent-resync undo log (nil: no undo log),
	// UndoRecovered what attach did with a session it found (empty:
	// none).
	Undo          *UndoGuard
	UndoRecovered string
	// Resized is the resize record of a resize the attach found
	// interrupted before its commit (nil: none): the disk is attached at
	// its old size, with its old metadata.
	Resized *meta.ResizeRecord

	// metaOff and metaSize are where internal metadata is on the backing
	// disk (metaSize 0 for external metadata).
	metaOff, metaSize int64
}

// layout is the node's disks, open.
type layout struct {
	dataSize          uint64
	metaDev           meta.Device
	metaOff           int64
	backing, metaFile Device
	// internalOff and internalSize locate internal metadata on backing;
	// resized is the record of a resize interrupted before its commit
	// that placed them at the old end (openLayout's followResize).
	internalOff, internalSize int64
	resized                   *meta.ResizeRecord
}

// cleanup is what a function opened so far, closed in reverse order if it
// fails.
type cleanup []func() error

func (c *cleanup) add(close func() error) { *c = append(*c, close) }

// onError closes everything added if *err is not nil; defer it.
func (c *cleanup) onError(err *error) {
	if *err == nil {
		return
	}
	for i := len(*c) - 1; i >= 0; i-- {
		(*c)[i]()
	}
}

// openLayout opens the node's disks. With followResize, internal metadata
// that is not at the end of the backing disk, where a resize record says
// that a resize was interrupted before its commit, is taken from where the
// record says (the old end): see meta.Store.Grow.
func openLayout(c *Config, followResize bool) (_ *layout, err error) {
	var opened cleanup
	defer opened.onError(&err)
	b, err := c.OpenDevice(c.Disk)
	if err != nil {
		return nil, err
	}
	opened.add(b.Close)
	if err := armFaults(b, c.Faults); err != nil {
		return nil, err
	}
	if c.internalMeta() {
		dataSize, metaOff, metaSize, err := meta.InternalLayout(b.Size(), c.Slots, c.BlockSize)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", c.Disk, err)
		}
		l := &layout{dataSize: dataSize, metaDev: kmod.NewRegion(b, metaOff, metaSize), backing: b,
			internalOff: metaOff, internalSize: metaSize}
		if followResize {
			if err := l.followResize(c); err != nil {
				return nil, err
			}
		}
		return l, nil
	}
	mf, err := c.OpenDevice(c.MetaDisk)
	if err != nil {
		return nil, err
	}
	opened.add(mf.Close)
	dataSize := uint64(b.Size()) / uint64(c.BlockSize) * uint64(c.BlockSize)
	if need := meta.ExternalSize(dataSize, c.Slots, c.BlockSize); mf.Size() < need {
		return nil, fmt.Errorf("external metadata file %s has %d bytes; %d are needed for %d bytes of data", c.MetaDisk, mf.Size(), need, dataSize)
	}
	return &layout{dataSize: dataSize, metaDev: mf, backing: b, metaFile: mf}, nil
}

// followResize moves l to the old end of the backing disk if the
// metadata at its end is missing or damaged and a resize record there
// says a resize was interrupted.
func (l *layout) followResize(c *Config) error {
	_, err := meta.Open(l.metaDev, l.metaOff)
	if err == nil || !(errors.Is(err, meta.ErrNoMetadata) || errors.Is(err, meta.ErrCorrupt)) {
		return nil
	}
	rec, ok, rerr := meta.ReadResizeRecord(l.metaDev, l.metaOff)
	if rerr != nil {
		return fmt.Errorf("%s: %w", c.Disk, rerr)
	}
	if !ok {
		return nil
	}
	dataSize, metaOff, metaSize, err := meta.InternalLayout(rec.OldDeviceSize, c.Slots, c.BlockSize)
	if err != nil || dataSize != rec.OldDataSize {
		return fmt.Errorf("%s: the resize record at the end of the disk names an old size of %d bytes, which does not hold %d bytes of data (%v)",
			c.Disk, rec.OldDeviceSize, rec.OldDataSize, err)
	}
	l.dataSize, l.metaDev, l.internalOff, l.internalSize, l.resized = dataSize, kmod.NewRegion(l.backing, metaOff, metaSize), metaOff, metaSize, &rec
	return nil
}

func (l *layout) Close() {
	l.backing.Close()
	if l.metaFile != nil {
		l.metaFile.Close()
	}
}

// faultInjector is the ability of kmod.Backing that Config.Faults uses.
type faultInjector interface {
	InjectFaults(f *kmod.Faults)
}

// armFaults arms faults (if not nil) on dev.
func armFaults(dev Device, faults *kmod.Faults) error {
	if faults == nil {
		return nil
	}
	fi, ok := dev.(faultInjector)
	if !ok {
		return fmt.Errorf("cannot inject I/O faults into %s: it is not a kmod backing store", dev.Path())
	}
	fi.InjectFaults(faults)
	return nil
}

// Open attaches the disk: it opens the backing disk, the metadata and the
// undo log, checks that the metadata is this node's for this resource,
// and recovers what an unclean shutdown left (recoverUndo, then
// recoverActivityLog) before anything else may write. rollBack asks to
// restore, from the undo log, the image this sync target had before its
// resync (the operator promotes it without its source): it fails unless a
// session can do it. On error nothing stays open.
func Open(c *Config, rollBack bool) (_ *Disk, err error) {
	var opened cleanup
	defer opened.onError(&err)
	l, err := openLayout(c, true)
	if err != nil {
		return nil, err
	}
	opened.add(func() error { l.Close(); return nil })
	region := &GatedRegion{Region: kmod.NewRegion(l.backing, 0, int64(l.dataSize))}
	region.Gate = NewSyncGate(region.Region)
	metaDev := l.metaDev
	if internal, ok := metaDev.(*kmod.Region); ok {
		// A region of the backing disk: its flushes flush the data too.
		metaDev = &GatedMeta{Region: internal, Gate: region.Gate}
	}
	store, err := meta.Open(metaDev, l.metaOff)
	if err != nil {
		if c.internalMeta() && errors.Is(err, meta.ErrNoMetadata) {
			// Not meta's own advice (create-md) first: on a disk that grew
			// while the resource was down, that would throw away the
			// metadata that is still at the old end.
			return nil, fmt.Errorf("resource %s: %w in the last %d bytes of %s (%d bytes), where its internal metadata belongs. "+
				"If %s grew since the metadata was written, the metadata is still at its old end: give the disk its old size back, "+
				"bring the resource up, grow the disk again and run georepl resize while the resource is up. "+
				"If the disk is new, initialise it with georepl create-md",
				c.Resource, meta.ErrNoMetadata, l.internalSize, c.Disk, l.backing.Size(), c.Disk)
		}
		return nil, fmt.Errorf("metadata of resource %s on %s: %w", c.Resource, MetaPlace(c.Disk, c.MetaDisk), err)
	}
	if err := store.Check(c.Resource, c.NodeID, l.dataSize, c.BlockSize); err != nil {
		return nil, fmt.Errorf("metadata on %s: %w", MetaPlace(c.Disk, c.MetaDisk), err)
	}
	var (
		undoLog       *meta.UndoLog
		undoFile      *kmod.Backing
		undoRecovered string
	)
	if c.UndoLog != "" {
		undoLog, undoFile, err = openUndo(c.UndoLog, c.UndoSize, c.Resource, c.NodeID, l.dataSize, c.BlockSize)
		if err != nil {
			return nil, err
		}
		opened.add(undoFile.Close)
		if rollBack {
			if err := requestRollback(store, undoLog); err != nil {
				return nil, err
			}
		}
		if undoRecovered, err = recoverUndo(store, undoLog, region, c.Peers); err != nil {
			return nil, fmt.Errorf("resync undo log %s: %w", c.UndoLog, err)
		}
	} else if rollBack {
		return nil, fmt.Errorf("node %s keeps no resync undo log (resync_undo = \"none\"): nothing to roll back", c.Node)
	}
	recovered, err := recoverActivityLog(store, c.Peers, region.Sync)
	if err != nil {
		return nil, fmt.Errorf("activity log on %s: %w", MetaPlace(c.Disk, c.MetaDisk), err)
	}
	d := &Disk{
		Backing: l.backing, MetaFile: l.metaFile,
		Region:        region,
		Gate:          region.Gate,
		Store:         store,
		DataSize:      l.dataSize,
		ALRecovered:   recovered,
		UndoRecovered: undoRecovered,
		Resized:       l.resized,
		metaOff:       l.internalOff,
		metaSize:      l.internalSize,
	}
	if undoLog != nil {
		if d.Undo, err = newUndoGuard(undoLog, undoFile, c.UndoLog, region.Region, l.dataSize, c.BlockSize); err != nil {
			return nil, fmt.Errorf("resync undo log %s: %w", c.UndoLog, err)
		}
	}
	return d, nil
}

// Persist writes the engine's durable state into the superblock.
func (d *Disk) Persist(p *core.Persistent) error {
	return d.Store.UpdateSuperblock(func(sb *meta.Superblock) { ApplyPersistent(sb, p) })
}

// ApplyPersistent writes the engine's durable state p into superblock sb:
// what Persist commits, and what a resize commits with the grown
// metadata.
func ApplyPersistent(sb *meta.Superblock, p *core.Persistent) {
	sb.DiskState = uint8(p.Disk)
	sb.Primary = p.Primary
	sb.Current = p.Current
	sb.History = p.History
	sb.Promoted = p.Promoted
	sb.Term = p.Term
	for i := range sb.BitmapUUID {
		sb.BitmapUUID[i] = p.BitmapUUID[core.NodeID(i)]
	}
}

// Close closes the disks and the undo log, flushing nothing: the driver
// flushes what it must first (the data, with its activity log) and stops
// the writes (UndoGuard.Freeze).
func (d *Disk) Close() error {
	if d.Undo != nil {
		defer d.Undo.file.Close()
	}
	err := d.Backing.Close()
	if d.MetaFile != nil {
		err = errors.Join(err, d.MetaFile.Close())
	}
	return err
}

// CreateMetadata initialises the metadata, as `georepl create-md` does.
// The disk starts Inconsistent with generation ids zero ("just created");
// force overwrites existing metadata.
func CreateMetadata(c *Config, force bool) (*meta.Superblock, error) {
	l, err := openLayout(c, false)
	if err != nil {
		return nil, err
	}
	defer l.Close()
	store, err := meta.Create(l.metaDev, l.metaOff, meta.Params{
		Resource:  c.Resource,
		NodeID:    c.NodeID,
		Slots:     c.Slots,
		DataSize:  l.dataSize,
		BlockSize: c.BlockSize,
		DiskState: uint8(core.Inconsistent),
	}, force)
	if err != nil {
		return nil, fmt.Errorf("creating metadata on %s: %w", MetaPlace(c.Disk, c.MetaDisk), err)
	}
	sb := store.Superblock()
	return &sb, nil
}

// DumpMetadata prints the metadata offline (the daemon must not have the
// disk open).
func DumpMetadata(w io.Writer, c *Config, asJSON bool) error {
	l, err := openLayout(c, true)
	if err != nil {
		return err
	}
	defer l.Close()
	store, err := meta.Open(l.metaDev, l.metaOff)
	if err != nil {
		return fmt.Errorf("metadata of resource %s on %s: %w", c.Resource, MetaPlace(c.Disk, c.MetaDisk), err)
	}
	return DumpStore(w, store, asJSON)
}

// DumpStore prints store as text, or as its JSON summary.
func DumpStore(w io.Writer, store *meta.Store, asJSON bool) error {
	if asJSON {
		sum, err := store.Summary()
		if err != nil {
			return err
		}
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(sum)
	}
	return store.Dump(w, func(v uint8) string { return core.DiskState(v).String() })
}

// NewUUID draws a generation id: random, never 0 (which means "just
// created").
func NewUUID() uint64 {
	var b [8]byte
	for {
		if _, err := rand.Read(b[:]); err != nil {
			panic("georepl: no randomness: " + err.Error())
		}
		if v := binary.LittleEndian.Uint64(b[:]); v != 0 {
			return v
		}
	}
}
