package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/georepl/georepl/cmd/georepl/internal/failover"
	"github.com/georepl/georepl/cmd/georepl/internal/storage"
	"github.com/georepl/georepl/configs"
	"github.com/georepl/georepl/core"
	"github.com/georepl/georepl/core/wire"
	"github.com/georepl/georepl/kmod/nbd"
)

// resource runs one replicated resource on this node. While up, the engine
// is guarded by emu: whichever goroutine has an event for it (an NBD
// request, a received frame, a finished local operation, or the loop
// goroutine with administrative calls, links, ticks) locks emu, hands the
// event to the engine and performs what Ready asks (process), then
// unlocks and carries out the rest: local operations and frame writes
// (executor). Doing
// the work on the goroutine that has the event, rather than passing it to
// a loop goroutine through a channel, saves a goroutine switch per event,
// which dominates the latency of a replicated write.
type resource struct {
	d    *Daemon
	cfg  *configs.Resource
	self *configs.Node
	log  *slog.Logger
	// handlers are the resource's handlers as last applied (Adjust
	// replaces them).
	handlers atomic.Pointer[configs.Handlers]
	// applied is the configuration Adjust last applied (cfg at first),
	// which the next Adjust compares with; under d.adjustMu.
	applied *configs.Resource

	// mu guards the fields below that other goroutines read: up, peers'
	// wanted/link, and the export.
	mu    sync.Mutex
	up    bool
	peers map[core.NodeID]*peer

	st *localDisk
	// rollBack asks the next Up to restore the image from before an
	// interrupted resync (Primary with force on such a sync target).
	rollBack bool

	linkUp   chan *link
	linkDown chan linkDown
	calls    chan func()
	stop     chan struct{}
	loopDone chan struct{}

	// emu guards the engine and the fields below; it is taken before mu
	// when both are needed.
	emu    sync.Mutex
	engine *core.Engine
	// stopped is set when the loop shuts down: later events are refused
	// or dropped.
	stopped bool
	// failed is why the resource was taken down by itself (a metadata
	// write failed); shown by status until the next up.
	failed error
	// detachedWhy is why the engine detached the disk (its event), for
	// status.
	detachedWhy string
	nextReq     core.RequestID
	// pending holds the completion of every request submitted and not
	// completed; process moves completed ones to completions, which
	// unlockEngine calls.
	pending     map[core.RequestID]pendingRequest
	completions []completion
	progress    map[core.NodeID]*rateMeter
	// ops collects the local operations of the Ready being performed, for
	// the goroutine that performs it to start (see takeWork).
	ops []localOp
	// flushes are the links and channels process queued frames on without
	// waking their writers (link.queue); see work.
	flushes []linkChannel
	// exec carries out what process collected (takeWork) once emu is
	// released.
	exec executor
	// received are the pooled payloads of data frames handed to the
	// engine and not yet written locally, with the link they came from.
	received map[*byte]*link

	export    *nbd.Server
	exportLis net.Listener
	kernel    kernelDevice // attached while Primary (kernel.go)

	payloads payloads // write payload buffers

	// counters, in bytes, updated by the op workers
	diskRead, diskWritten atomic.Uint64
	// appWriteLatency measures application writes from Submit to
	// completion, localWriteLatency the backing disk's writes (of either
	// role).
	appWriteLatency, localWriteLatency latencyHistogram
	status                             atomic.Pointer[ResourceStatus]
	// failover is the resource's failover loop while up under automatic
	// failover (failover.go), else nil.
	failover atomic.Pointer[failover.Loop]
}

// peer is this node's side of the connection to one other node.
type peer struct {
	id   core.NodeID
	node *configs.Node
	// settings are the connection's settings and the peer's node block
	// as the configuration last applied (at start or by Adjust) gives
	// them: read with link and pin, replaced whole by Adjust.
	settings atomic.Pointer[peerSettings]
	// paths are the connection's address pairs, this node's first;
	// multi: they come from path blocks, and the connection may move
	// between them (paths.go). pathStates, under mu, say how each is.
	paths      []configs.Path
	multi      bool
	pathStates []pathState
	wanted     bool  // connect/disconnect by the administrator
	conn       *link // current link, nil when not connected
	lastErr    string
	dialDone   chan struct{}
	// sentBefore and recvBefore are the link bytes of the connections
	// before conn, under mu: with conn's, the totals since the daemon
	// started.
	sentBefore, recvBefore uint64
	// tlsRekeys counts the new TLS sessions its connections continued on
	// for new keys since the daemon started (rekey.go), under mu.
	tlsRekeys uint64
	// ackLatency measures data frames from their hand-over to the link
	// to the peer's WriteAck, with the hand-over times in acks (emu).
	ackLatency latencyHistogram
	acks       ackTimes
	// rpoExceeded: the RPO is beyond net.rpo_warning (status publisher
	// only).
	rpoExceeded bool
}

