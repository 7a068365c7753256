package node

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/georepl/georepl/core"
	"github.com/georepl/georepl/core/meta"
	"github.com/georepl/georepl/kmod"
)

// Consistent resync: while this node is a sync target its data must stay
// a crash-consistent image of some earlier moment, although the resync
// writes blocks out of order (bitmap order) and replicated writes keep
// arriving. The engine marks the start of a resync by persisting the disk
// Inconsistent; from then until it persists anything else, undoGuard saves
// the old content of every block before its first overwrite in the undo
// log (meta.UndoLog), durably. The image from before the resync is then
// the data with every saved block written back: a rollback, done at attach
// (rollBackUndo) when the operator promotes the node without its source
// (resource.Primary with force).
//
// When the undo log is full the session is marked exhausted, durably,
// before the first overwrite it cannot save: from then on the node is an
// ordinary (DRBD-like) Inconsistent sync target until the resync is done.

// undoGuard is the copy-before-write layer over the data area.
type undoGuard struct {
	log  *meta.UndoLog
	file *kmod.Backing
	path string
	data *alRegion
	bs   uint64
	size uint64 // data bytes
	// warn reports, once per session, that the log ran out of space.
	warn func(detail string)

	// active mirrors the log's state being UndoActive, so that writes
	// outside a session (a Primary's, a Secondary's in sync) take no lock.
	active atomic.Bool

	mu    sync.Mutex   // serialises saves and state changes
	saved *core.Bitmap // bit per block: saved in this session
	// writes in progress through undoRegion, and whether new ones are
	// refused (the storage is closing).
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

func newUndoGuard(u *meta.UndoLog, f *kmod.Backing, path string, data *alRegion, dataSize uint64, blockSize uint32) (*undoGuard, error) {
	g := &undoGuard{log: u, file: f, path: path, data: data, bs: uint64(blockSize), size: dataSize,
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

// begin starts a session if the superblock sb (before the persist that
// makes the disk Inconsistent) shows a consistent image to protect.
func (g *undoGuard) begin(sb meta.Superblock) (bool, error) {
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
	if err := g.log.Begin(newUUID(), sb.DiskState, sb.Current, sb.History); err != nil {
		return false, err
	}
	g.saved.ClearRange(0, g.saved.Len())
	g.active.Store(true)
	return true, nil
}

// end forgets the session once the disk is no longer a sync target's.
func (g *undoGuard) end() (bool, error) {
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

// save writes the old content of the blocks of [off, off+length) not yet
// saved in this session to the undo log, durably, before the caller
// overwrites them. Outside a session it does nothing; when the log is
// full it marks the session exhausted (durably) and stops saving.
func (g *undoGuard) save(off, length uint64) error {
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
		if _, err := g.data.Region.ReadAt(buf, int64(b*g.bs)); err != nil {
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

func (g *undoGuard) status() *UndoStatus {
	g.mu.Lock()
	defer g.mu.Unlock()
	h := g.log.Header()
	used, free := g.log.Used()
	return &UndoStatus{Path: g.path, State: h.State.String(), UsedBytes: used, CapacityBytes: used + free + meta.UndoRecordsOffset,
		SavedBlocks: g.saved.Count()}
}

// freeze refuses new writes and waits for those in progress.
func (g *undoGuard) freeze() {
	g.mu.Lock()
	g.frozen = true
	g.mu.Unlock()
	g.busy.Wait()
}

// enter admits one write; it fails once frozen.
func (g *undoGuard) enter() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.frozen {
		return errors.New("the data area is closing")
	}
	g.busy.Add(1)
	return nil
}

// undoRegion is the data area as the engine's local operations see it:
// every write, zeroing or trim first saves the blocks it overwrites (see
// undoGuard). Without an undo log it is the activity-log region.
type undoRegion struct {
	*alRegion
	g *undoGuard // nil: no undo log configured
}

func (d *undoRegion) guard(off, length int64) (func(), error) {
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

func (d *undoRegion) WriteAt(p []byte, off int64) (int, error) {
	done, err := d.guard(off, int64(len(p)))
	if err != nil {
		return 0, err
	}
	defer done()
	return d.alRegion.WriteAt(p, off)
}

func (d *undoRegion) WriteZeroes(off, length int64) error {
	done, err := d.guard(off, length)
	if err != nil {
		return err
	}
	defer done()
	return d.alRegion.WriteZeroes(off, length)
}

func (d *undoRegion) Punch(off, length int64) error {
	done, err := d.guard(off, length)
	if err != nil {
		return err
	}
	defer done()
	return d.alRegion.Punch(off, length)
}

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
	for _, p := range peers {
		if int(p) >= sb.Slots || p == core.NodeID(sb.NodeID) {
			continue
		}
		words, err := store.ReadBitmap(int(p))
		if err != nil {
			return 0, err
		}
		for i, w := range done.Words() {
			words[i] |= w
		}
		if err := store.WriteBitmap(int(p), words); err != nil {
			return 0, err
		}
	}
	if err := store.UpdateSuperblock(func(s *meta.Superblock) {
		s.DiskState = uint8(core.Outdated)
		s.Primary = false
		s.Current, s.History = h.Current, h.History
		for _, p := range peers {
			if int(p) < len(s.BitmapUUID) && p != core.NodeID(s.NodeID) && s.BitmapUUID[p] == 0 {
				s.BitmapUUID[p] = h.Current
			}
		}
	}); err != nil {
		return 0, err
	}
	if err := u.End(); err != nil {
		return 0, err
	}
	return done.Count(), nil
}

// persistWithUndo writes the engine's durable state, starting the undo
// log's session before the disk is first persisted Inconsistent (the
// resync's writes follow that Ready) and ending it once the disk is
// persisted as anything else (the resync is done, or the node was
// promoted with force) but Diskless: a detached disk's session is
// discarded at its next attach, if its disk is no longer Inconsistent.
func (r *resource) persistWithUndo(p *core.Persistent) error {
	g := r.st.undo
	if g != nil && p.Disk == core.Inconsistent {
		sb := r.st.store.Superblock()
		began, err := g.begin(sb)
		if err != nil {
			return fmt.Errorf("starting the resync undo log %s: %w", g.path, err)
		}
		if began {
			r.undoEvent(fmt.Sprintf("consistent resync: old blocks are saved in %s before their first overwrite; the image of generation %X can be restored", g.path, sb.Current), false)
		}
	}
	if err := r.st.persist(p); err != nil {
		return err
	}
	if g != nil && p.Disk != core.Inconsistent && p.Disk != core.Diskless {
		ended, err := g.end()
		if err != nil {
			return fmt.Errorf("ending the resync undo log %s: %w", g.path, err)
		}
		if ended {
			r.undoEvent(fmt.Sprintf("consistent resync: undo log discarded, the disk is %v", p.Disk), false)
		}
	}
	return nil
}

// undoEvent logs and publishes what the undo log did; warn for what the
// operator must know (space exhausted).
func (r *resource) undoEvent(msg string, warn bool) {
	if warn {
		r.log.Warn(msg)
	} else {
		r.log.Info(msg)
	}
	r.d.events.publish(Event{Time: time.Now().UTC(), Resource: r.cfg.Name, Node: r.self.Name, What: "resync-undo", Detail: msg})
}

// startUndo reports what attach did with an undo session and routes the
// space warning to the events.
func (r *resource) startUndo(st *storage) {
	if st.undo == nil {
		return
	}
	st.undo.warn = func(msg string) { r.undoEvent(msg, true) }
	if st.undoRecovered != "" {
		r.undoEvent("resync undo log at attach: "+st.undoRecovered, false)
	}
}

// canRollBack reports, on the loop, whether Primary with force rolls this
// node back first: a Secondary whose disk is Inconsistent, with an active
// undo session, and no resync into it running nor a Primary connected
// (the engine refuses those promotions with their own reasons).
func (r *resource) canRollBack() bool {
	if r.st.undo == nil || r.st.undo.log.Header().State != meta.UndoActive {
		return false
	}
	es := r.engine.Status()
	if es.Role == core.Primary || es.Disk != core.Inconsistent {
		return false
	}
	for _, p := range es.Peers {
		if p.Conn == core.Connected && (p.Repl == core.SyncTarget || p.Role == core.Primary) {
			return false
		}
	}
	return true
}

// undoHint explains, after a refused promotion of an Inconsistent disk,
// what the undo log offers.
func (r *resource) undoHint() string {
	if r.st.undo == nil || r.engine.Status().Disk != core.Inconsistent {
		return ""
	}
	h := r.st.undo.log.Header()
	switch h.State {
	case meta.UndoActive:
		return fmt.Sprintf("; its resync undo log can restore the consistent image of generation %X from before the resync: `georepl primary --force %s` rolls back to it and promotes (once the resync source is gone)", h.Current, r.cfg.Name)
	case meta.UndoExhausted:
		return "; the resync undo log ran out of space during the resync, so no consistent image is left: --force would promote an inconsistent image (wait for the resync to finish instead if you can)"
	}
	return ""
}

// rollBackAndPromote takes the resource down, brings it up again rolling
// back to the image from before the resync, and promotes it with force
// (that image is older than its lost source's: Outdated).
func (r *resource) rollBackAndPromote() error {
	if err := r.forceDown(); err != nil {
		r.log.Warn("taking the resource down for the rollback", "err", err)
	}
	r.rollBack = true
	err := r.Up()
	r.rollBack = false
	if err != nil {
		return fmt.Errorf("cannot make %s Primary on %s: rolling back to the image from before the resync failed: %w", r.cfg.Name, r.self.Name, err)
	}
	return r.call(func() error {
		if err := r.engine.Promote(true); err != nil {
			return fmt.Errorf("cannot make %s Primary on %s after rolling back to the image from before the resync: %w", r.cfg.Name, r.self.Name, err)
		}
		r.process()
		r.publishStatus()
		return r.failed
	})
}
