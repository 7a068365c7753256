package sim

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"syscall"
	"testing/synctest"
	"time"

	"github.com/georepl/georepl/cmd/georepl/internal/admin"
	"github.com/georepl/georepl/cmd/georepl/internal/node"
)

// The scheduler: one step performs one action, then lets every goroutine
// of the cluster run until each waits on something only the scheduler
// can give (synctest.Wait: a frame, a disk operation, time), then checks.
// Actions are chosen by a generator seeded with the schedule's seed, from
// a list of what is possible, sorted by names rather than by the order in
// which goroutines happened to ask, so that a seed replays.

// action is one thing the scheduler may do now.
type action struct {
	kind   string
	label  func() string
	weight float64
	do     func()
}

// stepTime is the virtual time every step takes.
const stepTime = time.Millisecond

func text(s string) func() string { return func() string { return s } }

// faultKinds are the actions that count against a schedule's fault budget.
var faultKinds = map[string]bool{"cut": true, "partition": true, "crash": true, "powerloss": true, "demote": true, "pause": true, "invalidate": true, "force": true, "ioerror": true}

// run plays the schedule: boot, p.Steps steps, then the final settle and
// its checks.
func (w *world) run() {
	// One at a time, so that who listens when the others first dial
	// does not depend on how the Go scheduler ran the three.
	for _, n := range w.nodes {
		// The first attach finds a data disk nothing was written to:
		// its flush (storage.Open flushes at every attach) has nothing
		// to wait for and completes at once, taking neither a step nor
		// a place in the disk's operation count (which latencies hash).
		w.mu.Lock()
		n.data.gated = false
		w.mu.Unlock()
		err := w.start(n)
		if err == nil {
			w.step("boot " + n.name)
		}
		w.mu.Lock()
		n.data.gated = true
		w.mu.Unlock()
		if err != nil {
			w.violate("harness", "starting %s: %v", n.name, err)
			return
		}
	}
	// Most schedules begin with the nodes connected, as a cluster that
	// has run for a while is; some start writing while they connect.
	if w.rng.IntN(5) > 0 {
		w.connectAll()
	}
	faults := 1 + w.rng.IntN(6)
	for i := 0; i < w.p.Steps && len(w.violations) == 0; i++ {
		acts := w.actions(faults > 0)
		a := pick(w.rng, acts)
		if faultKinds[a.kind] {
			faults--
		}
		w.trace.next()
		if a.kind != "deliver" {
			w.trace.add(a.kind, a.label())
		}
		a.do()
		// Every step takes a little time, as sending a frame or writing
		// a block does: timers (ticks, retries, resync pacing) run
		// between the scheduler's explicit sleeps too.
		time.Sleep(stepTime)
		w.step("")
	}
	if len(w.violations) == 0 {
		w.finalSettle()
	}
}

// connectAll delivers frames and lets time pass until every node is
// connected to every other (or a few seconds passed).
func (w *world) connectAll() {
	for range 1000 {
		connected := true
		for _, n := range w.nodes {
			for _, ps := range n.st.Peers {
				connected = connected && ps.Conn == "Connected"
			}
		}
		if connected {
			w.trace.add("boot", "every node connected")
			return
		}
		if !w.drainOne() {
			w.sleep(10 * time.Millisecond)
		}
		w.step("")
	}
}

// pick draws an action: a kind by weight, then one of its actions.
func pick(rng interface{ Float64() float64 }, acts []action) action {
	total := 0.0
	for _, a := range acts {
		total += a.weight
	}
	x := rng.Float64() * total
	for _, a := range acts {
		if x < a.weight {
			return a
		}
		x -= a.weight
	}
	return acts[len(acts)-1]
}