// peerSettings is what Adjust may change of a peer while the resource
// runs.
type peerSettings struct {
	link configs.Link
	// node is the peer's node block, for its peer_fingerprint.
	node *configs.Node
}

// link is the connection's current settings; never modified.
func (p *peer) link() *configs.Link { return &p.settings.Load().link }

// pinned is the peer's node block in the current configuration, for the
// identity checks of new connections.
func (p *peer) pinned() *configs.Node { return p.settings.Load().node }

// pendingRequest is an application request submitted and not completed:
// its completion and, for a write, when it was submitted (else zero).
type pendingRequest struct {
	fn        func(error)
	submitted time.Time
}

type linkDown struct {
	link *link
	err  error
}

func newResource(d *Daemon, rc *configs.Resource, self *configs.Node) (*resource, error) {
	r := &resource{
		d: d, cfg: rc, self: self,
		log:   d.log.With("resource", rc.Name),
		peers: map[core.NodeID]*peer{},
	}
	r.handlers.Store(&rc.Handlers)
	r.applied = rc
	r.exec = executor{
		perform: r.performOp,
		reserve: func(off, length uint64) bool { return r.st.al.reserve(off, length) },
		spawn:   func(f func()) { go f() },
	}
	for _, n := range rc.Peers(self.Name) {
		lk, err := rc.Link(self.Name, n.Name)
		if err != nil {
			return nil, err
		}
		paths, multi := pathsOf(rc, self, n)
		p := &peer{id: core.NodeID(n.ID), node: n, wanted: true,
			paths: paths, multi: multi, pathStates: make([]pathState, len(paths))}
		p.settings.Store(&peerSettings{link: lk, node: n})
		r.peers[p.id] = p
	}
	r.publishStatus()
	return r, nil
}

// Up attaches the disk, starts the engine and starts connecting.
func (r *resource) Up() error {
	r.d.adjustMu.Lock()
	defer r.d.adjustMu.Unlock()
	if r.d.lookup(r.cfg.Name) != r {
		return fmt.Errorf("resource %s was reconfigured by `georepl adjust` meanwhile on %s: run up again", r.cfg.Name, r.self.Name)
	}
	r.mu.Lock()
	if r.up {
		r.mu.Unlock()
		return fmt.Errorf("resource %s is already up", r.cfg.Name)
	}
	r.mu.Unlock()

	st, err := openStorage(r.cfg, r.self, r.d.opts, r.d.faults, r.rollBack)
	if err != nil {
		return err
	}
	r.warnInterruptedResize(st)
	r.startActivityLog(st)
	r.startUndo(st)
	eng, err := r.newEngine(st)
	if err != nil {
		st.Close()
		return err
	}
	r.emu.Lock()
	r.st, r.engine, r.stopped, r.failed, r.detachedWhy = st, eng, false, nil, ""
	r.pending = map[core.RequestID]pendingRequest{}
	r.progress = map[core.NodeID]*rateMeter{}
	r.unlockEngine()
	st.Gate.SetReport(func() { go r.reportSyncFailures(st.Gate) })
	r.linkUp = make(chan *link)
	r.linkDown = make(chan linkDown)
	r.calls = make(chan func())
	r.stop = make(chan struct{})
	r.loopDone = make(chan struct{})

	for _, p := range r.peers {
		for _, path := range p.paths {
			if err := r.d.ensureListener(p.link().Net.Transport, path[0]); err != nil {
				st.Close()
				return err
			}
		}
	}
	if r.self.Export != "" {
		if err := r.startExport(); err != nil {
			st.Close()
			return err
		}
	}
	es := eng.Status() // from now on the engine is called with emu held only
	r.mu.Lock()
	r.up = true
	r.mu.Unlock()
	go r.loop()
	for _, p := range r.peers {
		if r.dials(p) {
			p.dialDone = make(chan struct{})
			go r.dialLoop(p)
		}
	}
	if r.cfg.Failover.Mode == configs.FailoverAuto {
		l, err := startLoop(r.d, r.cfg, r.self.Name, r.self.Failover.Address, r.self.Failover.Dir, foLocal{r}, r.log)
		if err != nil {
			r.log.Error("automatic failover is not running", "err", err)
			return errors.Join(err, r.forceDown())
		}
		r.failover.Store(l)
	}
	r.log.Info("resource up", "disk", r.self.Disk, "size", st.DataSize, "role", es.Role, "disk_state", es.Disk)
	return nil
}

