package storage

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"

	"github.com/georepl/georepl/core"
	"github.com/georepl/georepl/core/meta"
	"github.com/georepl/georepl/kmod"
)

// Consistent resync: while this node is a sync target its data must stay
// a crash-consistent image of some earlier moment, although the resync
// writes blocks out of order (bitmap order) and replicated writes keep
// arriving. The engine marks the start of a resync by persisting the disk
// Inconsistent; from then until it persists anything else, UndoGuard saves
// the old content of every block before its first overwrite in the undo
// log (meta.UndoLog), durably. The image from before the resync is then
// the data with every saved block written back: a rollback, done at attach
// (Open with rollBack, which the driver asks for when the operator
// promotes the node without its source: georepl primary --force).
//
// When the undo log is full the session is marked exhausted, durably,
// before the first overwrite it cannot save: from then on the node is an
// ordinary (DRBD-like) Inconsistent sync target until the resync is done.

// UndoGuard is the copy-before-write layer over the data area. Open makes
// it; the driver starts and ends its sessions (Begin, End) around the
// persists of the disk state, and writes through an UndoRegion. Its
// methods are safe for concurrent use.
type UndoGuard struct {
	log  *meta.UndoLog
	file *kmod.Backing
	path string
	data *kmod.Region
	bs   uint64
	size uint64 // data bytes
	// warn reports, once per session, that the log ran out of space.
	warn func(detail string)

	// active mirrors the log's state being UndoActive, so that writes
	// outside a session (a Primary's, a Secondary's in sync) take no lock.
	active atomic.Bool

	mu    sync.Mutex   // serialises saves and state changes
	saved *core.Bitmap // bit per block: saved in this session
	// writes in progress through UndoRegion, and whether new ones are
	// refused (the disk is closing).
	busy   sync.WaitGroup
	frozen bool
}

// UndoStatus is the consistent-resync part of `georepl status`: the undo
// log's path, state (idle, active, exhausted, rolling back), the bytes its
// records use and its capacity, and the blocks saved in the session.
type UndoStatus struct {
	Path          string `json:"path"`
	State         string `json:"state"`
	UsedBytes     int64  `json:"used_bytes"`
	CapacityBytes int64  `json:"capacity_bytes"`
	SavedBlocks   uint64 `json:"saved_blocks"`
}

// openUndo opens (creating it if missing or empty) the undo log of node
// self at path, of capacity bytes, for data of dataSize bytes.
func openUndo(path string, capacity int64, resource string, nodeID uint8, dataSize uint64, blockSize uint32) (*meta.UndoLog, *kmod.Backing, error) {
	fresh := false
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		if err := kmod.CreateFile(path, capacity); err != nil {
			return nil, nil, fmt.Errorf("creating the resync undo log: %w", err)
		}
		fresh = true
	}
	f, err := kmod.OpenBacking(path)
	if err != nil {
		return nil, nil, fmt.Errorf("resync undo log: %w", err)
	}
	if f.Size() == 0 {
		fresh = true
	}
	if fresh {
		u, err := meta.CreateUndo(f, capacity, resource, nodeID, dataSize, blockSize, false)
		if err != nil {
			f.Close()
			return nil, nil, fmt.Errorf("resync undo log %s: %w", path, err)
		}
		return u, f, nil
	}
	u, err := meta.OpenUndo(f)
	if err != nil {
		f.Close()
		if errors.Is(err, meta.ErrNoMetadata) {
			return nil, nil, fmt.Errorf("resync undo log %s: %w: the file holds something else; remove it (georepl creates it) or name another file in resync_undo", path, err)
		}
		return nil, nil, fmt.Errorf("resync undo log %s: %w; if no rollback is wanted, remove the file (the node then stays Inconsistent until its resync is done)", path, err)
	}
	if err := u.Check(resource, nodeID, dataSize, blockSize); err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("resync undo log %s: %w", path, err)
	}
	if h := u.Header(); h.State == meta.UndoIdle && h.Capacity != uint64(capacity) {
		// Idle: nothing to keep; follow the configured capacity. (A
		// session keeps the capacity it began with.)
		f.Close()
		if err := os.Truncate(path, capacity); err != nil {
			return nil, nil, fmt.Errorf("resizing the resync undo log %s to %d bytes: %w", path, capacity, err)
		}
		if f, err = kmod.OpenBacking(path); err != nil {
			return nil, nil, fmt.Errorf("resync undo log: %w", err)
		}
		if u, err = meta.CreateUndo(f, capacity, resource, nodeID, dataSize, blockSize, false); err != nil {
			f.Close()
			return nil, nil, fmt.Errorf("resync undo log %s: %w", path, err)
		}
	}
	return u, f, nil
}

