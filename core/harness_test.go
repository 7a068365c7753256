package core

import (
	"bytes"
	"errors"
	"fmt"
	"hash/crc32"
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/georepl/georepl/core/wire"
	"github.com/georepl/georepl/protocols"
)

// cluster wires N engines together in one goroutine: in-memory disks, one
// in-memory queue per direction of every link, and a driver loop that
// performs each Ready exactly as the package documentation asks. Nothing
// moves unless a command moves it, so every interleaving is reproducible.
//
// It also checks, whenever it sees them, the promises the engine makes:
// no secondary starts a write of a later epoch while a write of an earlier
// one is not done, and a write completed under protocol C is on the disk of
// every C peer that was replicating throughout.
type cluster struct {
	nodes    []*node
	size     uint64
	block    uint32
	out      *strings.Builder
	quiet    bool // do not log Ready contents
	trace    bool // also log every harness action (property tests)
	nextReq  RequestID
	failed   []string                                // violated promises
	lastDrop error                                   // the reason of the last Drop any engine asked for
	drops    []error                                 // every Drop reason, in order
	onDone   func(nd *node, id RequestID, err error) // sees every completion
	reads    map[RequestID][]byte                    // buffers of application reads in flight
	hellos   map[[2]int][2]wire.Hello                // handshakes begun (hello) and not yet connected
	noSpace  bool                                    // process fails operations for lack of space (ErrNoSpace)
}

type node struct {
	id        int
	cfg       Config
	eng       *Engine
	disk      []byte // what reads return
	durable   []byte // what survives a crash: with a volatile cache, flushed writes only
	volatile  bool   // the disk has a volatile write cache (modelled when DiskFlushes is set)
	uuids     uint64
	persisted Persistent
	bitmaps   map[NodeID][]uint64 // as last written back
	ops       []LocalOp           // issued, not yet performed
	links     []*link             // by peer node id; nil for itself
	failedIO  bool                // a failure was injected: protocol C checks exempt it
	// lackedSpace: a write failed here for lack of space; its Primary
	// may complete it (protocol C checks exempt it), but the node must
	// still converge.
	lackedSpace bool
	corrupted   bool // its disk was changed behind the engine's back (corrupt)
	metaLost    bool // its metadata writes fail: persisted state stays as it was
	crashing    bool // its engine is gone: nothing it does counts
	done        map[RequestID]error

	// Promise checks on the receiving side: the data writes delivered by
	// the current sender (rxFrom, on link generation rxGen) and not yet
	// performed, by seq; and those of earlier senders or lost
	// connections, which the engine still applies, oldest first (drain).
	rx     map[uint64]*rxEntry
	rxFrom int
	rxGen  int
	drain  []map[uint64]*rxEntry
	// On the primary: writes submitted and not yet completed.
	inflight map[RequestID]*appWrite
	// The driver's consistent-resync undo log (docs/architecture.md),
	// modelled once the undo command enabled it: a session runs from the
	// persist that first makes a consistent disk Inconsistent until one
	// that makes it anything but Inconsistent or Diskless; every write,
	// zeroing or trim first saves the old content of blocks not saved yet.
	undo      bool
	undoOn    bool
	undoSaved map[uint64][]byte
	undoCur   uint64
	undoHist  [2]uint64
	undoImage []byte // the disk when the session began, to check a rollback
}

// link is one direction's view of a connection from its owner to a peer.
type link struct {
	up         bool
	standAlone bool
	gen        int // increases at every disconnect
	queue      []wire.Frame
}

// rxEntry is a data write a secondary received.
type rxEntry struct {
	epoch  uint64
	issued bool
}

// endRx ends the receive session (the connection is lost, or another
// node sends): its writes are still applied, before any write of a later
// session.
func (nd *node) endRx() {
	if len(nd.rx) > 0 {
		nd.drain = append(nd.drain, nd.rx)
		nd.rx = map[uint64]*rxEntry{}
	}
	nd.rxFrom = -1
}

// session returns the writes op may belong to: the oldest ended
// session's while there is one, else the current one's.
func (nd *node) session() map[uint64]*rxEntry {
	if len(nd.drain) > 0 {
		return nd.drain[0]
	}
	return nd.rx
}

// rxDone forgets a performed write of the session it belongs to.
func (nd *node) rxDone(seq uint64) {
	s := nd.session()
	if r := s[seq]; r == nil || !r.issued {
		return
	}
	delete(s, seq)
	for len(nd.drain) > 0 && len(nd.drain[0]) == 0 {
		nd.drain = nd.drain[1:]
	}
}

