package sim

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/georepl/georepl/cmd/georepl/internal/admin"
	"github.com/georepl/georepl/cmd/georepl/internal/checker"
	"github.com/georepl/georepl/cmd/georepl/internal/node"
	"github.com/georepl/georepl/configs"
	"github.com/georepl/georepl/core"
	"github.com/georepl/georepl/core/meta"
	"github.com/georepl/georepl/kmod"
	"github.com/georepl/georepl/kmod/nbd"
	"github.com/georepl/georepl/transports"
)

const (
	resourceName = "r0"
	transport    = "sim"
	// extents is the data size in activity-log extents: more than the
	// smallest activity log (7), so that writes contend for its slots.
	extents  = 8
	dataSize = extents * meta.ActivityLogExtentSize
	// extentSize is an activity-log extent's size, as an offset.
	extentSize = int64(meta.ActivityLogExtentSize)
	blockSize  = checker.BlockSize
	// hotBlocks is how many blocks of each extent the application
	// writes: few, so that writes to one block follow each other.
	hotBlocks = 4
)

var nodeNames = []string{"alpha", "bravo", "charlie"}

// world is one simulated cluster: its nodes, disks and network, the
// application's operations and the model they are checked against. One
// goroutine, the scheduler's, drives it; the nodes' goroutines call into
// the disks and the network. mu guards everything the nodes' goroutines
// touch (disks, network, pending operations) and the model.
type world struct {
	p      Params
	rng    *rand.Rand
	cfg    *configs.Config
	logger *slog.Logger
	trace  *tracer

	mu        sync.Mutex
	closers   sync.WaitGroup // Close of dead incarnations
	clients   sync.WaitGroup // the application's operations in flight
	nodes     []*simNode
	incs      []*incarnation // every incarnation started
	listeners map[string]*listener
	conns     []*conn
	connIDs   map[[2]string]int
	cuts      map[[2]string]bool
	// offered: the first node offered the second to discard its data
	// after a split brain.
	offered   map[[2]string]bool
	ops       []*diskOp
	opCount   uint64
	m         *model
	clientOps []*clientOp
	inFlight  map[uint64]bool // blocks with a write in flight
	// app is the node the application runs on (the last promoted
	// Primary), nil while there is none.
	app *simNode
	// wasHealthy: the cluster was healthy once (faults may begin).
	wasHealthy bool
	// violations are the broken promises found, in order; ignored those
	// of the classes in ignore.
	violations, ignored []Violation
	ignore              map[string]bool
	// avoid names the situations the scheduler steers clear of (see Run).
	avoid map[string]bool
}

// simNode is one node: its disks persist across incarnations (process
// runs); each start is a new incarnation with a new daemon.
type simNode struct {
	w          *world
	name       string
	id         int
	data, meta *disk
	gen        int
	up         bool // the process runs
	inc        *incarnation
	st         *node.ResourceStatus // as of the last step (nil: not up)
	// lastDisk is the disk state seen at the previous step.
	lastDisk string
	// crashedAt is the model clock of the last crash or power loss.
	crashedAt uint64
	// torn: a power loss dropped writes from the cache; the image need
	// not be write-order consistent until a resync into it completed.
	torn bool
	// term is the term this node is Primary of (nil if none);
	// basePending: promoted, the base not yet taken.
	term        *term
	basePending bool
	// forcedDisk: the engine reported a promotion that forced a disk
	// not UpToDate (event "disk ...->UpToDate: forced"), not yet matched
	// with its term's base. A promotion asked while the disk was
	// UpToDate may take effect after it stopped being so (a resync
	// began meanwhile): then --force is what promoted it.
	forcedDisk bool
	// stopped: the application stopped writing here (a demotion was
	// asked for).
	stopped bool
	// checkedAt is the disk change count and state of the last image
	// check, to skip unchanged images.
	checkedAt string
	// log, logBitmaps and logNoGen are what durableLog read when the
	// metadata file's change count was logAt (checkCached).
	log        map[uint64]bool
	logBitmaps map[string][]uint64
	logNoGen   bool
	logAt      uint64
}

