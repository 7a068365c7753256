package node

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync/atomic"

	"github.com/georepl/georepl/cmd/georepl/internal/storage"
	"github.com/georepl/georepl/configs"
	"github.com/georepl/georepl/core"
	"github.com/georepl/georepl/core/meta"
	"github.com/georepl/georepl/kmod"
)

// localDisk is a node's backing disk for one resource: the data area the
// application sees and the metadata, internal (at the end of the disk) or
// external (its own file).
type localDisk struct {
	backing  Device
	metaFile Device      // nil for internal metadata
	data     *undoRegion // every write activates its extents (and saves old blocks during a resync) first
	// sync is the one owner of the backing disk's flushes: every flush
	// of the data area and of internal metadata goes through it.
	sync     *storage.SyncGate
	store    *meta.Store
	dataSize uint64
	al       *activityLog
	// alRecovered is the number of extents the activity log of an
	// unclean shutdown held, marked for every peer at attach.
	alRecovered int
	// detached is set once the engine detached the disk after an I/O
	// error (resource.noteDetached): reads go to the peers, and the
	// metadata is written only on a best-effort basis.
	detached atomic.Bool
	// undo is the consistent-resync undo log (nil: resync_undo = "none"),
	// undoRecovered what attach did with a session it found (empty:
	// none).
	undo          *undoGuard
	undoRecovered string
}

// defaultALExtents is the activity log's capacity when the configuration
// leaves it 0 (configurations built in code rather than loaded).
const defaultALExtents = 1024

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

type layout struct {
	dataSize          uint64
	metaDev           meta.Device
	metaOff           int64
	backing, metaFile Device
}

// openLayout opens the node's disks with opts; faults, if not nil, is
// armed on the backing disk (a test facility, see Daemon.InjectIOFaults).
func openLayout(rc *configs.Resource, self *configs.Node, opts Options, faults *kmod.Faults) (*layout, error) {
	b, err := opts.openDevice(self.Disk)
	if err != nil {
		return nil, err
	}
	if err := armFaults(b, faults); err != nil {
		b.Close()
		return nil, err
	}
	bs := uint32(rc.Disk.BlockSize)
	slots := bitmapSlots(rc)
	if self.MetaDisk == "" || self.MetaDisk == "internal" {
		dataSize, metaOff, metaSize, err := meta.InternalLayout(b.Size(), slots, bs)
		if err != nil {
			b.Close()
			return nil, fmt.Errorf("%s: %w", self.Disk, err)
		}
		return &layout{dataSize: dataSize, metaDev: kmod.NewRegion(b, metaOff, metaSize), backing: b}, nil
	}
	mf, err := opts.openDevice(self.MetaDisk)
	if err != nil {
		b.Close()
		return nil, err
	}
	dataSize := uint64(b.Size()) / uint64(bs) * uint64(bs)
	if need := meta.ExternalSize(dataSize, slots, bs); mf.Size() < need {
		b.Close()
		mf.Close()
		return nil, fmt.Errorf("external metadata file %s has %d bytes; %d are needed for %d bytes of data", self.MetaDisk, mf.Size(), need, dataSize)
	}
	return &layout{dataSize: dataSize, metaDev: mf, backing: b, metaFile: mf}, nil
}

func (l *layout) Close() {
	l.backing.Close()
	if l.metaFile != nil {
		l.metaFile.Close()
	}
}

// openStorage attaches the disk. rollBack asks to restore, from the undo
// log, the image this sync target had before its resync (the operator
// promotes it without its source): it fails unless a session can do it.
func openStorage(rc *configs.Resource, self *configs.Node, opts Options, faults *kmod.Faults, rollBack bool) (*localDisk, error) {
	l, err := openLayout(rc, self, opts, faults)
	if err != nil {
		return nil, err
	}
	region := &storage.GatedRegion{Region: kmod.NewRegion(l.backing, 0, int64(l.dataSize))}
	region.Gate = storage.NewSyncGate(region.Region)
	metaDev := l.metaDev
	if internal, ok := metaDev.(*kmod.Region); ok {
		// A region of the backing disk: its flushes flush the data too.
		metaDev = &storage.GatedMeta{Region: internal, Gate: region.Gate}
	}
	store, err := meta.Open(metaDev, l.metaOff)
	if err != nil {
		l.Close()
		return nil, fmt.Errorf("metadata of resource %s on %s: %w", rc.Name, metaPlace(self), err)
	}
	if err := store.Check(rc.Name, uint8(self.ID), l.dataSize, uint32(rc.Disk.BlockSize)); err != nil {
		l.Close()
		return nil, fmt.Errorf("metadata on %s: %w", metaPlace(self), err)
	}
	var peers []core.NodeID
	for _, n := range rc.Peers(self.Name) {
		peers = append(peers, core.NodeID(n.ID))
	}
	var (
		undoLog       *meta.UndoLog
		undoFile      *kmod.Backing
		undoRecovered string
	)
	if self.ResyncUndo != "" && self.ResyncUndo != configs.ResyncUndoNone {
		size := rc.Disk.ResyncUndoSize
		if size == 0 {
			size = defaultResyncUndoSize
		}
		undoLog, undoFile, err = openUndo(self.ResyncUndo, size, rc.Name, uint8(self.ID), l.dataSize, uint32(rc.Disk.BlockSize))
		if err != nil {
			l.Close()
			return nil, err
		}
		if rollBack {
			if err := requestRollback(store, undoLog); err != nil {
				l.Close()
				undoFile.Close()
				return nil, err
			}
		}
		if undoRecovered, err = recoverUndo(store, undoLog, region, peers); err != nil {
			l.Close()
			undoFile.Close()
			return nil, fmt.Errorf("resync undo log %s: %w", self.ResyncUndo, err)
		}
	} else if rollBack {
		l.Close()
		return nil, fmt.Errorf("node %s keeps no resync undo log (resync_undo = \"none\"): nothing to roll back", self.Name)
	}
	recovered, err := recoverActivityLog(store, peers, region.Sync)
	if err != nil {
		l.Close()
		if undoFile != nil {
			undoFile.Close()
		}
		return nil, fmt.Errorf("activity log on %s: %w", metaPlace(self), err)
	}
	capacity := rc.Disk.ALExtents
	if capacity == 0 {
		capacity = defaultALExtents
	}
	al := newActivityLog(store, region.Gate, capacity)
	st := &localDisk{
		backing: l.backing, metaFile: l.metaFile,
		data:          &undoRegion{alRegion: &alRegion{GatedRegion: region, al: al}},
		sync:          region.Gate,
		store:         store,
		dataSize:      l.dataSize,
		al:            al,
		alRecovered:   recovered,
		undoRecovered: undoRecovered,
	}
	if undoLog != nil {
		g, err := newUndoGuard(undoLog, undoFile, self.ResyncUndo, st.data.alRegion, l.dataSize, uint32(rc.Disk.BlockSize))
		if err != nil {
			l.Close()
			undoFile.Close()
			return nil, fmt.Errorf("resync undo log %s: %w", self.ResyncUndo, err)
		}
		st.undo, st.data.g = g, g
	}
	return st, nil
}