// dropDrain forgets the writes of ended sessions not yet started: a
// Diskless node applies nothing more.
func (nd *node) dropDrain() {
	kept := nd.drain[:0]
	for _, s := range nd.drain {
		for seq, r := range s {
			if !r.issued {
				delete(s, seq)
			}
		}
		if len(s) > 0 {
			kept = append(kept, s)
		}
	}
	nd.drain = kept
}

// appWrite remembers what the application wrote, for the protocol C check.
type appWrite struct {
	off, length uint64
	data        []byte
	cPeers      map[int]int // C peers replicating at submit -> link gen
	overwritten bool
}

// newCluster builds n nodes, all Secondary, Inconsistent, never connected.
// protos[j-1] is the protocol between node 0 and node j (default C); links
// between other nodes use C. tweak, if set, adjusts every node's Config.
func newCluster(n int, protos []protocols.Protocol, tweak func(*Config)) *cluster {
	c := &cluster{out: &strings.Builder{}}
	for i := range n {
		cfg := Config{Self: NodeID(i), Name: "r0", Size: 64 << 10, BlockSize: 4096}
		nd := &node{id: i, bitmaps: map[NodeID][]uint64{}, links: make([]*link, n),
			done: map[RequestID]error{}, rx: map[uint64]*rxEntry{}, rxFrom: -1,
			inflight: map[RequestID]*appWrite{}}
		for j := range n {
			if j == i {
				continue
			}
			nd.links[j] = &link{}
			pr := protocols.C
			if i == 0 && j-1 < len(protos) {
				pr = protos[j-1]
			} else if j == 0 && i-1 < len(protos) {
				pr = protos[i-1]
			}
			cfg.Peers = append(cfg.Peers, PeerConfig{ID: NodeID(j), Name: fmt.Sprintf("n%d", j), Protocol: pr})
		}
		if tweak != nil {
			tweak(&cfg)
		}
		c.size, c.block = cfg.Size, cfg.BlockSize
		nd.disk, nd.durable = make([]byte, c.size), make([]byte, c.size)
		nd.volatile = cfg.DiskFlushes
		nd.cfg = cfg
		nd.persisted = Persistent{Disk: Inconsistent}
		c.nodes = append(c.nodes, nd)
		c.start(nd)
	}
	return c
}

// start (re)creates a node's engine from what it persisted.
func (c *cluster) start(nd *node) {
	cfg := nd.cfg
	cfg.State = clonePersistent(nd.persisted)
	cfg.Bitmaps = map[NodeID]*Bitmap{}
	for id, words := range nd.bitmaps {
		b, ok := BitmapFromWords(nd.cfg.Size/uint64(c.block), slices.Clone(words))
		if !ok {
			panic("harness: bad bitmap")
		}
		cfg.Bitmaps[id] = b
	}
	cfg.NewUUID = func() uint64 {
		nd.uuids++
		return uint64(nd.id+1)<<8 | nd.uuids
	}
	e, err := New(cfg)
	if err != nil {
		panic(err)
	}
	nd.eng = e
}

// resize grows nd's disk to size bytes, the new space filled with fill
// (what a grown volume may hold), and tells its engine: the driver's
// resize. Its bitmaps as last written back grow with the metadata.
func (c *cluster) resize(nd *node, size, cleanFrom uint64, fill byte) error {
	old := nd.cfg.Size
	if err := nd.eng.Resize(size, cleanFrom); err != nil {
		return err
	}
	if size == old {
		return nil
	}
	grow := func(b []byte) []byte {
		b = append(b, make([]byte, size-old)...)
		for i := old; i < size; i++ {
			b[i] = fill
		}
		return b
	}
	nd.disk, nd.durable = grow(nd.disk), grow(nd.durable)
	if nd.undoImage != nil {
		nd.undoImage = grow(nd.undoImage)
	}
	words := int((size/uint64(c.block) + 63) / 64)
	for id, w := range nd.bitmaps {
		nd.bitmaps[id] = append(w, make([]uint64, words-len(w))...)
	}
	nd.cfg.Size = size
	c.size = max(c.size, size)
	c.handle(nd)
	return nil
}

func (c *cluster) logf(format string, args ...any) {
	if !c.quiet {
		fmt.Fprintf(c.out, format+"\n", args...)
	}
}

func (c *cluster) tracef(format string, args ...any) {
	if c.trace {
		fmt.Fprintf(c.out, "== "+format+"\n", args...)
	}
}