// incarnation is one run of a node's process.
type incarnation struct {
	gen  int
	d    *node.Daemon
	dev  nbd.Device // the resource's local device, once up
	busy int        // administrative requests in flight
	// starting: an up runs; Close must wait for it, or it would miss
	// what the up starts.
	starting bool
	dead     bool
	closed   bool
	admin    *adminOp
	// events are the daemon's state changes: a node's status is fetched
	// again only after some (or an administrative request).
	events      <-chan node.Event
	unsubscribe func()
	stale       bool
}

type adminOp struct {
	inc  *incarnation
	req  admin.Request
	done bool
	err  error
	// seen: the scheduler has acted on its result.
	seen bool
	// upToDate: a promotion asked while the node was UpToDate and not
	// torn, which promises (a) and (b).
	upToDate bool
}

type clientOp struct {
	n        *simNode
	inc      *incarnation
	t        *term
	flush    bool
	ws       []*mwrite
	issuedAt uint64
	done     bool
}

// Params are one schedule's settings, drawn from its seed.
type Params struct {
	Seed uint64
	// Protocols per connection, keyed by the two node names in id order.
	Protocols map[[2]string]string
	// Flushes is the disk block's flushes.
	Flushes bool
	// Steps is the number of scheduler steps before the final settle.
	Steps int
	// AppShare is resync_min_app_share: 0 lets a resync take the whole
	// link, more keeps it behind the application's writes.
	AppShare float64
	// IOErrors: data disk reads and writes may fail (a third of the
	// schedules; drawn last, so that the schedules without them are the
	// ones their seeds named before I/O errors existed).
	IOErrors bool
}

func drawParams(seed uint64) Params {
	rng := rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15))
	p := Params{Seed: seed, Protocols: map[[2]string]string{}, Flushes: rng.IntN(4) == 0, Steps: 150 + rng.IntN(250),
		AppShare: []float64{0, 0.3}[rng.IntN(2)]}
	for i := range nodeNames {
		for j := i + 1; j < len(nodeNames); j++ {
			p.Protocols[[2]string{nodeNames[i], nodeNames[j]}] = []string{"A", "B", "C"}[rng.IntN(3)]
		}
	}
	p.IOErrors = rng.IntN(3) == 0
	return p
}

func (p Params) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "seed=%d steps=%d flushes=%v app_share=%v io_errors=%v", p.Seed, p.Steps, p.Flushes, p.AppShare, p.IOErrors)
	for i := range nodeNames {
		for j := i + 1; j < len(nodeNames); j++ {
			pair := [2]string{nodeNames[i], nodeNames[j]}
			fmt.Fprintf(&b, " %s-%s:%s", pair[0], pair[1], p.Protocols[pair])
		}
	}
	return b.String()
}

func (p Params) config() string {
	var b strings.Builder
	fmt.Fprintf(&b, `resource %q {
  protocol = "C"
  net {
    transport     = %q
    compression   = "none"
    shared_secret = "sim"
    ping_interval = "1s"
    timeout       = "3s"
    connect_retry = "100ms"
    resync_min_app_share = %v
  }
  disk {
    al_extents = 7
    flushes    = %v
  }
`, resourceName, transport, p.AppShare, p.Flushes)
	for i, n := range nodeNames {
		fmt.Fprintf(&b, "  node %q {\n    id = %d\n    address = %q\n    disk = %q\n    meta_disk = %q\n  }\n", n, i, n+":7789", n+".data", n+".meta")
	}
	for i := range nodeNames {
		for j := i + 1; j < len(nodeNames); j++ {
			pair := [2]string{nodeNames[i], nodeNames[j]}
			fmt.Fprintf(&b, "  connection %q %q {\n    protocol = %q\n  }\n", pair[0], pair[1], p.Protocols[pair])
		}
	}
	b.WriteString("}\n")
	return b.String()
}