func (r *resource) newEngine(st *localDisk) (*core.Engine, error) {
	sb := st.Store.Superblock()
	state := core.Persistent{
		Disk:       core.DiskState(sb.DiskState),
		Primary:    sb.Primary,
		Current:    sb.Current,
		History:    sb.History,
		BitmapUUID: map[core.NodeID]uint64{},
		Promoted:   sb.Promoted,
		Term:       sb.Term,
	}
	cfg := core.Config{
		Self:        core.NodeID(r.self.ID),
		Name:        r.cfg.Name,
		Size:        st.DataSize,
		BlockSize:   uint32(r.cfg.Disk.BlockSize),
		DiskFlushes: r.cfg.Disk.Flushes,
		OnIOError:   r.cfg.Disk.OnIOError,
		State:       state,
		Bitmaps:     map[core.NodeID]*core.Bitmap{},
		NewUUID:     storage.NewUUID,
		// Named in the resync reasons of status.
		RecoveredExtents: st.ALRecovered,
		Clock:            func() uint64 { return uint64(time.Now().UnixNano()) },
		Quorum:           r.cfg.Quorum,
		Witnesses:        len(r.cfg.Failover.Witnesses),
		OnNoQuorum:       r.cfg.OnNoQuorum,
		Leased:           r.cfg.Failover.Mode == configs.FailoverAuto,
	}
	bits := st.Store.BitmapBits()
	for _, p := range sortedPeers(r.peers) {
		pc, err := peerConfig(r.cfg, p, p.link())
		if err != nil {
			return nil, err
		}
		cfg.Peers = append(cfg.Peers, pc)
		if int(p.id) < len(sb.BitmapUUID) {
			state.BitmapUUID[p.id] = sb.BitmapUUID[p.id]
		}
		words, err := st.Store.ReadBitmap(int(p.id))
		if err != nil {
			return nil, fmt.Errorf("reading the bitmap for peer %s: %w", p.node.Name, err)
		}
		bm, ok := core.BitmapFromWords(bits, words)
		if !ok {
			return nil, fmt.Errorf("the bitmap for peer %s in the metadata on %s is corrupt (%d words for %d bits, or bits beyond the end): recreate it with `georepl create-md --force` and bring the resource up; it is then fully resynchronised from the Primary (csums sends only the blocks that differ)", p.node.Name, storage.MetaPlace(r.self.Disk, metaDisk(r.self)), len(words), bits)
		}
		cfg.Bitmaps[p.id] = bm
	}
	return core.New(cfg)
}

// peerConfig is the engine's configuration of peer p with the settings
// lk, in resource rc.
func peerConfig(rc *configs.Resource, p *peer, lk *configs.Link) (core.PeerConfig, error) {
	n := lk.Net
	victim, err := discardNode(rc, n)
	if err != nil {
		return core.PeerConfig{}, err
	}
	return core.PeerConfig{
		ID: p.id, Name: p.node.Name, Protocol: lk.Protocol, MaxBuffer: uint64(n.MaxBuffer), Csums: n.Csums,
		OnCongestion: n.OnCongestion, AfterSplitBrain: n.AfterSplitBrain, DiscardNode: victim,
		ResyncRate: uint64(n.ResyncRate), ResyncMinAppShare: n.ResyncMinAppShare,
	}, nil
}

// dials reports whether this node dials peer p (the lower node id dials;
// the other side only accepts), so that two nodes never race two
// connections against each other.
func (r *resource) dials(p *peer) bool { return r.self.ID < p.node.ID }

// Down disconnects every peer, stops the export and detaches the disk.
func (r *resource) Down() error {
	r.mu.Lock()
	up := r.up
	r.mu.Unlock()
	if !up {
		return fmt.Errorf("resource %s is not up", r.cfg.Name)
	}
	if err := r.call(func() error {
		if st := r.engine.Status(); st.Role == core.Primary {
			return fmt.Errorf("resource %s is Primary on %s: run `georepl secondary %s` first", r.cfg.Name, r.self.Name, r.cfg.Name)
		}
		return nil
	}); err != nil {
		return err
	}
	err := r.forceDown()
	r.log.Info("resource down")
	return err
}

// call runs fn on the loop goroutine and returns its error.
func (r *resource) call(fn func() error) error {
	r.mu.Lock()
	up := r.up
	r.mu.Unlock()
	if !up {
		return fmt.Errorf("resource %s is not up on %s (run `georepl up %s`)", r.cfg.Name, r.self.Name, r.cfg.Name)
	}
	errc := make(chan error, 1)
	select {
	case r.calls <- func() { errc <- fn() }:
	case <-r.loopDone:
		return fmt.Errorf("resource %s is going down", r.cfg.Name)
	}
	return <-errc
}