func (c *cluster) fail(format string, args ...any) {
	c.failed = append(c.failed, fmt.Sprintf(format, args...))
	fmt.Fprintf(c.out, "VIOLATION: "+format+"\n", args...)
}

// handle performs everything a node's engine asks for until it is quiet.
func (c *cluster) handle(nd *node) {
	for nd.eng.HasReady() {
		rd := nd.eng.Ready()
		name := fmt.Sprintf("n%d", nd.id)
		if rd.PersistBitmaps {
			c.writeBitmaps(nd)
		}
		if rd.Persist != nil && nd.metaLost {
			c.logf("%s: persist (lost: the metadata disk fails) %s", name, fmtPersist(rd.Persist))
		} else if rd.Persist != nil {
			c.undoBegin(nd, rd.Persist)
			nd.persisted = clonePersistent(*rd.Persist)
			c.logf("%s: persist %s", name, fmtPersist(rd.Persist))
			c.undoEnd(nd, rd.Persist)
		}
		c.writeBitmaps(nd)
		for _, ev := range rd.Events {
			c.logf("%s: event %s", name, ev)
		}
		if nd.eng.disk == Diskless {
			nd.dropDrain()
		}
		for _, op := range rd.LocalOps {
			c.logf("%s: op %s", name, fmtOp(op))
			if op.Epoch > 0 && op.Kind != OpRead && op.Kind != OpChecksum && op.Kind != OpFlush && nd.eng.role != Primary {
				session := nd.session()
				r := session[op.Seq]
				if r == nil && len(nd.drain) > 0 {
					c.fail("n%d started seq %d of epoch %d while writes received before are still to apply", nd.id, op.Seq, op.Epoch)
				}
				for seq, other := range session {
					if r != nil && other.epoch < op.Epoch {
						c.fail("n%d started seq %d of epoch %d while seq %d of epoch %d is not done", nd.id, op.Seq, op.Epoch, seq, other.epoch)
					}
				}
				if r != nil {
					r.issued = true
				}
			}
			nd.ops = append(nd.ops, op)
		}
		for _, m := range rd.Messages {
			l := nd.links[m.To]
			c.logf("%s: ->n%d %s", name, m.To, fmtFrame(&m.Frame))
			if l.up {
				l.queue = append(l.queue, m.Frame)
			}
		}
		for _, d := range rd.Drop {
			c.logf("%s: drop n%d standalone=%v: %v", name, d.Peer, d.StandAlone, d.Reason)
			if errors.Is(d.Reason, ErrProtocol) {
				// Every engine here is correct: a violation means two of
				// them disagree about the state of their connection.
				c.fail("n%d saw a protocol violation from n%d: %v", nd.id, d.Peer, d.Reason)
			}
			c.lastDrop = d.Reason
			c.drops = append(c.drops, d.Reason)
			c.sever(nd, c.nodes[d.Peer], d.StandAlone)
		}
		for _, cp := range rd.Completed {
			buf, isRead := c.reads[cp.ID]
			delete(c.reads, cp.ID)
			switch {
			case cp.Err != nil:
				c.logf("%s: done req=%d err=%v", name, cp.ID, cp.Err)
			case isRead:
				c.logf("%s: done req=%d data=%s", name, cp.ID, runs(buf))
			default:
				c.logf("%s: done req=%d", name, cp.ID)
			}
			nd.done[cp.ID] = cp.Err
			if c.onDone != nil {
				c.onDone(nd, cp.ID, cp.Err)
			}
			if w := nd.inflight[cp.ID]; w != nil && cp.Err == nil && !w.overwritten {
				for peer, gen := range w.cPeers {
					pn := c.nodes[peer]
					if nd.links[peer].gen == gen && !pn.failedIO && !pn.lackedSpace && !bytes.Equal(pn.disk[w.off:w.off+w.length], w.data) {
						c.fail("req %d completed under protocol C but n%d does not have it", cp.ID, peer)
					}
				}
			}
			delete(nd.inflight, cp.ID)
		}
	}
}

// writeBitmaps writes a node's dirty bitmap pages back, unless its
// metadata writes fail.
func (c *cluster) writeBitmaps(nd *node) {
	for _, p := range nd.cfg.Peers {
		b := nd.eng.Bitmap(p.ID)
		if len(b.DirtyPages()) > 0 && !nd.metaLost {
			nd.bitmaps[p.ID] = slices.Clone(b.Words())
			b.ClearDirty()
		}
	}
}