// newWorld builds the cluster of p, every node down, with identical
// zeroed disks in one generation (as after create-md on each and a
// skipped initial sync). It must run inside a testing/synctest bubble.
func newWorld(p Params, trace *tracer, logger *slog.Logger, ignore, avoid map[string]bool) (*world, error) {
	cfg, err := configs.Parse("sim.hcl", []byte(p.config()), configs.LoadOptions{Transports: []string{transport}})
	if err != nil {
		return nil, fmt.Errorf("sim configuration: %w", err)
	}
	w := &world{
		p: p, rng: rand.New(rand.NewPCG(p.Seed, 1)), cfg: cfg, logger: logger, trace: trace,
		listeners: map[string]*listener{}, connIDs: map[[2]string]int{}, cuts: map[[2]string]bool{}, offered: map[[2]string]bool{},
		inFlight: map[uint64]bool{}, ignore: ignore, avoid: avoid,
		m: newModel(p.Seed|1<<63, dataSize/blockSize),
	}
	for i, name := range nodeNames {
		n := &simNode{w: w, name: name, id: i}
		n.data = newDisk(w, name, name+".data", dataSize, true)
		n.meta = newDisk(w, name, name+".meta", meta.ExternalSize(dataSize, len(nodeNames), blockSize), false)
		pages, err := initialMetadata()
		if err != nil {
			return nil, fmt.Errorf("metadata of %s: %w", name, err)
		}
		n.meta.durable, n.meta.view = maps(pages[i]), maps(pages[i])
		w.nodes = append(w.nodes, n)
	}
	first := w.m.newTerm("", false) // the data every node starts with: zeroes
	first.based = true
	return w, nil
}

// initialGeneration is the generation id every node's data starts in.
const initialGeneration = 0x5eed

// initialMetadata returns the pages of node id's metadata before the
// first start: UpToDate in initialGeneration, nothing marked. Every
// schedule starts from the same, so it is made once; pages are never
// written in place (apply copies), so schedules share them.
var initialMetadata = sync.OnceValues(func() ([]map[int64][]byte, error) {
	var all []map[int64][]byte
	for i := range nodeNames {
		d := newDisk(&world{}, nodeNames[i], "meta", meta.ExternalSize(dataSize, len(nodeNames), blockSize), false)
		store, err := meta.Create(&diskHandle{d: d}, 0, meta.Params{
			Resource: resourceName, NodeID: uint8(i), Slots: len(nodeNames), DataSize: dataSize,
			BlockSize: blockSize, DiskState: uint8(core.UpToDate),
		}, false)
		if err != nil {
			return nil, err
		}
		if err := store.UpdateSuperblock(func(sb *meta.Superblock) { sb.Current = initialGeneration }); err != nil {
			return nil, err
		}
		all = append(all, d.durable)
	}
	return all, nil
})

func (w *world) node(name string) *simNode {
	for _, n := range w.nodes {
		if n.name == name {
			return n
		}
	}
	return nil
}

// start runs a new incarnation of n and brings the resource up.
func (w *world) start(n *simNode) error {
	w.mu.Lock()
	n.gen++
	n.up = true
	n.data.gen, n.meta.gen = n.gen, n.gen
	gen := n.gen
	ep := &endpoint{w: w, node: n, gen: gen}
	w.mu.Unlock()
	d, err := node.NewDaemon(w.cfg, n.name, w.logger, node.Options{
		Transports: func(name string) (transports.Transport, error) {
			if name != transport {
				return nil, fmt.Errorf("sim: no transport %q", name)
			}
			return ep, nil
		},
		OpenDevice: func(path string) (node.Device, error) {
			switch path {
			case n.data.name:
				return &diskHandle{d: n.data, gen: gen}, nil
			case n.meta.name:
				return &diskHandle{d: n.meta, gen: gen}, nil
			}
			return nil, fmt.Errorf("sim: node %s has no disk %q", n.name, path)
		},
	})
	if err != nil {
		return err
	}
	events, unsubscribe := d.Subscribe()
	w.mu.Lock()
	n.inc = &incarnation{gen: gen, d: d, events: events, unsubscribe: unsubscribe}
	w.incs = append(w.incs, n.inc)
	n.st, n.lastDisk, n.checkedAt = nil, "", ""
	w.mu.Unlock()
	w.admin(n, admin.Request{Verb: "up"})
	return nil
}