// actions lists what may happen now; each kind's weight is shared by its
// actions.
func (w *world) actions(faultsLeft bool) []action {
	var acts []action
	add := func(kind string, weight float64, list []action) {
		for i := range list {
			list[i].kind = kind
			list[i].weight = weight / float64(len(list))
		}
		acts = append(acts, list...)
	}
	w.mu.Lock()
	var deliveries, completions []action
	conns := slices.Clone(w.conns)
	slices.SortFunc(conns, func(a, b *conn) int {
		return cmp.Or(cmp.Compare(a.ends[0].ep.node.id, b.ends[0].ep.node.id), cmp.Compare(a.ends[1].ep.node.id, b.ends[1].ep.node.id), cmp.Compare(a.id, b.id))
	})
	for _, c := range conns {
		for side := range 2 {
			for _, p := range c.pipes[side] {
				if p.deliverable() {
					deliveries = append(deliveries, action{label: func() string { return fmt.Sprintf("%s ch%d", c, p.ch) }, do: func() { w.deliver(c, p, 1) }})
				}
				// Several frames at once, as a TCP segment brings them:
				// the reader then finds the next frame buffered, which
				// changes what it does (it hands a write to another
				// goroutine and reads on).
				if n := len(p.inFlight); n > 1 {
					deliveries = append(deliveries, action{label: func() string { return fmt.Sprintf("%s ch%d x%d", c, p.ch, n) }, do: func() { w.deliver(c, p, n) }})
				}
			}
		}
	}
	ops := slices.Clone(w.ops)
	slices.SortFunc(ops, func(a, b *diskOp) int {
		return cmp.Or(cmp.Compare(a.disk.name, b.disk.name), cmp.Compare(a.kind, b.kind), cmp.Compare(a.off, b.off), cmp.Compare(a.issued, b.issued))
	})
	now := time.Now()
	for _, o := range ops {
		if !o.ready.After(now) {
			completions = append(completions, action{label: o.String, do: func() { w.completeOp(o) }})
		}
	}
	w.mu.Unlock()
	if len(deliveries) > 0 {
		add("deliver", 40, deliveries)
	}
	if len(completions) > 0 {
		add("disk", 30, completions)
	}
	if app := w.app; app != nil && app.up && !app.basePending && !app.stopped && app.inc.dev != nil && !(w.avoid["handshake"] && w.handshaking()) {
		w.mu.Lock()
		busy := w.clientBusy(app)
		var free []uint64
		for b := uint64(0); b < extents*hotBlocks; b++ {
			blk := b/hotBlocks*(extentBlocks) + b%hotBlocks
			if !w.inFlight[blk] {
				free = append(free, blk)
			}
		}
		w.mu.Unlock()
		if busy < 4 && len(free) > 0 {
			blk := free[w.rng.IntN(len(free))]
			n := 1
			if blk%hotBlocks < hotBlocks-1 && !w.inFlight[blk+1] && w.rng.IntN(4) == 0 {
				n = 2
			}
			fua := w.rng.IntN(8) == 0
			add("write", 10, []action{{label: func() string { return fmt.Sprintf("on %s blocks %d+%d fua=%v", app.name, blk, n, fua) }, do: func() { w.write(blk, n, fua) }}})
			add("flush", 3, []action{{label: text("on " + app.name), do: w.flush}})
		}
	}
	add("time", 6, []action{{label: text("1-50ms"), do: func() { w.sleep(time.Duration(1+w.rng.IntN(50)) * time.Millisecond) }}})
	add("time", 0.7, []action{{label: text("0.5-4s"), do: func() { w.sleep(time.Duration(500+w.rng.IntN(3500)) * time.Millisecond) }}})
	if faultsLeft {
		// Faults strike a healthy cluster most: a fault on top of
		// another is the rarer, harder case; none before the cluster was
		// healthy once.
		switch {
		case w.healthy():
			w.wasHealthy = true
			w.faultActions(add, 0.6)
		case w.wasHealthy:
			w.faultActions(add, 0.2)
		}
	}
	w.repairActions(add)
	return acts
}

// extentBlocks is the number of blocks in an activity-log extent.
const extentBlocks = dataSize / extents / blockSize

// healthy: there is a Primary the application writes to, and every node
// is up and connected to every other.
func (w *world) healthy() bool {
	if w.app == nil {
		return false
	}
	for _, n := range w.nodes {
		if n.st == nil {
			return false
		}
		for _, ps := range n.st.Peers {
			if ps.Conn != "Connected" {
				return false
			}
		}
	}
	return true
}

