package core

import (
	"fmt"
	"time"
)

// Resync pacing. The engine has no clock: the driver reports the passage
// of time with Tick, and the engine keeps, per peer, a token bucket that
// resync data reads spend (checksum reads send only digests and are not
// paced). The bucket fills at the peer's resync limit:
//
//   - PeerConfig.ResyncRate caps it (0: no cap);
//   - while the application writes to the peer, the controller caps it
//     further at (1 - ResyncMinAppShare) of the link's capacity, so that
//     the application keeps at least that share of the link.
//
// The capacity is the highest delivery rate (application plus resync
// bytes acknowledged per second, over a measurement period of
// pacePeriod) seen on the connection. It is a maximum, not an average, so
// that it does not shrink while the controller holds the resync back;
// it is forgotten when the connection is lost. The application counts as
// writing when it sent data to the peer during the last period.
//
// Without a limit (no ResyncRate, and the controller idle or off), the
// resync is bounded only by ResyncWindow, as without Tick.

// pacePeriod is the measurement period of the rates and the capacity.
const pacePeriod = 500 * time.Millisecond

// pacer is one peer's resync pacing and the rates it measures.
type pacer struct {
	tokens float64 // bytes the resync may read now; negative: owed
	// Counters of the current period.
	elapsed                        time.Duration
	appSent, appAcked, resyncAcked uint64
	// Results of the last complete period, in bytes per second.
	appRate, resyncRate float64
	appActive           bool    // the application sent data in it
	capacity            float64 // highest delivery rate on this connection
	limit               float64 // the resync limit now; 0: none
}

// Tick tells the engine that elapsed time passed since the previous Tick.
// The driver calls it regularly (every few tens of milliseconds) while the
// resource is up: it paces resyncs (PeerConfig.ResyncRate,
// ResyncMinAppShare) and measures the rates Status reports. An engine that
// is never ticked runs resyncs unpaced, unless a ResyncRate is configured:
// then they wait for ticks.
func (e *Engine) Tick(elapsed time.Duration) {
	defer e.finish()
	if elapsed <= 0 {
		return
	}
	e.ticked += elapsed
	for _, p := range e.peers {
		pc := &p.pace
		pc.elapsed += elapsed
		if pc.elapsed >= pacePeriod {
			sec := pc.elapsed.Seconds()
			pc.appRate = float64(pc.appAcked) / sec
			pc.resyncRate = float64(pc.resyncAcked) / sec
			pc.capacity = max(pc.capacity, pc.appRate+pc.resyncRate)
			pc.appActive = pc.appSent > 0
			pc.elapsed, pc.appSent, pc.appAcked, pc.resyncAcked = 0, 0, 0, 0
		}
		pc.limit = e.resyncLimit(p)
		if pc.limit > 0 {
			pc.tokens = min(pc.tokens+pc.limit*elapsed.Seconds(), e.resyncBurst(p))
		}
		if p.rs != nil {
			e.scheduleResync(p)
		}
	}
}

// resyncLimit is the resync rate p may use now, in bytes per second; 0 for
// no limit.
func (e *Engine) resyncLimit(p *peer) float64 {
	limit := float64(p.cfg.ResyncRate)
	pc := &p.pace
	if share := p.cfg.ResyncMinAppShare; share > 0 && pc.appActive && pc.capacity > 0 {
		if c := pc.capacity * (1 - share); limit == 0 || c < limit {
			limit = c
		}
	}
	return limit
}

// resyncBurst bounds the tokens: 20 ms at the limit, but at
// least one chunk.
func (e *Engine) resyncBurst(p *peer) float64 {
	return max(p.pace.limit/50, float64(e.chunkBlocks)*float64(e.blockSize))
}

// resyncMayRead reports whether the resync to p may issue another read
// now: it is not paused and, for a data read under a limit, has tokens
// left. A checksum read (digestOnly) sends only digests and is not paced.
func (e *Engine) resyncMayRead(p *peer, digestOnly bool) bool {
	return !p.resyncPaused && (digestOnly || p.pace.limit == 0 || p.pace.tokens > 0)
}

// chargeResync spends the tokens of a data read of n bytes.
func (e *Engine) chargeResync(p *peer, n uint64) {
	if p.pace.limit > 0 {
		p.pace.tokens -= float64(n)
	}
}

// resetPace forgets what was measured on a connection (a new one may be a
// different path) and starts the bucket full.
func (e *Engine) resetPace(p *peer) {
	p.pace = pacer{}
	p.pace.limit = e.resyncLimit(p)
	p.pace.tokens = e.resyncBurst(p)
}

// PauseResync pauses (paused true) or resumes the resync from this node to
// peer: while paused, no new resync block is read for it (those in flight
// finish); the pause outlasts reconnections and applies whenever this node
// is the peer's sync source, until resumed or the engine restarts. It fails
// with ErrWrongState for an unknown peer.
func (e *Engine) PauseResync(peer NodeID, paused bool) error {
	defer e.finish()
	p := e.peer(peer)
	if p == nil {
		return fmt.Errorf("%w: node %d is not a peer of resource %q", ErrWrongState, peer, e.name)
	}
	if p.resyncPaused == paused {
		return nil
	}
	p.resyncPaused = paused
	what := "resumed"
	if paused {
		what = "paused"
	}
	e.peerEvent(p, "resync", "", "", what+" by the administrator")
	if !paused && p.rs != nil {
		e.scheduleResync(p)
	}
	return nil
}
