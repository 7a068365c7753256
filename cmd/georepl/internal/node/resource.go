package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/georepl/georepl/configs"
	"github.com/georepl/georepl/core"
	"github.com/georepl/georepl/core/wire"
	"github.com/georepl/georepl/kmod/nbd"
	"github.com/georepl/georepl/protocols"
)

// resource runs one replicated resource on this node. While up, a single
// goroutine (loop) owns the engine: every event reaches it through a
// channel, and after each event loop performs what the engine's Ready asks.
type resource struct {
	d    *Daemon
	cfg  *configs.Resource
	self *configs.Node
	log  *slog.Logger

	// mu guards the fields below that other goroutines read: up, peers'
	// wanted/link, and the export.
	mu    sync.Mutex
	up    bool
	peers map[core.NodeID]*peer

	st     *storage
	engine *core.Engine

	requests  chan *appRequest
	localDone chan opDone
	frames    chan inFrame
	linkUp    chan *link
	linkDown  chan linkDown
	calls     chan func()
	stop      chan struct{}
	loopDone  chan struct{}

	// loop-owned
	nextReq  core.RequestID
	pending  map[core.RequestID]chan error
	progress map[core.NodeID]*rateMeter

	export    *nbd.Server
	exportLis net.Listener

	// counters, in bytes, updated by the op workers
	diskRead, diskWritten atomic.Uint64
	status                atomic.Pointer[ResourceStatus]
}

// peer is this node's side of the connection to one other node.
type peer struct {
	id       core.NodeID
	node     *configs.Node
	link     configs.Link
	wanted   bool  // connect/disconnect by the administrator
	conn     *link // current link, nil when not connected
	lastErr  string
	dialDone chan struct{}
}

type appRequest struct {
	req  core.Request
	done chan error
}

type opDone struct {
	id   core.OpID
	data []byte
	err  error
}

type inFrame struct {
	link  *link
	frame *wire.Frame
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
	for _, n := range rc.Peers(self.Name) {
		lk, err := rc.Link(self.Name, n.Name)
		if err != nil {
			return nil, err
		}
		if lk.Net.OnCongestion != "" && lk.Net.OnCongestion != "block" {
			return nil, fmt.Errorf("resource %s, connection %s-%s: on_congestion = %q is not implemented in this version; only \"block\" is", rc.Name, self.Name, n.Name, lk.Net.OnCongestion)
		}
		r.peers[core.NodeID(n.ID)] = &peer{id: core.NodeID(n.ID), node: n, link: lk, wanted: true}
	}
	r.publishStatus()
	return r, nil
}

// Up attaches the disk, starts the engine and starts connecting.
func (r *resource) Up() error {
	r.mu.Lock()
	if r.up {
		r.mu.Unlock()
		return fmt.Errorf("resource %s is already up", r.cfg.Name)
	}
	r.mu.Unlock()

	st, err := openStorage(r.cfg, r.self)
	if err != nil {
		return err
	}
	r.startActivityLog(st)
	eng, err := r.newEngine(st)
	if err != nil {
		st.Close()
		return err
	}
	r.st, r.engine = st, eng
	r.requests = make(chan *appRequest)
	r.localDone = make(chan opDone, 256)
	r.frames = make(chan inFrame, 256)
	r.linkUp = make(chan *link)
	r.linkDown = make(chan linkDown)
	r.calls = make(chan func())
	r.stop = make(chan struct{})
	r.loopDone = make(chan struct{})
	r.pending = map[core.RequestID]chan error{}
	r.progress = map[core.NodeID]*rateMeter{}

	for _, p := range r.peers {
		if err := r.d.ensureListener(p.link.Net.Transport, r.self.Address); err != nil {
			st.Close()
			return err
		}
	}
	if r.self.Export != "" {
		if err := r.startExport(); err != nil {
			st.Close()
			return err
		}
	}
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
	r.log.Info("resource up", "disk", r.self.Disk, "size", st.dataSize, "role", eng.Status().Role, "disk_state", eng.Status().Disk)
	return nil
}