// faultActions adds the faults possible now, their weights scaled.
func (w *world) faultActions(add0 func(string, float64, []action), scale float64) {
	add := func(kind string, weight float64, list []action) { add0(kind, weight*scale, list) }
	var cuts, crashes, powers []action
	w.mu.Lock()
	for _, c := range w.conns {
		if !c.broken {
			cuts = append(cuts, action{label: c.String, do: func() { w.cut(c) }})
		}
	}
	w.mu.Unlock()
	slices.SortFunc(cuts, func(a, b action) int { return cmp.Compare(a.label(), b.label()) })
	add("cut", 1.2, cuts)
	var parts []action
	for i, a := range w.nodes {
		for _, b := range w.nodes[i+1:] {
			if !w.partitioned(a.name, b.name) {
				parts = append(parts, action{label: text(a.name + "|" + b.name), do: func() { w.partition(a, b) }})
			}
		}
	}
	add("partition", 0.4, parts)
	for _, n := range w.nodes {
		if n.up && n.inc.dev != nil {
			crashes = append(crashes, action{label: text(n.name), do: func() { w.crash(n, false) }})
			powers = append(powers, action{label: text(n.name), do: func() { w.crash(n, true) }})
		}
	}
	add("crash", 0.4, crashes)
	add("powerloss", 0.4, powers)
	if w.p.IOErrors {
		add("ioerror", 0.3, w.ioErrors())
	}
	if app := w.app; app != nil && app.up && !app.stopped && w.idle(app) && !(w.avoid["handshake"] && w.handshaking()) {
		add("demote", 0.4, []action{{label: text(app.name), do: func() {
			app.stopped = true
			w.admin(app, admin.Request{Verb: "secondary"})
		}}})
	}
	if app := w.app; app != nil && app.up && w.idle(app) && app.st != nil {
		var pauses, invs []action
		for _, ps := range app.st.Peers {
			peer := w.node(ps.Name)
			if !ps.ResyncPaused {
				pauses = append(pauses, action{label: text(app.name + " to " + ps.Name), do: func() { w.admin(app, admin.Request{Verb: "pause-sync", Peer: peer.name}) }})
			}
			if peer.up && w.idle(peer) && ps.Conn == "Connected" {
				invs = append(invs, action{label: text(peer.name), do: func() { w.admin(peer, admin.Request{Verb: "invalidate"}) }})
			}
		}
		add("pause", 0.2, pauses)
		add("invalidate", 0.15, invs)
	}
	w.promoteActions(add0, true, scale)
}

// ioErrors are the data disk reads and writes in progress on running
// nodes, each of which can fail with an I/O error.
func (w *world) ioErrors() []action {
	w.mu.Lock()
	defer w.mu.Unlock()
	var acts []action
	for _, o := range w.ops {
		if o.kind == opFlush || o.gen != o.disk.gen {
			continue
		}
		acts = append(acts, action{label: o.String, do: func() { w.failOp(o) }})
	}
	slices.SortFunc(acts, func(a, b action) int { return cmp.Compare(a.label(), b.label()) })
	return acts
}

// failOp completes o with an I/O error: a read returns nothing, a write
// leaves the medium as it was.
func (w *world) failOp(o *diskOp) {
	w.mu.Lock()
	if i := slices.Index(w.ops, o); i >= 0 {
		w.ops = slices.Delete(w.ops, i, i+1)
		o.done <- fmt.Errorf("sim: %s: injected I/O error: %w", o, syscall.EIO)
	}
	w.mu.Unlock()
}

// detached are the running nodes whose disk was detached after an I/O
// error; an operator reattaches it with down and up, which a crash and a
// restart stand for.
func (w *world) detached() []*simNode {
	var ns []*simNode
	for _, n := range w.nodes {
		if n.up && n.st != nil && n.st.DiskError != "" && w.idle(n) {
			ns = append(ns, n)
		}
	}
	return ns
}

func (w *world) reattach(n *simNode) {
	w.crash(n, false)
	w.restart(n)
}