// loop serves administrative calls, link changes and ticks; each runs with
// emu held, followed by what the engine asks for.
func (r *resource) loop() {
	defer close(r.loopDone)
	persistTick := time.NewTicker(time.Second)
	defer persistTick.Stop()
	statusTick := time.NewTicker(250 * time.Millisecond)
	defer statusTick.Stop()
	// The engine paces resyncs and measures rates with the time it is
	// told about (core.Engine.Tick).
	engineTick := time.NewTicker(engineTickInterval)
	defer engineTick.Stop()
	lastTick := time.Now()
	// tick tells the engine the time passed up to now; also before a
	// status snapshot and an administrative call, so that RPO ages are
	// exact when shown, whatever delayed the last tick.
	tick := func() {
		now := time.Now()
		r.engine.Tick(now.Sub(lastTick))
		lastTick = now
	}
	for {
		var event func()
		select {
		case l := <-r.linkUp:
			event = func() { r.attachLink(l) }
		case ld := <-r.linkDown:
			event = func() { r.detachLink(ld.link, ld.err) }
		case fn := <-r.calls:
			event = func() { tick(); fn() }
		case <-persistTick.C:
			event = r.persistBitmaps
		case <-statusTick.C:
			event = func() { tick(); r.publishStatus() }
		case <-engineTick.C:
			event = tick
		case <-r.stop:
			r.emu.Lock()
			r.shutdownLoop()
			r.unlockEngine()
			return
		}
		r.emu.Lock()
		event()
		r.process()
		w := r.takeWork()
		r.unlockEngine()
		r.exec.carryOut(w, loopHolder)
	}
}

// engineTickInterval is how often the engine is told that time passed:
// its resync pacing refills at this granularity.
const engineTickInterval = 20 * time.Millisecond

// failMetadata handles a failed metadata write, with emu held. The engine
// has moved on to a state that is not durable, so nothing more of it may
// be acted on: this Ready is abandoned, every outstanding request fails,
// the connections close (peers mark what they miss), and the resource goes
// down. The operator repairs the disk and runs `up` again; what the
// metadata holds is the last durable state, which the activity log covers.
func (r *resource) failMetadata(err error) {
	if r.failed != nil {
		return
	}
	r.failed = fmt.Errorf("writing the metadata failed, so the resource was taken down: %w", err)
	r.log.Error("writing metadata failed; taking the resource down so that nothing acts on state that is not durable", "err", err)
	r.stopped = true
	r.dropOps()
	for _, p := range r.peers {
		if p.conn != nil {
			p.conn.close(r.failed)
			r.setConn(p, nil)
		}
	}
	r.failPending(r.failed)
	go r.forceDown()
}

func (r *resource) shutdownLoop() {
	r.stopped = true
	for _, p := range r.peers {
		if p.conn != nil {
			p.conn.close(errors.New("resource going down"))
			r.engine.Disconnected(p.id)
			r.setConn(p, nil)
		}
	}
	r.process()
	r.dropOps() // the resource is going down: nothing would wait for them
	r.persistBitmaps()
	r.failPending(fmt.Errorf("resource %s went down", r.cfg.Name))
}

// completion is a request's completion and its result.
type completion struct {
	fn  func(error)
	err error
}

// failPending completes every pending request with err. Called with emu
// held.
func (r *resource) failPending(err error) {
	for id, pr := range r.pending {
		r.completions = append(r.completions, completion{pr.fn, err})
		delete(r.pending, id)
	}
}

// unlockEngine unlocks emu, then calls the completions that process
// collected. Every holder of emu unlocks it with this: a completion may
// write an NBD reply, which must not happen with emu held, and must not
// be forgotten.
func (r *resource) unlockEngine() {
	done := r.completions
	r.completions = nil
	r.emu.Unlock()
	for _, c := range done {
		c.fn(c.err)
	}
}

func (r *resource) attachLink(l *link) {
	p := r.peers[l.peer]
	if !p.wanted || !r.isUp() {
		l.close(errors.New("not wanted"))
		return
	}
	if p.conn != nil {
		p.conn.close(errors.New("replaced by a new connection"))
		r.engine.Disconnected(p.id)
		r.process()
	}
	if r.sizeMismatch(p, l) {
		return
	}
	l.attach(r.linkDown, r.loopDone)
	r.setConn(p, l)
	l.start()
	r.engine.Connected(p.id, l.ourHello, l.hello)
	pc := l.current()
	r.setPath(p, pc.path, "active", "")
	r.log.Info("connected", "peer", p.node.Name, "transport", l.transport, "remote", pc.conn.RemoteAddr(), "path", describePath(p, pc.path))
}

func (r *resource) detachLink(l *link, err error) {
	p := r.peers[l.peer]
	if p.conn != l {
		return
	}
	r.setConn(p, nil)
	r.engine.Disconnected(p.id)
	r.log.Warn("connection lost", "peer", p.node.Name, "err", err)
}