// defaultResyncUndoSize is the undo log's capacity when the configuration
// leaves it 0 (configurations built in code rather than loaded).
const defaultResyncUndoSize = 1 << 30

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

func metaPlace(self *configs.Node) string {
	if self.MetaDisk == "" || self.MetaDisk == "internal" {
		return self.Disk + " (internal)"
	}
	return self.MetaDisk
}

// persist writes the engine's durable state into the superblock.
func (s *localDisk) persist(p *core.Persistent) error {
	return s.store.UpdateSuperblock(func(sb *meta.Superblock) {
		sb.DiskState = uint8(p.Disk)
		sb.Primary = p.Primary
		sb.Current = p.Current
		sb.History = p.History
		sb.Promoted = p.Promoted
		for i := range sb.BitmapUUID {
			sb.BitmapUUID[i] = p.BitmapUUID[core.NodeID(i)]
		}
	})
}

// Close flushes the data, retires the activity log's settled extents
// (empty after a clean shutdown: see activityLog.close) and closes the
// disks.
func (s *localDisk) Close() error {
	if s.undo != nil {
		s.undo.freeze()
		defer s.undo.file.Close()
	}
	if s.detached.Load() {
		// Nothing on a detached disk counts any more: just let it go.
		_, _ = s.al.close(false)
		err := s.backing.Close()
		if s.metaFile != nil {
			err = errors.Join(err, s.metaFile.Close())
		}
		return err
	}
	// The activity log flushes the data and retires what the flush
	// covers: a failed flush retires nothing, nor does one while a failure
	// is not handled (the engine is stopped: none will be).
	_, err := s.al.close(true)
	err = errors.Join(err, s.backing.Close())
	if s.metaFile != nil {
		err = errors.Join(err, s.metaFile.Close())
	}
	return err
}

// CreateMetadata initialises the metadata of resource rc for node self, as
// `georepl create-md` does. The disk starts Inconsistent with generation
// ids zero ("just created"); force overwrites existing metadata.
func CreateMetadata(rc *configs.Resource, self *configs.Node, force bool) (*meta.Superblock, error) {
	l, err := openLayout(rc, self, Options{}, nil)
	if err != nil {
		return nil, err
	}
	defer l.Close()
	store, err := meta.Create(l.metaDev, l.metaOff, meta.Params{
		Resource:  rc.Name,
		NodeID:    uint8(self.ID),
		Slots:     bitmapSlots(rc),
		DataSize:  l.dataSize,
		BlockSize: uint32(rc.Disk.BlockSize),
		DiskState: uint8(core.Inconsistent),
	}, force)
	if err != nil {
		return nil, fmt.Errorf("creating metadata on %s: %w", metaPlace(self), err)
	}
	sb := store.Superblock()
	return &sb, nil
}

// DumpMetadata prints the metadata of resource rc on node self, offline
// (the daemon must not have the disk open).
func DumpMetadata(w io.Writer, rc *configs.Resource, self *configs.Node, asJSON bool) error {
	l, err := openLayout(rc, self, Options{}, nil)
	if err != nil {
		return err
	}
	defer l.Close()
	store, err := meta.Open(l.metaDev, l.metaOff)
	if err != nil {
		return fmt.Errorf("metadata of resource %s on %s: %w", rc.Name, metaPlace(self), err)
	}
	return dumpStore(w, store, asJSON)
}

func dumpStore(w io.Writer, store *meta.Store, asJSON bool) error {
	if asJSON {
		sum, err := store.Summary()
		if err != nil {
			return err
		}
		return writeJSON(w, sum)
	}
	return store.Dump(w, func(v uint8) string { return core.DiskState(v).String() })
}

func newUUID() uint64 {
	var b [8]byte
	for {
		if _, err := rand.Read(b[:]); err != nil {
			panic("georepl: no randomness: " + err.Error())
		}
		// 0 means "just created" and must never be drawn.
		if v := binary.LittleEndian.Uint64(b[:]); v != 0 {
			return v
		}
	}
}