// repairActions undo faults: they are always possible.
func (w *world) repairActions(add func(string, float64, []action)) {
	var heals, restarts, resumes, reattaches []action
	for _, n := range w.detached() {
		reattaches = append(reattaches, action{label: text(n.name), do: func() { w.reattach(n) }})
	}
	add("reattach", 1, reattaches)
	for pair := range w.cuts {
		heals = append(heals, action{label: text(pair[0] + "|" + pair[1]), do: func() { w.heal(pair) }})
	}
	slices.SortFunc(heals, func(a, b action) int { return cmp.Compare(a.label(), b.label()) })
	add("heal", 2, heals)
	for _, n := range w.nodes {
		if !n.up {
			restarts = append(restarts, action{label: text(n.name), do: func() { w.restart(n) }})
		}
		if n.up && w.idle(n) && n.st != nil {
			for _, ps := range n.st.Peers {
				if ps.ResyncPaused {
					resumes = append(resumes, action{label: text(n.name + " to " + ps.Name), do: func() { w.admin(n, admin.Request{Verb: "resume-sync", Peer: ps.Name}) }})
				}
			}
		}
	}
	add("restart", 3, restarts)
	add("resume", 1, resumes)
	add("connect", 1, w.reconnects())
	w.promoteActions(add, false, 1)
}

// reconnects are an operator's answers to connections left StandAlone:
// after a split brain between a Primary and a Secondary, the Secondary
// offers to discard its data (connect --discard-my-data) and the Primary
// connects again; after unrelated data the Secondary gets new metadata
// (a full resync); otherwise the node just connects again.
func (w *world) reconnects() []action {
	var acts []action
	for _, n := range w.nodes {
		if !w.idle(n) || n.st == nil {
			continue
		}
		for _, ps := range n.st.Peers {
			peer := w.node(ps.Name)
			if peer.st == nil {
				continue
			}
			theirs := peerStatus(peer, n.name)
			splitBrain := strings.Contains(ps.LastError, "split brain") || strings.Contains(theirs.LastError, "split brain")
			switch {
			case splitBrain && n.st.Role == "Secondary" && peer.st.Role == "Primary" && !w.offered[[2]string{n.name, peer.name}]:
				acts = append(acts, action{label: text(n.name + " to " + peer.name + " --discard-my-data"), do: func() {
					w.offered[[2]string{n.name, peer.name}] = true
					w.admin(n, admin.Request{Verb: "connect", Peer: peer.name, DiscardMyData: true})
				}})
			case ps.Conn != "StandAlone":
			case splitBrain && n.st.Role == "Primary" && !w.offered[[2]string{peer.name, n.name}]:
				// Wait for the Secondary's offer.
			case strings.Contains(ps.LastError, "unrelated data") && n.st.Role != "Primary":
				acts = append(acts, action{label: text(n.name + " discards its data (create-md)"), do: func() { w.discard(n) }})
			default:
				acts = append(acts, action{label: text(n.name + " to " + peer.name), do: func() {
					delete(w.offered, [2]string{peer.name, n.name})
					w.admin(n, admin.Request{Verb: "connect", Peer: peer.name})
				}})
			}
		}
	}
	return acts
}

// peerStatus returns n's status line for its peer name.
func peerStatus(n *simNode, name string) node.PeerStatus {
	for _, ps := range n.st.Peers {
		if ps.Name == name {
			return ps
		}
	}
	return node.PeerStatus{}
}

// promoteActions: with no Primary, an operator promotes one (without
// --force where the node is UpToDate, and sometimes with it); with
// faults allowed, a forced promotion of a node cut off from the Primary.
func (w *world) promoteActions(add func(string, float64, []action), forced bool, scale float64) {
	primaries := 0
	for _, n := range w.nodes {
		if n.up && n.st != nil && n.st.Role == "Primary" {
			primaries++
		}
	}
	var acts []action
	if w.avoid["handshake"] && w.handshaking() {
		return
	}
	var best *simNode
	if w.avoid["split"] && primaries == 0 && w.app == nil {
		best = w.freshest()
	}
	for _, n := range w.nodes {
		if !n.up || n.st == nil || !w.idle(n) || n.st.Role == "Primary" {
			continue
		}
		switch {
		case w.avoid["split"] && (forced || n != best || n.st.Disk != "UpToDate"):
			// A careful operator promotes the freshest node, never by force.
		case !forced && primaries == 0 && w.app == nil:
			force := n.st.Disk != "UpToDate" || w.rng.IntN(5) == 0 && !w.avoid["split"]
			acts = append(acts, action{label: text(fmt.Sprintf("%s force=%v", n.name, force)), do: func() { w.promote(n, force) }})
		case forced && primaries > 0 && !w.connectedToPrimary(n):
			acts = append(acts, action{label: text(n.name + " force=true"), do: func() { w.promote(n, true) }})
		}
	}
	if forced {
		add("force", 0.1*scale, acts)
	} else {
		add("promote", 3, acts)
	}
}

