package node

import "github.com/georepl/georepl/cmd/georepl/internal/storage"

// reportSyncFailures tells the engine of g's failures that no engine
// operation reported (Engine.FlushFailed), and performs what that asks:
// the marks are durable, or the disk detached, before the resource's next
// holder of the engine can look. Run on a goroutine of its own: a failure
// may be found with the engine's lock held (a metadata write).
func (r *resource) reportSyncFailures(g *storage.SyncGate) {
	r.emu.Lock()
	if r.stopped || r.engine == nil || r.st == nil || r.st.Gate != g {
		// Down: the failures stay unhandled, so the last flush fails
		// and the activity log keeps its extents.
		r.unlockEngine()
		return
	}
	eng := r.engine
	for _, f := range g.TakeUnreported() {
		r.log.Error("a flush of the data disk failed outside the engine's operations; the engine handles it as a failed flush", "err", f)
		eng.FlushFailed(f)
	}
	r.process()
	w := r.takeWork()
	r.unlockEngine()
	r.exec.carryOut(w, loopHolder)
}