// sever cuts the connection between a and b (both directions); each side
// learns it from Disconnected (or already knows it, having dropped it).
func (c *cluster) sever(a, b *node, standAlone bool) {
	c.tracef("sever n%d n%d", a.id, b.id)
	for _, pair := range [][2]*node{{a, b}, {b, a}} {
		x, y := pair[0], pair[1]
		l := x.links[y.id]
		if !l.up {
			continue
		}
		l.up, l.queue = false, nil
		l.gen++
		l.standAlone = l.standAlone || standAlone
		if y.rxFrom == x.id {
			y.endRx()
		}
	}
	for _, pair := range [][2]*node{{a, b}, {b, a}} {
		if x := pair[0]; !x.crashing {
			x.eng.Disconnected(NodeID(pair[1].id))
			c.handle(x)
		}
	}
}

// primaryInSync connects primary to each of others, promotes it by force
// and lets the initial sync finish.
func (c *cluster) primaryInSync(t *testing.T, primary *node, others ...*node) {
	t.Helper()
	for _, o := range others {
		if err := c.connect(primary, o); err != nil {
			t.Fatal(err)
		}
	}
	if err := primary.eng.Promote(true); err != nil {
		t.Fatal(err)
	}
	c.handle(primary)
	c.stabilize()
}

func (c *cluster) connect(a, b *node) error {
	if a.links[b.id].up {
		return fmt.Errorf("n%d and n%d are connected", a.id, b.id)
	}
	a.links[b.id].up, b.links[a.id].up = true, true
	a.links[b.id].standAlone, b.links[a.id].standAlone = false, false
	c.tracef("connect n%d n%d", a.id, b.id)
	h, ok := c.hellos[[2]int{a.id, b.id}]
	if ok {
		// The hellos were built earlier (hello command): whatever
		// happened since happened during the handshake.
		delete(c.hellos, [2]int{a.id, b.id})
	} else {
		h = [2]wire.Hello{a.eng.Hello(NodeID(b.id)), b.eng.Hello(NodeID(a.id))}
	}
	a.eng.Connected(NodeID(b.id), &h[0], &h[1])
	b.eng.Connected(NodeID(a.id), &h[1], &h[0])
	c.handle(a)
	c.handle(b)
	return nil
}

// hello starts a handshake between a and b: both engines build their
// hellos now, and the connect that follows delivers them, so that whatever
// happens in between happens during the handshake.
func (c *cluster) hello(a, b *node) {
	if c.hellos == nil {
		c.hellos = map[[2]int][2]wire.Hello{}
	}
	c.hellos[[2]int{a.id, b.id}] = [2]wire.Hello{a.eng.Hello(NodeID(b.id)), b.eng.Hello(NodeID(a.id))}
}

// deliver moves up to n frames (n < 0: all) from a to b, optionally only
// those of one channel; it reports how many moved.
func (c *cluster) deliver(a, b *node, n int, ch *wire.Channel) int {
	l := a.links[b.id]
	moved := 0
	for i := 0; i < len(l.queue) && (n < 0 || moved < n) && l.up; {
		f := l.queue[i]
		if ch != nil && wire.ChannelOf(f.Type) != *ch {
			i++
			continue
		}
		l.queue = append(l.queue[:i], l.queue[i+1:]...)
		moved++
		c.tracef("deliver n%d->n%d %s", a.id, b.id, fmtFrame(&f))
		if f.Type == wire.TypeData {
			if b.rxFrom != a.id || b.rxGen != l.gen {
				b.endRx()
				b.rxFrom, b.rxGen = a.id, l.gen
			}
			b.rx[f.Seq] = &rxEntry{epoch: f.Epoch}
		}
		b.eng.Receive(NodeID(a.id), &f)
		c.handle(b)
	}
	return moved
}