// handshaking reports whether two nodes are in the middle of a handshake:
// a connection between them is up and one does not see the other
// Connected yet.
func (w *world) handshaking() bool {
	for i, a := range w.nodes {
		for _, b := range w.nodes[i+1:] {
			if a.st == nil || b.st == nil {
				continue
			}
			w.mu.Lock()
			live := len(w.liveConns(a, b)) > 0
			w.mu.Unlock()
			if live && (peerStatus(a, b.name).Conn != "Connected" || peerStatus(b, a.name).Conn != "Connected") {
				return true
			}
		}
	}
	return false
}

// freshest returns the up node whose image holds the most writes of the
// latest term's lineage: whom a careful operator promotes.
func (w *world) freshest() *simNode {
	w.mu.Lock()
	defer w.mu.Unlock()
	t := w.m.terms[len(w.m.terms)-1]
	var best *simNode
	most := -1
	for _, n := range w.nodes {
		if !n.up || n.st == nil {
			continue
		}
		if held := w.m.present(t, n.data.reader()); held > most {
			best, most = n, held
		}
	}
	return best
}

func (w *world) connectedToPrimary(n *simNode) bool {
	for _, ps := range n.st.Peers {
		if ps.Conn == "Connected" && ps.Role == "Primary" {
			return true
		}
	}
	return false
}

// idle: n is up and runs no administrative request.
func (w *world) idle(n *simNode) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return n.up && n.inc != nil && n.inc.dev != nil && n.inc.busy == 0
}

// deliver delivers p's next n frames at once; the trace's lines say
// which.
func (w *world) deliver(c *conn, p *pipe, n int) {
	whats := make([]string, 0, n)
	quiet := true
	w.mu.Lock()
	for range n {
		what, keepalive := p.deliver()
		whats = append(whats, what)
		quiet = quiet && keepalive
	}
	w.mu.Unlock()
	what := fmt.Sprintf("%s: %s", c, strings.Join(whats, "; "))
	if quiet {
		w.trace.addQuiet("deliver", what)
	} else {
		w.trace.add("deliver", what)
	}
}

func (w *world) completeOp(o *diskOp) {
	w.mu.Lock()
	if i := slices.Index(w.ops, o); i >= 0 {
		w.ops = slices.Delete(w.ops, i, i+1)
		o.finish()
	}
	w.mu.Unlock()
}

func (w *world) cut(c *conn) {
	w.mu.Lock()
	c.cut()
	w.mu.Unlock()
}

func (w *world) partition(a, b *simNode) {
	w.mu.Lock()
	w.cuts[pairOf(a.name, b.name)] = true
	for _, c := range slices.Clone(w.conns) {
		if x, y := c.ends[0].ep.node, c.ends[1].ep.node; x == a && y == b || x == b && y == a {
			c.cut()
		}
	}
	w.mu.Unlock()
}

func (w *world) heal(pair [2]string) {
	w.mu.Lock()
	delete(w.cuts, pair)
	w.mu.Unlock()
}

func (w *world) restart(n *simNode) {
	if err := w.start(n); err != nil {
		w.violate("harness", "restarting %s: %v", n.name, err)
	}
}

func (w *world) promote(n *simNode, force bool) {
	upToDate := n.st.Disk == "UpToDate" && !n.torn
	w.admin(n, admin.Request{Verb: "primary", Force: force})
	w.mu.Lock()
	n.inc.admin.upToDate = upToDate
	w.mu.Unlock()
}

// sleep lets virtual time pass: timers fire, everything else waits.
func (w *world) sleep(d time.Duration) {
	time.Sleep(d)
}