func (r *resource) setConn(p *peer, l *link) {
	if old := p.conn; old != nil && old != l {
		for key, from := range r.received {
			if from == old {
				delete(r.received, key)
			}
		}
	}
	r.mu.Lock()
	if old := p.conn; old != nil && old != l {
		sent, recv := old.stats()
		p.sentBefore += sent
		p.recvBefore += recv
	}
	p.conn = l
	if l == nil {
		for i := range p.pathStates {
			if p.pathStates[i].state == "active" {
				p.pathStates[i] = pathState{}
			}
		}
	}
	r.mu.Unlock()
}

func (r *resource) isUp() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.up
}

// process performs everything the engine asks for until it is quiet,
// except starting local operations: it collects them in r.ops, and the
// caller takes them (takeWork) and starts them once it has unlocked emu.
// The engine allows that: they may run in any order and concurrently, and
// no completion of a Ready depends on a local operation of it. Called with
// emu held.
func (r *resource) process() {
	e := r.engine
	for e.HasReady() {
		rd := e.Ready()
		if rd.PersistBitmaps || rd.Persist != nil {
			if rd.Persist != nil && rd.Persist.Disk == core.Diskless {
				r.noteDetached()
			}
			if err := r.persistReady(&rd); err != nil {
				switch {
				case r.st.detached.Load():
					// Best effort: the disk failed. What it keeps is
					// either Diskless or the ids it had, which its peers
					// marked in full when they heard it was Diskless:
					// a full resync when it returns, either way.
					r.log.Warn("the detached disk's metadata could not be updated", "err", err)
				case r.cfg.Disk.OnIOError == core.DetachOnIOError:
					// The disk fails: detach it. The rest of this Ready
					// is performed; the peers hear that this node is
					// Diskless (the next Ready) after what it says, and
					// mark every block for it.
					e.Detach(fmt.Sprintf("metadata write failed: %v", err))
				default:
					r.failMetadata(err)
					return
				}
			}
		}
		for _, op := range rd.LocalOps {
			var pl *payload
			if op.Kind == core.OpWrite {
				pl = r.payloads.ref(op.Data)
			}
			r.ops = append(r.ops, localOp{op, pl})
		}
		var now time.Time
		for i := range rd.Messages {
			m := &rd.Messages[i]
			if p := r.peers[m.To]; p != nil && p.conn != nil {
				var pl *payload
				if m.Frame.Type == wire.TypeData {
					pl = r.payloads.ref(m.Frame.Payload)
					if now.IsZero() {
						now = time.Now()
					}
					p.acks.sent(m.Frame.Seq, now)
				}
				if p.conn.inline {
					r.flushes = append(r.flushes, linkChannel{p.conn, p.conn.queue(&m.Frame, pl)})
				} else {
					p.conn.send(&m.Frame, pl)
				}
			}
		}
		for _, c := range rd.Completed {
			if pr, ok := r.pending[c.ID]; ok {
				delete(r.pending, c.ID)
				if !pr.submitted.IsZero() && c.Err == nil {
					r.appWriteLatency.observe(time.Since(pr.submitted))
				}
				r.completions = append(r.completions, completion{pr.fn, c.Err})
			}
		}
		for _, dr := range rd.Drop {
			p := r.peers[dr.Peer]
			if p == nil {
				continue
			}
			r.log.Error("dropping connection", "peer", p.node.Name, "reason", dr.Reason)
			if dr.StandAlone {
				r.mu.Lock()
				p.wanted = false
				p.lastErr = dr.Reason.Error()
				r.mu.Unlock()
			}
			if p.conn != nil {
				p.conn.close(dr.Reason)
				r.setConn(p, nil)
				e.Disconnected(p.id)
			}
		}
		for _, ev := range rd.Events {
			r.emit(ev)
		}
	}
}

func (r *resource) emit(ev core.Event) {
	if ev.What == "disk" && !ev.HasPeer && ev.New == core.Diskless.String() {
		r.detachedWhy = ev.Detail
	}
	out := Event{Time: time.Now().UTC(), Resource: r.cfg.Name, Node: r.self.Name, What: ev.What, Old: ev.Old, New: ev.New, Detail: ev.Detail}
	if ev.HasPeer {
		if p := r.peers[ev.Peer]; p != nil {
			out.Peer = p.node.Name
		}
	}
	r.log.Info("state change", "what", out.What, "peer", out.Peer, "old", out.Old, "new", out.New, "detail", out.Detail)
	if l := r.failover.Load(); l != nil && !ev.HasPeer && (ev.What == "role" || ev.What == "disk" || ev.What == "gen" || ev.What == "term") {
		l.Nudge() // the log learns it at once: a new generation's writes wait for it
	}
	r.d.events.publish(out)
	r.runHandlers(out)
}