// process performs up to n of a node's pending local operations (n < 0:
// all those pending now), picking them with pick (index into the pending
// list), failing them if fail is set: for lack of space (ErrNoSpace, the
// operation changed nothing; only writes, zeroes and trims, the others
// succeed) if c.noSpace is set, else as a failing disk.
func (c *cluster) process(nd *node, n int, fail bool, pick func(int) int) int {
	if n < 0 {
		n = len(nd.ops)
	}
	moved := 0
	for ; moved < n && len(nd.ops) > 0; moved++ {
		i := 0
		if pick != nil {
			i = pick(len(nd.ops))
		}
		op := nd.ops[i]
		nd.ops = append(nd.ops[:i], nd.ops[i+1:]...)
		c.tracef("process n%d %s fail=%v", nd.id, fmtOp(op), fail)
		var data []byte
		var err error
		// Only what allocates can find no space: the rest succeeds.
		noSpace := fail && c.noSpace && (op.Kind == OpWrite || op.Kind == OpZeroes || op.Kind == OpTrim)
		switch {
		case noSpace:
			// The store had no room: the operation changed nothing,
			// and the disk is not failing, so the checks stay on.
			err = fmt.Errorf("%w: injected", ErrNoSpace)
			nd.lackedSpace = true
		case fail && !c.noSpace:
			nd.failedIO = true
			err = errors.New("injected failure")
			if nd.volatile && (op.Kind == OpFlush || op.FUA) {
				// A failed flush of a disk with a volatile cache may
				// have lost every write not yet durable: Linux reports
				// a writeback error once and drops the dirty pages,
				// and the next flush succeeds.
				copy(nd.disk, nd.durable)
			}
		default:
			switch op.Kind {
			case OpWrite, OpZeroes, OpTrim:
				c.undoSave(nd, op.Offset, op.Length)
			}
			switch op.Kind {
			case OpWrite:
				copy(nd.disk[op.Offset:], op.Data)
			case OpZeroes, OpTrim:
				clear(nd.disk[op.Offset : op.Offset+op.Length])
			case OpRead:
				data = slices.Clone(nd.disk[op.Offset : op.Offset+op.Length])
			case OpChecksum:
				if op.FUA {
					copy(nd.durable, nd.disk)
				}
				data = op.Csum.AppendDigests(nil, nd.disk[op.Offset:op.Offset+op.Length], int(op.BlockSize))
			case OpFlush:
				copy(nd.durable, nd.disk)
			}
			if op.Kind != OpRead && op.Kind != OpChecksum && (!nd.volatile || op.FUA) {
				copy(nd.durable[op.Offset:op.Offset+op.Length], nd.disk[op.Offset:op.Offset+op.Length])
			}
		}
		if op.Epoch > 0 && op.Kind != OpRead && op.Kind != OpChecksum && op.Kind != OpFlush && nd.eng.role != Primary {
			nd.rxDone(op.Seq)
		}
		nd.eng.LocalDone(op.ID, data, err)
		c.handle(nd)
	}
	return moved
}

// stabilize delivers and performs everything until nothing moves.
func (c *cluster) stabilize() {
	for {
		moved := 0
		for _, nd := range c.nodes {
			moved += c.process(nd, -1, false, nil)
		}
		for _, a := range c.nodes {
			for _, b := range c.nodes {
				if a != b {
					moved += c.deliver(a, b, -1, nil)
				}
			}
		}
		if moved == 0 {
			c.checkConverged()
			return
		}
	}
}

// checkConverged holds, once nothing moves, the promise that matters most:
// a node that reports UpToDate while replicating a Primary (Established,
// no marks on either side, nothing in flight) holds the Primary's data,
// byte for byte. Nodes whose disks failed or were corrupted behind the
// engine's back are exempt until a resync rewrites them.
func (c *cluster) checkConverged() {
	for _, p := range c.nodes {
		pst := p.eng.Status()
		if pst.Role != Primary || pst.Disk != UpToDate || pst.Pending > 0 || p.failedIO || p.corrupted {
			continue
		}
		for _, pp := range pst.Peers {
			q := c.nodes[pp.ID]
			if pp.Conn != Connected || pp.Repl != Established || pp.OutOfSync != 0 || pp.Unacked != 0 || q.failedIO || q.corrupted {
				continue
			}
			qst := q.eng.Status()
			if qst.Disk != UpToDate || qst.Peers[peerIndex(qst, NodeID(p.id))].OutOfSync != 0 {
				continue
			}
			if !bytes.Equal(p.disk, q.disk) {
				c.fail("n%d reports UpToDate and in sync with Primary n%d, but their disks differ (crc %08x, %08x)",
					q.id, p.id, crc32.ChecksumIEEE(q.disk), crc32.ChecksumIEEE(p.disk))
			}
		}
	}
}

// peerIndex finds peer id in a Status.
func peerIndex(st Status, id NodeID) int {
	for i, p := range st.Peers {
		if p.ID == id {
			return i
		}
	}
	panic(fmt.Sprintf("no peer %d in the status", id))
}