// step lets the cluster run until it waits for the scheduler, then takes
// stock and checks the promises.
func (w *world) step(label string) {
	synctest.Wait()
	if label != "" {
		w.trace.add("step", label)
	}
	w.observe()
}

// observe acts on finished administrative requests, refreshes every
// node's status, takes the bases of new Primaries and checks every
// image.
func (w *world) observe() {
	for _, n := range w.nodes {
		w.mu.Lock()
		var op *adminOp
		if n.inc != nil && n.inc.admin != nil && n.inc.admin.done && !n.inc.admin.seen {
			op = n.inc.admin
			op.seen = true
		}
		w.mu.Unlock()
		if op != nil {
			w.adminDone(n, op)
		}
	}
	for _, n := range w.nodes {
		if !n.up || n.inc.dev == nil {
			n.st = nil
			continue
		}
		if !w.fresh(n) {
			continue
		}
		sts, err := n.inc.d.StatusNow(resourceName)
		if err != nil || len(sts) != 1 {
			w.violate("harness", "status of %s: %v", n.name, err)
			continue
		}
		n.st = sts[0]
		if n.torn && n.lastDisk == "Inconsistent" && n.st.Disk == "UpToDate" {
			n.torn = false
			w.trace.add("check", n.name+" resynchronised after its power loss")
		}
		n.lastDisk = n.st.Disk
	}
	for _, n := range w.nodes {
		if n.basePending && n.up {
			w.takeBase(n)
		}
		if n.up {
			w.checkCached(n)
		}
	}
	w.checkImages()
}

// fresh reports whether n's status must be fetched again: it changed
// (events) or an administrative request finished.
func (w *world) fresh(n *simNode) bool {
	w.mu.Lock()
	stale := n.inc.stale || n.st == nil
	n.inc.stale = false
	w.mu.Unlock()
	for {
		select {
		case ev := <-n.inc.events:
			stale = true
			if ev.What == "disk" && ev.New == "UpToDate" && ev.Detail == "forced" {
				n.forcedDisk = true
			}
			if ev.What == "conn" && strings.Contains(ev.Detail, "protocol violation") {
				w.violate("protocol", "%s dropped %s: %s", n.name, ev.Peer, ev.Detail)
			}
		default:
			return stale
		}
	}
}

func (w *world) adminDone(n *simNode, op *adminOp) {
	w.trace.add("admin", fmt.Sprintf("%s %s %s force=%v: %s", n.name, op.req.Verb, op.req.Peer, op.req.Force, errText(op.err)))
	switch op.req.Verb {
	case "up":
		if op.err != nil {
			w.violate("harness", "%s: up failed: %v", n.name, op.err)
		}
	case "primary":
		if op.err != nil || n.term != nil {
			return // refused, or it was Primary already
		}
		w.mu.Lock()
		n.term = w.m.newTerm(n.name, op.req.Force)
		n.basePending, n.stopped = true, false
		w.app = n
		n.term.forced = !op.upToDate
		w.mu.Unlock()
		w.trace.add("model", fmt.Sprintf("term %d: %s Primary (promised (a), (b): %v)", n.term.id, n.name, op.upToDate))
	case "secondary":
		if op.err != nil {
			n.stopped = false
			return
		}
		w.mu.Lock()
		w.endTermLocked(n, "demoted")
		w.mu.Unlock()
		if w.app == n {
			w.app = nil
		}
	}
}

// takeBase records the image a new Primary starts from, once the writes
// it received before its promotion are on its disk (the application
// waits for that, as it would restart on the new Primary), and checks
// what a promotion promises: (a) every durable write of the data it continues is
// there (unless forced), (b) every write it acknowledged under protocol B
// or C is there (unless it crashed since), (c) the image is a state the
// old Primary's data passed through.
func (w *world) takeBase(n *simNode) {
	w.mu.Lock()
	defer w.mu.Unlock()
	// What it received from the old Primary is applied once no local
	// write or flush and no data frame towards it is pending: a received
	// write waits only for local operations (its epoch's, a flush). A
	// read changes no image, and a new Primary that is a resync's source
	// has one pending for as long as the resync runs: waiting for none
	// would leave the term unbased, no lineage for the checker, while
	// its sync targets become UpToDate with its image.
	for _, o := range w.ops {
		if o.disk == n.data && o.kind != opRead {
			return
		}
	}
	// A write of its earlier term may still be held behind a read of the
	// same blocks, not yet on the disk: it lands before the base.
	for _, op := range w.clientOps {
		if op.n == n && op.inc == n.inc && !op.done && !op.flush && op.t != n.term {
			return
		}
	}
	for _, c := range w.conns {
		for side := range 2 {
			if p := c.pipes[side][0]; p.to == n.name && p.deliverable() {
				return
			}
		}
	}
	w.baseLocked(n, "")
}