// takeWork returns the work process collected. Called with emu held; the
// caller carries it out after unlocking emu (executor.carryOut).
func (r *resource) takeWork() work {
	w := work{r.engine, r.ops, r.flushes}
	r.ops, r.flushes = nil, nil
	return w
}

// localOp is a local operation to perform, with a reference to its pooled
// payload (nil if none): a write reads its payload until it is done, and
// in rare cases (the resource going down) its request completes before
// that, so the request's own reference does not cover it.
type localOp struct {
	core.LocalOp
	pl *payload
}

// dropOps forgets the collected operations without performing them.
// Called with emu held.
func (r *resource) dropOps() {
	for _, op := range r.ops {
		r.payloads.release(op.pl)
	}
	r.ops = nil
	work{flushes: r.flushes}.wake()
	r.flushes = nil
}

// performOp performs op for eng, reports it and processes what that made
// ready; it returns the work collected for the caller to carry out
// (executor.carryOut), or ok false if the resource went down meanwhile:
// then nothing waits for the result.
func (r *resource) performOp(eng *core.Engine, op localOp) (next work, ok bool) {
	began := time.Now()
	data, err := r.do(op.LocalOp)
	if op.Kind == core.OpWrite && err == nil {
		r.localWriteLatency.observe(time.Since(began))
	}
	r.payloads.release(op.pl)
	r.emu.Lock()
	if r.stopped || r.engine != eng {
		r.unlockEngine()
		return work{}, false
	}
	r.recycleReceived(op.LocalOp)
	eng.LocalDone(op.ID, data, err)
	if err != nil {
		r.st.Gate.Delivered(err)
	}
	r.process()
	w := r.takeWork()
	r.unlockEngine()
	return w, true
}

// do performs one local operation on the backing disk.
func (r *resource) do(op core.LocalOp) (data []byte, err error) {
	dev := r.st.data
	off, n := int64(op.Offset), int64(op.Length)
	switch op.Kind {
	case core.OpWrite:
		write := dev.WriteAt
		if op.FUA {
			// One durable write of the range, not a write and a flush
			// of the whole disk: a FUA write, as the kernel's.
			write = dev.WriteAtFUA
		}
		if _, err = write(op.Data, off); err == nil {
			r.diskWritten.Add(uint64(len(op.Data)))
		}
		err = noSpace(err)
	case core.OpZeroes:
		err = noSpace(dev.WriteZeroes(off, n))
	case core.OpTrim:
		err = noSpace(dev.Punch(off, n))
	case core.OpFlush:
		err = r.st.Gate.SyncOp()
	case core.OpRead:
		data = make([]byte, n)
		if _, err = dev.ReadAt(data, off); err == nil {
			r.diskRead.Add(uint64(n))
		}
	case core.OpChecksum:
		data, err = r.checksum(op)
	default:
		err = fmt.Errorf("unknown local operation %v", op.Kind)
	}
	if err == nil && op.FUA && op.Kind != core.OpWrite && op.Kind != core.OpChecksum {
		err = r.st.Gate.SyncOp()
	}
	return data, err
}

// noSpace tells the engine that a write, write-zeroes or trim failed
// because the backing store had no room for it (core.ErrNoSpace): a full
// file system or quota, a thin store out of space. Only the operation's
// own failure: a failed flush of the disk (the gate's errors, which a
// write saving old blocks for the undo log may meet) lost written data,
// and stays a failed flush whatever its errno.
func noSpace(err error) error {
	var failure *storage.SyncFailure
	var doubt *storage.FlushDoubtError
	switch {
	case err == nil, errors.As(err, &failure), errors.As(err, &doubt):
		return err
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT), errors.Is(err, syscall.EFBIG):
		return fmt.Errorf("%w: %w", core.ErrNoSpace, err)
	}
	return err
}

// checksumChunk bounds the memory one OpChecksum reads at a time.
const checksumChunk = 1 << 20

// checksum performs an OpChecksum: the digests of the range's blocks,
// read in chunks, after a flush if the op asks for durable data.
func (r *resource) checksum(op core.LocalOp) ([]byte, error) {
	dev := r.st.data
	if op.FUA {
		if err := r.st.Gate.SyncOp(); err != nil {
			return nil, err
		}
	}
	bs := uint64(op.BlockSize)
	if bs == 0 || op.Length%bs != 0 {
		return nil, fmt.Errorf("checksum of [%d, +%d) in blocks of %d bytes", op.Offset, op.Length, bs)
	}
	digests := make([]byte, 0, op.Length/bs*uint64(op.Csum.Size()))
	buf := make([]byte, min(op.Length, max(checksumChunk/bs, 1)*bs))
	for done := uint64(0); done < op.Length; {
		chunk := buf[:min(uint64(len(buf)), op.Length-done)]
		if _, err := dev.ReadAt(chunk, int64(op.Offset+done)); err != nil {
			return nil, err
		}
		r.diskRead.Add(uint64(len(chunk)))
		digests = op.Csum.AppendDigests(digests, chunk, int(bs))
		done += uint64(len(chunk))
	}
	return digests, nil
}