// crash loses a node's memory, its pending operations and its disk's
// volatile cache; it restarts from what it persisted, plus the marks its
// activity log calls for.
func (c *cluster) crash(nd *node) {
	c.tracef("crash n%d", nd.id)
	nd.crashing = true
	for _, other := range c.nodes {
		if other != nd && nd.links[other.id].up {
			c.sever(nd, other, false)
		}
	}
	nd.crashing = false
	// The driver's duty after an unclean shutdown: mark the activity
	// log's active extents for every peer. The harness's activity log has
	// one extent per block, retired once it is Settled and a local flush
	// made its writes durable.
	active := NewBitmap(nd.cfg.Size / uint64(c.block))
	bs := uint64(c.block)
	for b := range active.Len() {
		off := b * bs
		if !nd.eng.Settled(off, bs) || !bytes.Equal(nd.disk[off:off+bs], nd.durable[off:off+bs]) {
			active.SetRange(b, 1)
		}
	}
	nd.ops = nil
	nd.metaLost = false // the disk is repaired
	copy(nd.disk, nd.durable)
	clear(nd.inflight)
	clear(nd.rx)
	nd.drain = nil
	nd.rxFrom = -1
	if active.Count() > 0 {
		if nd.persisted.BitmapUUID == nil {
			nd.persisted.BitmapUUID = map[NodeID]uint64{}
		}
		for _, p := range nd.cfg.Peers {
			words := slices.Clone(nd.bitmaps[p.ID])
			if words == nil {
				words = make([]uint64, len(active.Words()))
			}
			for i, w := range active.Words() {
				words[i] |= w
			}
			nd.bitmaps[p.ID] = words
			if nd.persisted.BitmapUUID[p.ID] == 0 {
				nd.persisted.BitmapUUID[p.ID] = nd.persisted.Current
			}
		}
	}
	c.start(nd)
}

// undoBegin starts an undo session before the disk is first persisted
// Inconsistent over a consistent one.
func (c *cluster) undoBegin(nd *node, p *Persistent) {
	if !nd.undo || nd.undoOn || p.Disk != Inconsistent {
		return
	}
	switch nd.persisted.Disk {
	case Outdated, Consistent, UpToDate:
	default:
		return
	}
	nd.undoOn, nd.undoSaved = true, map[uint64][]byte{}
	nd.undoCur, nd.undoHist = nd.persisted.Current, nd.persisted.History
	nd.undoImage = slices.Clone(nd.disk)
	c.logf("n%d: undo session begins (image of cur=%x)", nd.id, nd.undoCur)
}

// undoEnd ends the session once the disk was persisted as something else.
func (c *cluster) undoEnd(nd *node, p *Persistent) {
	if !nd.undoOn || p.Disk == Inconsistent || p.Disk == Diskless {
		return
	}
	nd.undoOn, nd.undoSaved, nd.undoImage = false, nil, nil
	c.logf("n%d: undo session ends (disk %v)", nd.id, p.Disk)
}

// undoSave saves the old content of the blocks of [off, off+length) not
// saved yet in the session.
func (c *cluster) undoSave(nd *node, off, length uint64) {
	if !nd.undoOn {
		return
	}
	bs := uint64(c.block)
	for b := off / bs; b < (off+length+bs-1)/bs; b++ {
		if _, ok := nd.undoSaved[b]; !ok {
			nd.undoSaved[b] = slices.Clone(nd.disk[b*bs : (b+1)*bs])
		}
	}
}

// rollback is what the driver does when the operator promotes an
// interrupted sync target (or a crash interrupted that): the node loses
// its memory, every saved block is written back, the restored blocks are
// marked for every peer, and the node restarts Outdated with the
// generation ids of the session's start.
func (c *cluster) rollback(nd *node) error {
	if !nd.undoOn {
		return fmt.Errorf("n%d has no undo session", nd.id)
	}
	c.crash(nd)
	bs := uint64(c.block)
	restored := NewBitmap(nd.cfg.Size / bs)
	for b, old := range nd.undoSaved {
		copy(nd.disk[b*bs:], old)
		copy(nd.durable[b*bs:], old)
		restored.SetRange(b, 1)
	}
	if nd.persisted.BitmapUUID == nil {
		nd.persisted.BitmapUUID = map[NodeID]uint64{}
	}
	for _, p := range nd.cfg.Peers {
		words := slices.Clone(nd.bitmaps[p.ID])
		if words == nil {
			words = make([]uint64, len(restored.Words()))
		}
		for i, w := range restored.Words() {
			words[i] |= w
		}
		nd.bitmaps[p.ID] = words
		if nd.persisted.BitmapUUID[p.ID] == 0 {
			nd.persisted.BitmapUUID[p.ID] = nd.undoCur
		}
	}
	nd.persisted.Disk, nd.persisted.Primary = Outdated, false
	nd.persisted.Current, nd.persisted.History = nd.undoCur, nd.undoHist
	c.logf("n%d: rolled back %d blocks; the image is the one of the session's start: %v", nd.id, restored.Count(), bytes.Equal(nd.disk, nd.undoImage))
	nd.undoOn, nd.undoSaved, nd.undoImage = false, nil, nil
	c.start(nd)
	return nil
}