// endTermLocked ends n's term: n stops being Primary (demoted, or its
// process is gone). A term whose base was not taken yet takes it now: the
// application wrote nothing in it, and nothing else changed n's image
// since the promotion (the engine promotes no node with received writes
// still to apply, a Primary is never a sync target, and data from
// another Primary is refused), so its image is the one its Primary's data
// held throughout. Left unbased, the term would be no lineage for the
// checker: a node forced to UpToDate from an image no other term passed
// through would fit none.
func (w *world) endTermLocked(n *simNode, why string) {
	if n.basePending {
		w.baseLocked(n, why)
	}
	n.term, n.basePending = nil, false
}

// baseLocked takes n's image as its term's base and checks what the
// promotion promised; why says when it is taken ("": once the writes it
// received before its promotion were on its disk).
func (w *world) baseLocked(n *simNode, why string) {
	t := n.term
	n.basePending = false
	img := n.data.reader()
	parent, corrupt := w.m.setBase(t, img)
	for _, c := range corrupt {
		w.violate("c", "%s promoted with a corrupt block: %s", n.name, c)
	}
	when := ""
	if why != "" {
		when = ", taken as it is " + why
	}
	w.trace.add("model", fmt.Sprintf("term %d based on %s's image (a state of term %s%s)", t.id, n.name, termName(parent), when))
	forcedDisk := n.forcedDisk
	n.forcedDisk = false
	if forcedDisk && !t.forced {
		t.forced = true
		w.trace.add("model", fmt.Sprintf("term %d: %s's disk was no longer UpToDate when the promotion took effect: --force promoted it, which promises nothing", t.id, n.name))
	}
	if t.forced {
		return
	}
	if parent == nil {
		if !n.torn {
			w.violate("c", "%s was promoted without --force with an image that is no state any Primary's data passed through: %s", n.name, w.m.explain(img))
		}
		parent = w.m.latestBefore(t)
	}
	if lost := w.m.missing(parent, img, func(x *mwrite) bool { return slices.Contains(x.durableOn, n.name) }); len(lost) > 0 {
		w.violate("a", "%s was promoted without --force and lacks writes a completed flush (or FUA) had made durable on it: %s", n.name, summarize(lost))
	}
	if lost := w.m.missing(parent, img, func(x *mwrite) bool {
		return slices.Contains(x.acked, n.name) && n.crashedAt < x.Submitted
	}); len(lost) > 0 {
		w.violate("b", "%s was promoted and lacks writes it had acknowledged under protocol B or C: %s", n.name, summarize(lost))
	}
}

func termName(t *term) string {
	if t == nil {
		return "none"
	}
	return fmt.Sprint(t.id)
}

// checkImages holds (c) at every step: the image of every node that says
// its data is consistent (UpToDate, Outdated, Consistent) is a state some
// Primary's data passed through.
func (w *world) checkImages() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, n := range w.nodes {
		// A new Primary's image is what its term starts from (a forced
		// promotion makes any image UpToDate): takeBase judges it.
		if !n.up || n.st == nil || n.torn || n.basePending {
			continue
		}
		switch n.st.Disk {
		case "UpToDate", "Outdated", "Consistent":
		default:
			continue
		}
		key := fmt.Sprintf("%d %s", n.data.changed, n.st.Disk)
		if key == n.checkedAt {
			continue
		}
		n.checkedAt = key
		img := n.data.reader()
		if w.m.stateOf(img, nil) == nil {
			w.violate("c", "%s reports %s but its image is no state any Primary's data passed through: %s", n.name, n.st.Disk, w.m.explain(img))
		}
	}
}