// admin runs an administrative request on n's daemon, on a goroutine of
// its own: like an operator's command, it may wait for the cluster.
func (w *world) admin(n *simNode, req admin.Request) {
	req.Resource = resourceName
	w.mu.Lock()
	inc := n.inc
	op := &adminOp{inc: inc, req: req}
	inc.admin = op
	inc.busy++
	inc.starting = inc.starting || req.Verb == "up"
	w.mu.Unlock()
	go func() {
		err := inc.d.HandleAdmin(context.Background(), req, func(admin.Reply) error { return nil })
		var dev nbd.Device
		if req.Verb == "up" && err == nil {
			dev, err = inc.d.LocalDevice(resourceName)
		}
		w.mu.Lock()
		defer w.mu.Unlock()
		op.done, op.err = true, err
		inc.stale = true
		if dev != nil {
			inc.dev = dev
		}
		inc.busy--
		if req.Verb == "up" {
			inc.starting = false
		}
		w.reapLocked(inc)
	}()
}

// reapLocked closes a dead incarnation's daemon once no operation of the
// scheduler's runs on it, so that its goroutines end. Called with mu held.
func (w *world) reapLocked(inc *incarnation) {
	if !inc.dead || inc.closed || inc.starting {
		return
	}
	inc.closed = true
	w.closers.Add(1)
	go func() { // its disks and connections are fenced: only its goroutines are left
		defer w.closers.Done()
		inc.d.Close()
	}()
}

// crash kills n's process; with power, the node also loses power: its
// disks' volatile caches are lost.
func (w *world) crash(n *simNode, power bool) {
	w.mu.Lock()
	// Its image as it stops being Primary, before a power loss tears it.
	w.endTermLocked(n, "gone")
	n.up = false
	inc := n.inc
	n.inc, n.st = nil, nil
	for _, d := range []*disk{n.data, n.meta} {
		d.gen++
		w.failOps(d)
	}
	for addr, l := range w.listeners {
		if l.ep.node == n {
			l.closeLocked()
			delete(w.listeners, addr)
		}
	}
	for _, c := range slices.Clone(w.conns) {
		if c.ends[0].ep.node == n || c.ends[1].ep.node == n {
			c.cut()
		}
	}
	var before map[int64][]byte
	if power {
		before = n.data.view
		if n.data.powerLoss(w.rng) {
			n.torn = true
		}
		n.meta.powerLoss(w.rng)
	}
	n.crashedAt = w.m.tick()
	n.stopped = false
	if w.app == n {
		w.app = nil
	}
	if inc != nil {
		inc.unsubscribe()
		inc.dead = true
		w.reapLocked(inc)
	}
	w.mu.Unlock()
	if power {
		w.checkCoverage(n, before)
	}
}

// discard gives n new metadata, as an operator does for a node whose
// data is unrelated to its peers' (create-md --force): Inconsistent, no
// generation; it is then fully resynchronised.
func (w *world) discard(n *simNode) {
	w.crash(n, false)
	if _, err := meta.Create(&diskHandle{d: n.meta, gen: n.meta.gen}, 0, meta.Params{
		Resource: resourceName, NodeID: uint8(n.id), Slots: len(nodeNames), DataSize: dataSize,
		BlockSize: blockSize, DiskState: uint8(core.Inconsistent),
	}, true); err != nil {
		w.violate("harness", "create-md on %s: %v", n.name, err)
		return
	}
	w.restart(n)
}

// release drops the world's data once the schedule is over: goroutines a
// node leaked (a bug the schedule reports) still reach the world through
// their disks, and must not keep its pages alive.
func (w *world) release() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, n := range w.nodes {
		for _, d := range []*disk{n.data, n.meta} {
			d.durable, d.view, d.cache = nil, nil, nil
		}
	}
	w.m = nil
	w.conns, w.clientOps = nil, nil
}