// newUndoGuard returns the guard of undo log u (in file f, at path) over
// data, the data area it reads old blocks from.
func newUndoGuard(u *meta.UndoLog, f *kmod.Backing, path string, data *kmod.Region, dataSize uint64, blockSize uint32) (*UndoGuard, error) {
	g := &UndoGuard{log: u, file: f, path: path, data: data, bs: uint64(blockSize), size: dataSize,
		saved: core.NewBitmap((dataSize + uint64(blockSize) - 1) / uint64(blockSize))}
	g.active.Store(u.Header().State == meta.UndoActive)
	if st := u.Header().State; st == meta.UndoActive || st == meta.UndoExhausted {
		if err := u.Records(func(first uint64, d []byte) error {
			g.saved.SetRange(first, uint64(len(d))/g.bs)
			return nil
		}); err != nil {
			return nil, err
		}
	}
	return g, nil
}

// Begin starts a session if the superblock sb (before the persist that
// makes the disk Inconsistent) shows a consistent image to protect.
func (g *UndoGuard) Begin(sb meta.Superblock) (bool, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.log.Header().State != meta.UndoIdle {
		return false, nil // a session already runs: the resync continues
	}
	switch core.DiskState(sb.DiskState) {
	case core.Outdated, core.Consistent, core.UpToDate:
	default:
		return false, nil // no consistent image to keep
	}
	if err := g.log.Begin(NewUUID(), sb.DiskState, sb.Current, sb.History); err != nil {
		return false, err
	}
	g.saved.ClearRange(0, g.saved.Len())
	g.active.Store(true)
	return true, nil
}

// End forgets the session once the disk is no longer a sync target's.
func (g *UndoGuard) End() (bool, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.log.Header().State == meta.UndoIdle {
		return false, nil
	}
	g.active.Store(false)
	if err := g.log.End(); err != nil {
		return false, err
	}
	g.saved.ClearRange(0, g.saved.Len())
	return true, nil
}

// Path returns the undo log's path, for messages.
func (g *UndoGuard) Path() string { return g.path }

// Header returns the undo log's header as last written: the session's
// state and the generation ids of the image it keeps.
func (g *UndoGuard) Header() meta.UndoHeader { return g.log.Header() }

// SetWarn installs fn, which reports (once per session) that the log ran
// out of space. Call it before the first write through the guard.
func (g *UndoGuard) SetWarn(fn func(detail string)) { g.warn = fn }