// discard is the operator's way out of split brain or unrelated data: the
// node (which must not be Primary) forgets its generation ids and bitmaps
// and restarts as a new, Inconsistent node; its next Primary resyncs it
// fully.
func (c *cluster) discard(nd *node) {
	c.tracef("discard n%d", nd.id)
	c.crash(nd)
	nd.persisted = Persistent{Disk: Inconsistent}
	clear(nd.bitmaps)
	c.start(nd)
	for _, l := range nd.links {
		if l != nil {
			l.standAlone = false
		}
	}
	for _, other := range c.nodes {
		if other != nd {
			other.links[nd.id].standAlone = false
		}
	}
}

func (c *cluster) submit(nd *node, r Request) {
	c.nextReq++
	r.ID = c.nextReq
	c.logf("n%d: submit req=%d %v off=%d len=%d", nd.id, r.ID, r.Kind, r.Offset, r.Length)
	if r.Kind == ReqRead {
		if c.reads == nil {
			c.reads = map[RequestID][]byte{}
		}
		c.reads[r.ID] = r.Data
	} else if r.Kind != ReqFlush {
		for _, w := range nd.inflight {
			if w.off < r.Offset+r.Length && r.Offset < w.off+w.length {
				w.overwritten = true
			}
		}
		w := &appWrite{off: r.Offset, length: r.Length, data: r.Data, cPeers: map[int]int{}}
		if r.Kind != ReqWrite {
			w.data = make([]byte, r.Length)
		}
		for _, p := range nd.eng.peers {
			if p.cfg.Protocol == protocols.C && p.replicating() {
				w.cPeers[int(p.cfg.ID)] = nd.links[p.cfg.ID].gen
			}
		}
		nd.inflight[r.ID] = w
	}
	nd.eng.Submit(r)
	c.handle(nd)
}

func (c *cluster) disks() string {
	var b strings.Builder
	ref := c.nodes[0].disk
	equal := true
	for _, nd := range c.nodes {
		fmt.Fprintf(&b, "n%d: crc=%08x\n", nd.id, crc32.ChecksumIEEE(nd.disk))
		equal = equal && bytes.Equal(nd.disk, ref)
	}
	if equal {
		b.WriteString("all equal\n")
	}
	return b.String()
}

func (c *cluster) status(nd *node) string {
	var b strings.Builder
	st := nd.eng.Status()
	fmt.Fprintf(&b, "n%d: %v %v cur=%x hist=%x,%x epoch=%d pending=%d", nd.id, st.Role, st.Disk, st.Current,
		st.History[0], st.History[1], st.Epoch, st.Pending)
	if st.Term != 0 {
		fmt.Fprintf(&b, " term=%d", st.Term)
	}
	if st.Fenced {
		b.WriteString(" fenced")
	}
	b.WriteString("\n")
	if st.QuorumNeed > 0 {
		fmt.Fprintf(&b, "  quorum %d/%d %v\n", st.QuorumHave, st.QuorumNeed, map[bool]string{true: "have", false: "lost"}[st.Quorate])
	}
	for _, p := range st.Peers {
		same := ""
		if p.ResyncSame > 0 {
			same = fmt.Sprintf(" same=%d", p.ResyncSame)
		}
		if p.ResyncPaused {
			same += " paused"
		}
		fmt.Fprintf(&b, "  n%d %v %v %v peer=%v/%v oos=%d resync=%d/%d%s unacked=%d bm=%x\n", p.ID, p.Protocol, p.Conn, p.Repl,
			p.Role, p.Disk, p.OutOfSync, p.ResyncDone, p.ResyncTotal, same, p.Unacked, p.BitmapUUID)
		if v := p.Verify; v != nil {
			fmt.Fprintf(&b, "    verify running=%v %d/%d out-of-sync=%d ranges=%v more=%v stopped=%q\n", v.Running, v.Done, v.Total, v.OutOfSync, v.Ranges, v.More, v.Stopped)
		}
	}
	return b.String()
}

// clonePersistent copies p, so that the engine and the "metadata" share
// no map.
func clonePersistent(p Persistent) Persistent {
	p.BitmapUUID = maps.Clone(p.BitmapUUID)
	return p
}