func (r *resource) newEngine(st *storage) (*core.Engine, error) {
	sb := st.store.Superblock()
	state := core.Persistent{
		Disk:       core.DiskState(sb.DiskState),
		Primary:    sb.Primary,
		Current:    sb.Current,
		History:    sb.History,
		BitmapUUID: map[core.NodeID]uint64{},
	}
	cfg := core.Config{
		Self:        core.NodeID(r.self.ID),
		Name:        r.cfg.Name,
		Size:        st.dataSize,
		BlockSize:   uint32(r.cfg.Disk.BlockSize),
		DiskFlushes: r.cfg.Disk.Flushes,
		State:       state,
		Bitmaps:     map[core.NodeID]*core.Bitmap{},
		NewUUID:     newUUID,
	}
	bits := st.store.BitmapBits()
	for _, p := range sortedPeers(r.peers) {
		proto, err := protocols.Parse(p.link.Protocol)
		if err != nil {
			return nil, err
		}
		cfg.Peers = append(cfg.Peers, core.PeerConfig{
			ID: p.id, Name: p.node.Name, Protocol: proto, MaxBuffer: uint64(p.link.Net.MaxBuffer),
		})
		if int(p.id) < len(sb.BitmapUUID) {
			state.BitmapUUID[p.id] = sb.BitmapUUID[p.id]
		}
		words, err := st.store.ReadBitmap(int(p.id))
		if err != nil {
			return nil, fmt.Errorf("reading the bitmap for peer %s: %w", p.node.Name, err)
		}
		bm, ok := core.BitmapFromWords(bits, words)
		if !ok {
			return nil, fmt.Errorf("the bitmap for peer %s in the metadata on %s is corrupt (%d words for %d bits, or bits beyond the end): run `georepl invalidate` or create-md", p.node.Name, metaPlace(r.self), len(words), bits)
		}
		cfg.Bitmaps[p.id] = bm
	}
	return core.New(cfg)
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

func (r *resource) loop() {
	defer close(r.loopDone)
	persistTick := time.NewTicker(time.Second)
	defer persistTick.Stop()
	statusTick := time.NewTicker(250 * time.Millisecond)
	defer statusTick.Stop()
	e := r.engine
	for {
		select {
		case q := <-r.requests:
			r.nextReq++
			q.req.ID = r.nextReq
			r.pending[q.req.ID] = q.done
			e.Submit(q.req)
		case d := <-r.localDone:
			e.LocalDone(d.id, d.data, d.err)
		case in := <-r.frames:
			if p := r.peers[in.link.peer]; p.conn == in.link {
				e.Receive(in.link.peer, in.frame)
			}
		case l := <-r.linkUp:
			r.attachLink(l)
		case ld := <-r.linkDown:
			r.detachLink(ld.link, ld.err)
		case fn := <-r.calls:
			fn()
		case <-persistTick.C:
			r.persistBitmaps()
		case <-statusTick.C:
			r.publishStatus()
		case <-r.stop:
			r.shutdownLoop()
			return
		}
		r.process()
	}
}

func (r *resource) shutdownLoop() {
	for _, p := range r.peers {
		if p.conn != nil {
			p.conn.close(errors.New("resource going down"))
			r.engine.Disconnected(p.id)
			r.setConn(p, nil)
		}
	}
	r.process()
	r.persistBitmaps()
	for id, ch := range r.pending {
		ch <- fmt.Errorf("resource %s went down", r.cfg.Name)
		delete(r.pending, id)
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
	r.setConn(p, l)
	l.start()
	r.engine.Connected(p.id, l.hello)
	r.log.Info("connected", "peer", p.node.Name, "transport", l.transport, "remote", l.conn.RemoteAddr())
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
	r.mu.Lock()
	p.conn = l
	r.mu.Unlock()
}

func (r *resource) isUp() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.up
}

// process performs everything the engine asks for until it is quiet.
func (r *resource) process() {
	e := r.engine
	for e.HasReady() {
		rd := e.Ready()
		if rd.Persist != nil {
			if err := r.st.persist(rd.Persist); err != nil {
				// The metadata write failed: the disk is failing. Going on
				// would act on state that is not durable, so stop the
				// resource's replication and tell the operator.
				r.log.Error("writing metadata failed; the resource cannot continue safely", "err", err)
			}
		}
		for _, op := range rd.LocalOps {
			go r.runOp(op)
		}
		for i := range rd.Messages {
			m := &rd.Messages[i]
			if p := r.peers[m.To]; p != nil && p.conn != nil {
				p.conn.send(&m.Frame)
			}
		}
		for _, c := range rd.Completed {
			if ch, ok := r.pending[c.ID]; ok {
				delete(r.pending, c.ID)
				ch <- c.Err
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
	out := Event{Time: time.Now().UTC(), Resource: r.cfg.Name, Node: r.self.Name, What: ev.What, Old: ev.Old, New: ev.New, Detail: ev.Detail}
	if ev.HasPeer {
		if p := r.peers[ev.Peer]; p != nil {
			out.Peer = p.node.Name
		}
	}
	r.log.Info("state change", "what", out.What, "peer", out.Peer, "old", out.Old, "new", out.New, "detail", out.Detail)
	r.d.events.publish(out)
}

func (r *resource) runOp(op core.LocalOp) {
	var (
		data []byte
		err  error
	)
	dev := r.st.data
	off, n := int64(op.Offset), int64(op.Length)
	switch op.Kind {
	case core.OpWrite:
		if _, err = dev.WriteAt(op.Data, off); err == nil {
			r.diskWritten.Add(uint64(len(op.Data)))
		}
	case core.OpZeroes:
		err = dev.WriteZeroes(off, n)
	case core.OpTrim:
		err = dev.Punch(off, n)
	case core.OpFlush:
		err = dev.Sync()
	case core.OpRead:
		data = make([]byte, n)
		if _, err = dev.ReadAt(data, off); err == nil {
			r.diskRead.Add(uint64(n))
		}
	default:
		err = fmt.Errorf("unknown local operation %v", op.Kind)
	}
	if err == nil && op.FUA {
		err = dev.Sync()
	}
	r.localDone <- opDone{id: op.ID, data: data, err: err}
}

// submit hands an application request to the engine and waits for its
// completion.
func (r *resource) submit(ctx context.Context, req core.Request) error {
	q := &appRequest{req: req, done: make(chan error, 1)}
	select {
	case r.requests <- q:
	case <-r.loopDone:
		return fmt.Errorf("resource %s is down", r.cfg.Name)
	case <-ctx.Done():
		return ctx.Err()
	}
	// Once submitted, a request is waited for to the end: returning early
	// would let the client reuse a buffer the engine still owns.
	return <-q.done
}

// persistBitmaps writes the bitmaps' dirty pages; once all are on disk,
// the activity log may retire the extents the engine reports settled.
func (r *resource) persistBitmaps() {
	written := true
	for _, p := range r.peers {
		bm := r.engine.Bitmap(p.id)
		if bm == nil {
			continue
		}
		pages := bm.DirtyPages()
		if len(pages) == 0 {
			continue
		}
		if err := r.st.store.WriteBitmapPages(int(p.id), bm.Words(), pages); err != nil {
			r.log.Error("writing bitmap failed", "peer", p.node.Name, "err", err)
			written = false
			continue
		}
		bm.ClearDirty()
	}
	if written {
		r.st.al.observe(r.engine.Settled)
	}
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