// submit hands an application request to the engine and waits for its
// completion. The calling goroutine runs the local operations the request
// starts itself (see executor) rather than wait idle.
func (r *resource) submit(ctx context.Context, req core.Request) error {
	return await(ctx, func(done func(error)) { r.start(ctx, done, req) })
}

// await calls begin with a completion and waits for it. If the result is
// not there when begin returns, the wait is for a peer: nbd.WillBlock
// lets the export read on meanwhile. Once started, a request is waited
// for to the end: returning early would let the client reuse a buffer
// the engine still owns.
func await(ctx context.Context, begin func(done func(error))) error {
	done := make(chan error, 1)
	begin(func(err error) { done <- err })
	select {
	case err := <-done:
		return err // no peer to wait for (alone, or protocol A within max_buffer)
	default:
	}
	nbd.WillBlock(ctx)
	return <-done
}

// start hands application requests to the engine, runs the local
// operations they start on the calling goroutine (see executor), and
// returns; complete is called once, when every request completed, with
// the first error in reqs' order, by whichever goroutine completes the
// last (this one, before start returns, if no peer has to answer), never
// with emu held.
//
// reqs are submitted in their order with emu held throughout: no other
// request comes between them, so the pieces of a split write
// (device.beginWrite) are ordered against other requests as the whole
// write would be (the engine orders overlapping writes by submission).
func (r *resource) start(ctx context.Context, complete func(error), reqs ...core.Request) {
	if err := ctx.Err(); err != nil {
		complete(err)
		return
	}
	r.emu.Lock()
	if r.stopped || r.engine == nil {
		r.unlockEngine()
		complete(fmt.Errorf("resource %s is down", r.cfg.Name))
		return
	}
	eng := r.engine
	var joined *joinedResults
	if len(reqs) > 1 {
		joined = joinResults(len(reqs), complete)
	}
	var now time.Time
	for i, req := range reqs {
		r.nextReq++
		req.ID = r.nextReq
		if joined != nil {
			complete = joined.done(i)
		}
		pr := pendingRequest{fn: complete}
		if req.Kind == core.ReqWrite || req.Kind == core.ReqZeroes || req.Kind == core.ReqTrim {
			if now.IsZero() {
				now = time.Now()
			}
			pr.submitted = now
		}
		r.pending[req.ID] = pr
		eng.Submit(req)
	}
	r.process()
	w := r.takeWork()
	r.unlockEngine()
	r.exec.carryOut(w, requestHolder)
}

// receiveBuffer is the links' wire.Reader payload allocator: data and
// resync-data payloads come from the pool.
//
// The ownership chain of such a payload p: the link's reader returns it in
// a frame, receive records it in r.received and hands it to the engine,
// which puts it into exactly one local write (core.LocalOp.Data) and
// nothing else: a secondary applies a received write, and never sends or
// keeps its payload. performOp returns p to the pool once that write is done
// (recycleReceived). If the engine never issues the write (the connection
// is lost first, or the frame is refused), setConn forgets the link's
// entries and p is left to the garbage collector; so is p when its write
// finishes after its link was replaced.
func (r *resource) receiveBuffer(t wire.Type, n int) []byte {
	if t != wire.TypeData && t != wire.TypeResyncData {
		return nil
	}
	return r.payloads.get(n)
}

func isPooled(f *wire.Frame) bool {
	return (f.Type == wire.TypeData || f.Type == wire.TypeResyncData) && len(f.Payload) > 0
}

// recycleReceived returns the payload of a finished local write to the
// pool if it is a received one. Called with emu held.
func (r *resource) recycleReceived(op core.LocalOp) {
	if op.Kind != core.OpWrite || len(op.Data) == 0 || r.received == nil {
		return
	}
	key := unsafe.SliceData(op.Data)
	if _, ok := r.received[key]; ok {
		delete(r.received, key)
		r.payloads.put(op.Data)
	}
}

// receive hands a frame from link l to the engine, if l is still the
// peer's connection. Called by l's reader goroutines, which carry out
// what the frame starts as far as a reader may (executor); more reports
// that the next frame has already arrived.
func (r *resource) receive(l *link, f *wire.Frame, more bool) {
	r.emu.Lock()
	if r.stopped {
		r.unlockEngine()
		return
	}
	if p := r.peers[l.peer]; p.conn == l {
		if f.Type == wire.TypeWriteAck {
			if d, ok := p.acks.acked(f.Seq, time.Now()); ok {
				p.ackLatency.observe(d)
			}
		}
		if isPooled(f) {
			if r.received == nil {
				r.received = map[*byte]*link{}
			}
			r.received[unsafe.SliceData(f.Payload)] = l
		}
		r.engine.Receive(l.peer, f)
		r.process()
	}
	w := r.takeWork()
	r.unlockEngine()
	r.exec.carryOut(w, readerHolder(l, more))
}