func fmtPersist(p *Persistent) string {
	s := fmt.Sprintf("disk=%v primary=%v cur=%x hist=%x,%x", p.Disk, p.Primary, p.Current, p.History[0], p.History[1])
	ids := slices.Sorted(maps.Keys(p.BitmapUUID))
	for _, id := range ids {
		s += fmt.Sprintf(" bm[n%d]=%x", id, p.BitmapUUID[id])
	}
	if p.Promoted != 0 {
		s += fmt.Sprintf(" promoted=%d", p.Promoted)
	}
	if p.Term != 0 {
		s += fmt.Sprintf(" term=%d", p.Term)
	}
	return s
}

func fmtOp(op LocalOp) string {
	s := fmt.Sprintf("#%d %v", op.ID, op.Kind)
	if op.Kind != OpFlush {
		s += fmt.Sprintf(" off=%d len=%d", op.Offset, op.Length)
	}
	if op.Seq != 0 {
		s += fmt.Sprintf(" seq=%d ep=%d", op.Seq, op.Epoch)
	}
	if op.Kind == OpChecksum {
		s += " " + op.Csum.String()
	}
	if op.FUA {
		s += " fua"
	}
	return s
}

var flagNames = []struct {
	f    wire.Flags
	name string
}{
	{wire.FlagFUA, "fua"}, {wire.FlagFlush, "flush"}, {wire.FlagZeroes, "zeroes"}, {wire.FlagTrim, "trim"},
	{wire.FlagWantRecvAck, "want-recv-ack"}, {wire.FlagNegative, "negative"}, {wire.FlagResync, "resync"},
}

func fmtFrame(f *wire.Frame) string {
	s := f.Type.String()
	switch f.Type {
	case wire.TypeData:
		s += fmt.Sprintf(" seq=%d ep=%d off=%d len=%d", f.Seq, f.Epoch, f.Offset, f.Length)
	case wire.TypeResyncData:
		s += fmt.Sprintf(" seq=%d off=%d len=%d", f.Seq, f.Offset, f.Length)
	case wire.TypeResyncCsum, wire.TypeVerifyCsum:
		s += fmt.Sprintf(" seq=%d off=%d len=%d %v", f.Seq, f.Offset, f.Length, wire.Csum(f.Payload[0]))
	case wire.TypeResyncCsumReply, wire.TypeVerifyReply:
		if len(f.Payload) == 0 {
			s += fmt.Sprintf(" seq=%d off=%d len=%d all-same", f.Seq, f.Offset, f.Length)
		} else {
			s += fmt.Sprintf(" seq=%d off=%d len=%d differ=%x", f.Seq, f.Offset, f.Length, f.Payload)
		}
	case wire.TypeOutOfSync:
		s += fmt.Sprintf(" off=%d len=%d", f.Offset, f.Length)
	case wire.TypeReadRequest, wire.TypeReadReply:
		s += fmt.Sprintf(" tag=%d off=%d len=%d", f.Seq, f.Offset, f.Length)
	case wire.TypeRecvAck, wire.TypeWriteAck:
		s += fmt.Sprintf(" seq=%d", f.Seq)
	case wire.TypeBarrier:
		s += fmt.Sprintf(" ep=%d confirmed=%d holders=%s", f.Epoch, f.Seq, nodeSet(f.Offset))
	case wire.TypeBarrierAck:
		s += fmt.Sprintf(" ep=%d", f.Epoch)
	case wire.TypeResyncDone:
		s += fmt.Sprintf(" holders=%s", nodeSet(f.Offset))
		if f.Seq != 0 {
			s += fmt.Sprintf(" unconfirmed=%d", f.Seq)
		}
	case wire.TypeStateChange:
		var st wire.State
		if err := st.UnmarshalBinary(f.Payload); err == nil {
			s += fmt.Sprintf(" %v %v %v cur=%x hist=%x,%x bm=%x", Role(st.Role), DiskState(st.Disk), ReplState(st.Repl),
				st.Gen.Current, st.Gen.History[0], st.Gen.History[1], st.Gen.Bitmap)
			if st.Term != 0 {
				s += fmt.Sprintf(" term=%d", st.Term)
			}
		}
	}
	for _, fl := range flagNames {
		if f.Flags&fl.f != 0 {
			s += " " + fl.name
		}
	}
	return s
}

// nodeSet shows a set of node ids (bit i: node i) as "n0,n2".
func nodeSet(set uint64) string {
	var ids []string
	for i := range MaxNodes {
		if set&(1<<i) != 0 {
			ids = append(ids, fmt.Sprintf("n%d", i))
		}
	}
	return strings.Join(ids, ",")
}