// save writes the old content of the blocks of [off, off+length) not yet
// saved in this session to the undo log, durably, before the caller
// overwrites them. Outside a session it does nothing; when the log is
// full it marks the session exhausted (durably) and stops saving.
func (g *UndoGuard) save(off, length uint64) error {
	if length == 0 {
		return nil
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.log.Header().State != meta.UndoActive {
		return nil
	}
	first, end := off/g.bs, min((off+length+g.bs-1)/g.bs, (g.size+g.bs-1)/g.bs)
	for b := g.saved.NextClear(first); b < end; b = g.saved.NextClear(b) {
		run, ok := g.saved.NextSet(b)
		if !ok || run > end {
			run = end
		}
		buf := make([]byte, (run-b)*g.bs)
		if _, err := g.data.ReadAt(buf, int64(b*g.bs)); err != nil {
			return fmt.Errorf("reading old blocks [%d, +%d) for the resync undo log: %w", b*g.bs, len(buf), err)
		}
		err := g.log.Append(b, buf)
		if errors.Is(err, meta.ErrUndoFull) {
			if err := g.log.SetState(meta.UndoExhausted); err != nil {
				return fmt.Errorf("marking the resync undo log exhausted: %w", err)
			}
			g.active.Store(false)
			used, _ := g.log.Used()
			g.warn(fmt.Sprintf("consistent resync space exhausted (%d bytes of %s used): target is Inconsistent until the resync completes", used, g.path))
			return nil
		}
		if err != nil {
			return err
		}
		g.saved.SetRange(b, run-b)
	}
	return nil
}

// Status reports the undo log for `georepl status`.
func (g *UndoGuard) Status() *UndoStatus {
	g.mu.Lock()
	defer g.mu.Unlock()
	h := g.log.Header()
	used, free := g.log.Used()
	return &UndoStatus{Path: g.path, State: h.State.String(), UsedBytes: used, CapacityBytes: used + free + meta.UndoRecordsOffset,
		SavedBlocks: g.saved.Count()}
}

// Freeze refuses new writes and waits for those in progress.
func (g *UndoGuard) Freeze() {
	g.mu.Lock()
	g.frozen = true
	g.mu.Unlock()
	g.busy.Wait()
}

// enter admits one write; it fails once frozen.
func (g *UndoGuard) enter() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.frozen {
		return errors.New("the data area is closing")
	}
	g.busy.Add(1)
	return nil
}

// Area is the data area as one layer over it sees the next: the disk's
// region (GatedRegion), or a layer over it (the driver's activity-log
// region).
type Area interface {
	ReadAt(p []byte, off int64) (int, error)
	WriteAt(p []byte, off int64) (int, error)
	// WriteAtFUA writes p at off and makes it durable, as
	// kmod.Region.WriteAtFUA, its flush counted as a flush of the disk
	// (GatedRegion.WriteAtFUA).
	WriteAtFUA(p []byte, off int64) (int, error)
	WriteZeroes(off, length int64) error
	Punch(off, length int64) error
	Sync() error
}

// UndoRegion is the data area as the engine's local operations see it:
// every write, zeroing or trim first saves the blocks it overwrites (see
// UndoGuard) and then goes on to the Area below. Without an undo log it is
// that Area.
type UndoRegion struct {
	Area
	g *UndoGuard // nil: no undo log configured
}

// NewUndoRegion returns the data area below guarded by g (nil: no undo
// log configured).
func NewUndoRegion(below Area, g *UndoGuard) *UndoRegion {
	return &UndoRegion{Area: below, g: g}
}

func (d *UndoRegion) guard(off, length int64) (func(), error) {
	if d.g == nil || !d.g.active.Load() {
		return func() {}, nil
	}
	if err := d.g.enter(); err != nil {
		return nil, err
	}
	if err := d.g.save(uint64(off), uint64(length)); err != nil {
		d.g.busy.Done()
		return nil, err
	}
	return d.g.busy.Done, nil
}

// WriteAt saves the old blocks p overwrites, then writes p at off.
func (d *UndoRegion) WriteAt(p []byte, off int64) (int, error) {
	done, err := d.guard(off, int64(len(p)))
	if err != nil {
		return 0, err
	}
	defer done()
	return d.Area.WriteAt(p, off)
}

// WriteAtFUA saves the old blocks p overwrites, then writes p at off
// durably.
func (d *UndoRegion) WriteAtFUA(p []byte, off int64) (int, error) {
	done, err := d.guard(off, int64(len(p)))
	if err != nil {
		return 0, err
	}
	defer done()
	return d.Area.WriteAtFUA(p, off)
}

// WriteZeroes saves the old blocks of the range, then zeroes it.
func (d *UndoRegion) WriteZeroes(off, length int64) error {
	done, err := d.guard(off, length)
	if err != nil {
		return err
	}
	defer done()
	return d.Area.WriteZeroes(off, length)
}

// Punch saves the old blocks of the range, then trims it.
func (d *UndoRegion) Punch(off, length int64) error {
	done, err := d.guard(off, length)
	if err != nil {
		return err
	}
	defer done()
	return d.Area.Punch(off, length)
}