// Detach stops using the local disk, as a failed disk operation does
// under on_io_error = "detach" (whatever the policy): a Primary serves
// through its peers in sync, a Secondary drops its Primary. It is refused
// on a Primary with no peer in sync connected, which would fail every
// request. There is no attach: down and up reattach the disk, which is
// then resynchronised in full.
func (r *resource) Detach() error {
	return r.call(func() error {
		st := r.engine.Status()
		if st.Disk == core.Diskless {
			return fmt.Errorf("the disk of %s on %s is already detached", r.cfg.Name, r.self.Name)
		}
		if st.Role == core.Primary {
			inSync := false
			for _, p := range st.Peers {
				inSync = inSync || (p.Conn == core.Connected && p.Repl == core.Established && p.Disk == core.UpToDate &&
					p.OutOfSync == 0 && p.BitmapUUID == 0)
			}
			if !inSync {
				return fmt.Errorf("%s is Primary on %s and no peer in sync with it is connected: without its disk every request would fail (make an UpToDate peer connect, or switch over first)", r.cfg.Name, r.self.Name)
			}
		}
		r.engine.Detach("detached by the administrator (georepl detach)")
		r.process()
		r.publishStatus()
		return r.failed
	})
}

// noteDetached switches the driver to a detached disk, once: the activity
// log stops, bitmaps stay in memory, reads go to the peers. Called with
// emu held.
func (r *resource) noteDetached() {
	if r.st.detached.Swap(true) {
		return
	}
	r.st.al.detach()
	r.log.Error("local disk detached after an I/O error: it is no longer read or written; a Primary serves through its peers in sync, and the bitmaps are kept in memory only",
		"disk", r.self.Disk)
}

// detachDisk detaches the local disk (core.Engine.Detach) after an I/O
// error the driver saw outside the engine: a read served from the disk
// directly, an activity-log write.
func (r *resource) detachDisk(why string) {
	r.emu.Lock()
	if r.stopped || r.engine == nil {
		r.unlockEngine()
		return
	}
	r.engine.Detach(why)
	r.process()
	w := r.takeWork()
	r.unlockEngine()
	r.exec.carryOut(w, loopHolder)
}

// persistReady makes what a Ready asks durable, before anything else of
// it is performed: the bitmaps' dirty pages first if it asks (marks no
// activity-log extent covers, which the superblock's bitmap ids may be
// tied to), then the superblock. A detached disk keeps its bitmaps in
// memory only. Called with emu held.
func (r *resource) persistReady(rd *core.Ready) error {
	if rd.PersistBitmaps && !r.st.detached.Load() {
		if err := r.writeBitmaps(); err != nil {
			return err
		}
	}
	if rd.Persist == nil {
		return nil
	}
	return r.persistWithUndo(rd.Persist)
}

// persistBitmaps writes the bitmaps' dirty pages; once all are on disk,
// the activity log may retire the extents the engine reports settled. A
// detached disk keeps them in memory only.
func (r *resource) persistBitmaps() {
	if r.st.detached.Load() {
		return
	}
	if err := r.writeBitmaps(); err != nil {
		if r.cfg.Disk.OnIOError == core.DetachOnIOError {
			// The disk fails: detach it (the caller processes the
			// engine's Ready); the bitmaps stay in memory.
			r.engine.Detach(err.Error())
			return
		}
		r.log.Error("writing bitmap failed", "err", err)
		return
	}
	r.st.al.observe(r.engine.Settled)
}

// writeBitmaps writes the dirty pages of every peer's bitmap, durably.
func (r *resource) writeBitmaps() error {
	var errs error
	for _, p := range sortedPeers(r.peers) {
		bm := r.engine.Bitmap(p.id)
		if bm == nil {
			continue
		}
		pages := bm.DirtyPages()
		if len(pages) == 0 {
			continue
		}
		if err := r.st.Store.WriteBitmapPages(int(p.id), bm.Words(), pages); err != nil {
			errs = errors.Join(errs, fmt.Errorf("bitmap write for peer %s failed: %w", p.node.Name, err))
			continue
		}
		bm.ClearDirty()
	}
	return errs
}

func sortedPeers(m map[core.NodeID]*peer) []*peer {
	out := make([]*peer, 0, len(m))
	for id := core.NodeID(0); id < core.MaxNodes; id++ {
		if p, ok := m[id]; ok {
			out = append(out, p)
		}
	}
	return out
}