// checkCoverage holds, after a power loss of n, what the activity log is
// for: every block whose content the loss changed (a write in the volatile
// cache that did not reach the medium) lies in an extent the durable
// activity log names, or is marked out of sync for every peer. Otherwise
// nothing resynchronises it when the node returns, and it differs from its
// peers unnoticed. before is the disk's view before the loss.
func (w *world) checkCoverage(n *simNode, before map[int64][]byte) {
	w.mu.Lock()
	lost, uncovered := w.lostPages(n, before), []string(nil)
	w.mu.Unlock()
	if len(lost) == 0 {
		return
	}
	active, bitmaps, _, ok := w.durableLog(n)
	if !ok {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, pg := range lost {
		if !covered(pg, active, bitmaps) {
			uncovered = append(uncovered, fmt.Sprintf("block %d (extent %d): held %s, now %s", pg, uint64(pg)*pageSize/meta.ActivityLogExtentSize,
				w.describePage(pg, before[pg]), w.describePage(pg, n.data.durable[pg])))
		}
	}
	if len(uncovered) > 0 {
		w.violate("a", "%s lost power; blocks whose writes the loss dropped are in no extent of its activity log and not marked for its peers, so nothing resynchronises them: %s",
			n.name, summarize(uncovered))
	}
}

// durableLog reads, from what n's metadata file holds durably, the
// activity log's extents and the bitmap of each peer (by name), in which a
// node without a generation (noGen) counts its sources' marks for it as
// its own; ok is false when there is nothing to hold (no metadata,
// Diskless, or waiting for a full resync).
func (w *world) durableLog(n *simNode) (active map[uint64]bool, bitmaps map[string][]uint64, noGen, ok bool) {
	w.mu.Lock()
	pages := maps(n.meta.durable)
	w.mu.Unlock()
	store, err := meta.Open(durableDevice{pages: pages, size: n.meta.size}, 0)
	if err != nil {
		w.violate("harness", "%s: durable metadata unreadable: %v", n.name, err)
		return nil, nil, false, false
	}
	sb := store.Superblock()
	if core.DiskState(sb.DiskState) == core.Diskless {
		return nil, nil, false, false
	}
	if sb.Current == 0 && !slices.ContainsFunc(sb.BitmapUUID, func(id uint64) bool { return id != 0 }) {
		// No generation and no initial sync to resume (fresh metadata:
		// create-md): the next resync into n is full, and nothing its
		// disk holds is promised until then.
		return nil, nil, false, false
	}
	extents, err := store.ReadActivityLog()
	if err != nil {
		w.violate("a", "%s: the durable activity log is unreadable: %v", n.name, err)
		return nil, nil, false, false
	}
	active = map[uint64]bool{}
	for _, x := range extents {
		active[x] = true
	}
	bitmaps = map[string][]uint64{}
	for _, p := range w.nodes {
		if p != n {
			words, err := store.ReadBitmap(p.id)
			if err != nil {
				w.violate("harness", "%s: durable bitmap for %s unreadable: %v", n.name, p.name, err)
				return nil, nil, false, false
			}
			bitmaps[p.name] = words
		}
	}
	if sb.Current == 0 {
		// No generation yet, an initial sync to resume: a block its
		// source still marks for n will be written again whatever n's
		// disk holds.
		for _, p := range w.nodes {
			if p == n {
				continue
			}
			marks := w.durableMarksFor(p, n)
			for name, words := range bitmaps {
				for i := range min(len(words), len(marks)) {
					words[i] |= marks[i]
				}
				bitmaps[name] = words
			}
		}
	}
	return active, bitmaps, sb.Current == 0, true
}

// durableMarksFor returns the blocks p's durable metadata marks out of
// sync for n (nil when p has none readable).
func (w *world) durableMarksFor(p, n *simNode) []uint64 {
	w.mu.Lock()
	pages := maps(p.meta.durable)
	w.mu.Unlock()
	store, err := meta.Open(durableDevice{pages: pages, size: p.meta.size}, 0)
	if err != nil {
		return nil
	}
	words, err := store.ReadBitmap(n.id)
	if err != nil {
		return nil
	}
	return words
}

// covered reports whether block pg would be resynchronised after an
// unclean restart: its extent is in the activity log, or it is marked for
// every peer.
func covered(pg int64, active map[uint64]bool, bitmaps map[string][]uint64) bool {
	if active[uint64(pg)*pageSize/meta.ActivityLogExtentSize] {
		return true
	}
	for _, words := range bitmaps {
		if words[pg/64]&(1<<(pg%64)) == 0 {
			return false
		}
	}
	return true
}

// checkCached holds, at every step, the activity log's invariant behind
// checkCoverage: every write n's disk holds only in its volatile cache
// (a power loss now would drop it) is covered (see covered). The durable
// log is read again only when the metadata file changed; pages are looked
// at only in extents the log does not name.
func (w *world) checkCached(n *simNode) {
	w.mu.Lock()
	exts := make([]int64, 0, len(n.data.cachedExt))
	for x := range n.data.cachedExt {
		exts = append(exts, x)
	}
	changed := n.meta.changed
	w.mu.Unlock()
	if len(exts) == 0 {
		return
	}
	if n.logAt != changed || n.log == nil || n.logNoGen {
		// A node without a generation counts its sources' marks too,
		// which change with their metadata: read again every step.
		active, bitmaps, noGen, ok := w.durableLog(n)
		if !ok {
			return
		}
		n.log, n.logBitmaps, n.logNoGen, n.logAt = active, bitmaps, noGen, changed
	}
	outside := map[int64]bool{}
	for _, x := range exts {
		if !n.log[uint64(x)] {
			outside[x] = true
		}
	}
	if len(outside) == 0 {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	var uncovered []string
	seen := map[int64]bool{}
	for _, c := range n.data.cache {
		for off := c.off; off < c.off+c.len; off = (off/pageSize + 1) * pageSize {
			pg := off / pageSize
			if seen[pg] || !outside[off/extentSize] || covered(pg, n.log, n.logBitmaps) {
				continue
			}
			seen[pg] = true
			by := "this process"
			if c.gen != n.data.gen {
				by = "a process that crashed"
			}
			uncovered = append(uncovered, fmt.Sprintf("block %d (extent %d) holds %s, written by %s", pg, off/extentSize, w.describePage(pg, n.data.view[pg]), by))
		}
	}
	if len(uncovered) > 0 {
		w.violate("a", "%s's disk holds writes in its volatile cache only, in extents its durable activity log no longer names and not marked for its peers: a power loss now would lose them and nothing would resynchronise them: %s",
			n.name, summarize(uncovered))
	}
}

// durableDevice reads what a disk holds durably (meta.Device).
type durableDevice struct {
	pages map[int64][]byte
	size  int64
}

func (d durableDevice) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > d.size {
		return 0, fmt.Errorf("sim: read [%d, +%d) of %d bytes: %w", off, len(p), d.size, kmod.ErrOutOfBounds)
	}
	for done := 0; done < len(p); {
		at := off + int64(done)
		pg, in := at/pageSize, at%pageSize
		done += copy(p[done:], pageOrZero(d.pages[pg])[in:])
	}
	return len(p), nil
}

func (d durableDevice) WriteAt([]byte, int64) (int, error) {
	return 0, errors.New("sim: the durable view is read-only")
}
func (d durableDevice) Sync() error { return nil }
func (d durableDevice) Size() int64 { return d.size }

// lostPages lists the pages a power loss changed: before is the view
// before it. Called with mu held.
func (w *world) lostPages(n *simNode, before map[int64][]byte) []int64 {
	var lost []int64
	for pg, p := range before {
		if !bytes.Equal(p, pageOrZero(n.data.durable[pg])) {
			lost = append(lost, pg)
		}
	}
	for pg := range n.data.durable {
		if before[pg] == nil {
			lost = append(lost, pg) // a write of zeroes lost
		}
	}
	slices.Sort(lost)
	return lost
}

// describePage names the write page pg holds (p its content). Called
// with mu held.
func (w *world) describePage(pg int64, p []byte) string {
	if p == nil {
		return "zeroes"
	}
	tag, ok, err := checker.DecodeBlock(p, w.m.run, uint64(pg))
	switch {
	case err != nil:
		return err.Error()
	case !ok:
		return "zeroes"
	}
	return fmt.Sprintf("write %d", tag.Seq)
}

// failOps fails the pending operations of d's fenced incarnation. Called
// with mu held.
func (w *world) failOps(d *disk) {
	keep := w.ops[:0]
	for _, o := range w.ops {
		if o.disk == d && o.gen != d.gen {
			o.done <- fmt.Errorf("sim: %s: %w", o, errFenced)
			continue
		}
		keep = append(keep, o)
	}
	clear(w.ops[len(keep):])
	w.ops = keep
}

// addDiskOp registers a gated disk operation. Called with mu held.
func (w *world) addDiskOp(o *diskOp) *diskOp {
	w.opCount++
	o.issued = w.opCount
	o.done = make(chan error, 1)
	o.disk.ops++
	o.ready = time.Now().Add(w.latency(o))
	w.ops = append(w.ops, o)
	return o
}

// latency draws how long o takes at least: most reads and writes none
// (the scheduler alone decides), some a few milliseconds, and a flush
// always some, as a device's cache flush does. The draw hashes what the
// operation is rather than using the scheduler's generator, whose order
// of use would then depend on the order in which goroutines issue
// operations.
func (w *world) latency(o *diskOp) time.Duration {
	x := w.p.Seed ^ uint64(o.kind)<<56 ^ uint64(o.off) ^ o.disk.ops<<40
	for _, c := range []byte(o.disk.name) {
		x = x*1099511628211 ^ uint64(c)
	}
	x ^= x >> 33
	x *= 0xff51afd7ed558ccd
	x ^= x >> 33
	switch {
	case o.kind == opFlush:
		return time.Duration(2+x%40) * time.Millisecond
	case x%10 < 7:
		return 0
	default:
		return time.Duration(1+x%10) * time.Millisecond
	}
}

func (w *world) forgetConn(c *conn) {
	if i := slices.Index(w.conns, c); i >= 0 {
		w.conns = slices.Delete(w.conns, i, i+1)
	}
}

func pairOf(a, b string) [2]string {
	if a > b {
		a, b = b, a
	}
	return [2]string{a, b}
}

func (w *world) partitioned(a, b string) bool { return w.cuts[pairOf(a, b)] }

// liveConns lists the connections between a's and b's current
// incarnations that neither end closed. Called with mu held.
func (w *world) liveConns(a, b *simNode) []*conn {
	var out []*conn
	for _, c := range w.conns {
		e0, e1 := c.ends[0], c.ends[1]
		if e0.closed || e1.closed || c.broken {
			continue
		}
		if (e0.ep.node == a && e1.ep.node == b || e0.ep.node == b && e1.ep.node == a) &&
			e0.ep.alive() && e1.ep.alive() {
			out = append(out, c)
		}
	}
	return out
}

func alive(c *conn) bool { return !c.broken && !c.ends[0].closed && !c.ends[1].closed }

// replicating returns the peers of Primary p, of the given protocols, that
// p replicates to in sync (Established, UpToDate) as of the last step,
// with their connections to p that are up and past the handshake: a
// connection still in its handshake (the status of the last step may
// describe one that broke since) carries no write. Called with mu held.
func (w *world) replicating(p *simNode, protocols ...string) map[string][]*conn {
	out := map[string][]*conn{}
	for _, ps := range p.st.Peers {
		proto := w.p.Protocols[pairOf(p.name, ps.Name)]
		if slices.Contains(protocols, proto) && ps.Conn == "Connected" && ps.Repl == "Established" && ps.Disk == "UpToDate" {
			out[ps.Name] = slices.DeleteFunc(w.liveConns(p, w.node(ps.Name)), func(c *conn) bool { return !alive(c) || !c.established() })
		}
	}
	return out
}

// stillConnected returns the peers of peers whose connection of then
// is still up: they took part in what completed since. Sorted.
func stillConnected(peers map[string][]*conn) []string {
	var out []string
	for peer, conns := range peers {
		if slices.ContainsFunc(conns, alive) {
			out = append(out, peer)
		}
	}
	slices.Sort(out)
	return out
}

// ofProtocol returns the peers of p among names whose connection to p
// runs protocol proto.
func (w *world) ofProtocol(p *simNode, names []string, proto string) []string {
	var out []string
	for _, n := range names {
		if w.p.Protocols[pairOf(p.name, n)] == proto {
			out = append(out, n)
		}
	}
	return out
}

// write issues an application write of n blocks from first on the
// application's Primary.
func (w *world) write(first uint64, n int, fua bool) {
	p := w.app
	w.mu.Lock()
	t := p.term
	ws := w.m.issue(t, first, n, fua)
	op := &clientOp{n: p, inc: p.inc, t: t, ws: ws, issuedAt: ws[0].Submitted}
	atIssue := w.replicating(p, "B", "C")
	for _, x := range ws {
		x.peersAtIssue = atIssue
		w.inFlight[x.Block] = true
	}
	w.clientOps = append(w.clientOps, op)
	dev := p.inc.dev
	w.mu.Unlock()
	buf := dev.(nbd.WriteBuffers).WriteBuffer(n * blockSize)
	for i, x := range ws {
		checker.EncodeBlock(buf[i*blockSize:(i+1)*blockSize], checker.Tag{Run: w.m.run, Block: x.Block, Seq: x.Seq})
	}
	w.clients.Add(1)
	go func() {
		defer w.clients.Done()
		err := dev.WriteAt(context.Background(), buf, first*blockSize, fua)
		w.mu.Lock()
		defer w.mu.Unlock()
		op.done = true
		at := w.m.tick()
		// A reply of a process that crashed (its daemon is closed in
		// the background, after the fence failed its disk I/O) reaches
		// no application: a crash breaks the connection to the device
		// first, and the write's fate is unknown.
		lost := op.inc.dead
		for _, x := range ws {
			delete(w.inFlight, x.Block)
			if err != nil || lost {
				x.failed = true
				continue
			}
			x.Complete = at
			x.acked = stillConnected(x.peersAtIssue)
			if fua {
				x.durableAlso([]string{p.name})
				x.durableAlso(w.ofProtocol(p, x.acked, "C"))
			}
		}
		if lost {
			w.trace.add("client", fmt.Sprintf("write %d on %s (blocks %d+%d): its process crashed; the daemon's late reply (%v) is not seen", ws[0].Seq, p.name, first, n, errText(err)))
			return
		}
		w.trace.add("client", fmt.Sprintf("write %d done on %s (blocks %d+%d): %v; acknowledged by %v", ws[0].Seq, p.name, first, n, errText(err), ws[0].acked))
	}()
}

// flush issues an application flush on the application's Primary.
func (w *world) flush() {
	p := w.app
	w.mu.Lock()
	op := &clientOp{n: p, inc: p.inc, t: p.term, flush: true, issuedAt: w.m.tick()}
	w.clientOps = append(w.clientOps, op)
	dev := p.inc.dev
	atIssue := w.replicating(p, "C")
	w.mu.Unlock()
	w.clients.Add(1)
	go func() {
		defer w.clients.Done()
		err := dev.Flush(context.Background())
		w.mu.Lock()
		defer w.mu.Unlock()
		op.done = true
		if op.inc.dead { // as for a write: no application sees it
			w.trace.add("client", fmt.Sprintf("flush issued at %d on %s: its process crashed; the daemon's late reply (%v) is not seen", op.issuedAt, p.name, errText(err)))
			return
		}
		if err == nil {
			w.m.flushed(op.t, op.issuedAt, append([]string{p.name}, stillConnected(atIssue)...))
		}
		w.trace.add("client", fmt.Sprintf("flush issued at %d done on %s: %v", op.issuedAt, p.name, errText(err)))
	}()
}

func errText(err error) string {
	if err == nil {
		return "ok"
	}
	return err.Error()
}

// clientBusy counts the application's operations in flight on n.
func (w *world) clientBusy(n *simNode) int {
	busy := 0
	for _, op := range w.clientOps {
		if !op.done && op.n == n {
			busy++
		}
	}
	return busy
}

// Violation is a broken promise (or a failure of the harness itself).
type Violation struct {
	// Class is the promise: "a" to "d" (package doc), "protocol" (a node
	// saw its peer break the wire protocol), "liveness" (the cluster did
	// not settle once every fault was repaired), "leak" (goroutines left
	// behind), "harness" (the simulator could not do what it meant to).
	Class string
	Text  string
}

func (v Violation) String() string { return "(" + v.Class + ") " + v.Text }

// violate records a broken promise. A class the caller chose to ignore
// is counted and the schedule goes on.
func (w *world) violate(class, format string, args ...any) {
	v := Violation{Class: class, Text: fmt.Sprintf(format, args...)}
	w.trace.add("VIOLATION", v.String())
	if w.ignore[class] {
		w.ignored = append(w.ignored, v)
		return
	}
	w.violations = append(w.violations, v)
}
