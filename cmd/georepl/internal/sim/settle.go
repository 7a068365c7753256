package sim

import (
	"bytes"
	"fmt"
	"slices"
	"time"

	"github.com/georepl/georepl/cmd/georepl/internal/admin"
	"github.com/georepl/georepl/cmd/georepl/internal/checker"
)

// settleLimit bounds the virtual time the final settle may take.
const settleLimit = time.Minute

// settleSteps bounds the steps the final settle may take.
const settleSteps = 20000

// finalSettle repairs everything (partitions healed, nodes restarted,
// resyncs resumed, one Primary), lets the cluster run until it is quiet,
// and checks (d): every node UpToDate and in sync with the Primary holds
// the Primary's bytes.
func (w *world) finalSettle() {
	w.trace.next()
	w.trace.add("settle", "healing every fault")
	for pair := range w.cuts {
		w.heal(pair)
	}
	for _, n := range w.nodes {
		if !n.up {
			w.restart(n)
		}
	}
	deadline := time.Now().Add(settleLimit)
	quietSince := time.Time{}
	for i := 0; len(w.violations) == 0; i++ {
		w.step("")
		if time.Now().After(deadline) || i == settleSteps {
			w.violate("liveness", "the cluster did not settle within %v of virtual time (or %d steps) after every fault was repaired: %s", settleLimit, settleSteps, w.describe())
			return
		}
		if w.repair() {
			// An operator waits a moment to see what a command did.
			quietSince = time.Time{}
			w.sleep(100 * time.Millisecond)
			continue
		}
		if w.drainOne() {
			continue
		}
		// Counters (out of sync, unacknowledged) change without events.
		w.refreshAll()
		if w.settled() {
			if quietSince.IsZero() {
				quietSince = time.Now()
			}
			// Quiet for a while: every timer that could still change
			// something (bitmap writes, pings) had its turn.
			if time.Since(quietSince) >= 3*time.Second {
				break
			}
		} else {
			quietSince = time.Time{}
		}
		w.sleep(200 * time.Millisecond)
	}
	if len(w.violations) == 0 {
		w.trace.add("settle", "quiet: "+w.describe())
		w.checkIdentical()
	}
}

// repair takes one operator's step towards a whole cluster, if one is
// due: resume paused resyncs, promote a Primary if there is none, demote
// extra Primaries. It reports whether it did something.
func (w *world) repair() bool {
	var primaries []*simNode
	for _, n := range w.nodes {
		if n.st != nil && n.st.Role == "Primary" {
			primaries = append(primaries, n)
		}
	}
	for _, n := range w.nodes {
		if n.st == nil || !w.idle(n) {
			continue
		}
		for _, ps := range n.st.Peers {
			if ps.ResyncPaused {
				w.trace.add("resume", n.name+" to "+ps.Name)
				w.admin(n, admin.Request{Verb: "resume-sync", Peer: ps.Name})
				return true
			}
		}
	}
	if ns := w.detached(); len(ns) > 0 {
		w.trace.add("reattach", ns[0].name)
		w.reattach(ns[0])
		return true
	}
	if acts := w.reconnects(); len(acts) > 0 {
		a := pick(w.rng, acts)
		w.trace.add("connect", a.label())
		a.do()
		return true
	}
	switch {
	case len(primaries) > 1:
		for _, n := range primaries {
			if n != w.app && w.idle(n) {
				w.trace.add("demote", n.name+" (two Primaries)")
				n.stopped = true
				w.admin(n, admin.Request{Verb: "secondary"})
				return true
			}
		}
	case len(primaries) == 0 && w.app == nil:
		var best *simNode
		for _, n := range w.nodes {
			if n.st == nil || !w.idle(n) {
				continue
			}
			if best == nil || n.st.Disk == "UpToDate" && best.st.Disk != "UpToDate" {
				best = n
			}
		}
		if best != nil {
			force := best.st.Disk != "UpToDate"
			w.trace.add("promote", fmt.Sprintf("%s force=%v", best.name, force))
			w.promote(best, force)
			return true
		}
	}
	return false
}

// refreshAll fetches every node's status.
func (w *world) refreshAll() {
	for _, n := range w.nodes {
		if n.up && n.inc.dev != nil {
			w.mu.Lock()
			n.inc.stale = true
			w.mu.Unlock()
		}
	}
	w.observe()
}

// drainOne delivers a frame or completes a disk operation, if any is
// waiting.
func (w *world) drainOne() bool {
	acts := w.actions(false)
	var drains []action
	for _, a := range acts {
		if a.kind == "deliver" || a.kind == "disk" {
			drains = append(drains, a)
		}
	}
	if len(drains) == 0 {
		return false
	}
	a := pick(w.rng, drains)
	if a.kind != "deliver" {
		w.trace.add(a.kind, a.label())
	}
	a.do()
	return true
}

// settled: every node is up, every connection Established, nothing out
// of sync or unacknowledged between the Primary and its peers, nothing in
// flight; connections left StandAlone (a split brain no operator
// resolved) are let be.
func (w *world) settled() bool {
	w.mu.Lock()
	busy := len(w.ops) > 0
	for _, op := range w.clientOps {
		busy = busy || !op.done
	}
	w.mu.Unlock()
	if busy {
		return false
	}
	for _, n := range w.nodes {
		if n.st == nil || !w.idle(n) {
			return false
		}
		for _, ps := range n.st.Peers {
			// Marks a Secondary keeps for another Secondary (writes its
			// Primary had not confirmed everywhere when it was lost)
			// wait for a promotion: only the Primary's count.
			primary := n.st.Role == "Primary" || ps.Role == "Primary"
			switch {
			case ps.Conn == "StandAlone":
			case ps.Conn != "Connected" || ps.Repl != "Established":
				return false
			case primary && (ps.OutOfSync != 0 || ps.Unacked != 0):
				return false
			}
		}
	}
	return true
}

func (w *world) describe() string {
	var b bytes.Buffer
	for _, n := range w.nodes {
		if n.st == nil {
			fmt.Fprintf(&b, "%s down; ", n.name)
			continue
		}
		fmt.Fprintf(&b, "%s %s/%s", n.name, n.st.Role, n.st.Disk)
		for _, ps := range n.st.Peers {
			fmt.Fprintf(&b, " [%s %s %s oos=%d unacked=%d", ps.Name, ps.Conn, ps.Repl, ps.OutOfSync, ps.Unacked)
			if ps.LastError != "" {
				fmt.Fprintf(&b, " err=%q", ps.LastError)
			}
			b.WriteString("]")
		}
		b.WriteString("; ")
	}
	w.mu.Lock()
	fmt.Fprintf(&b, "%d disk operations and %d connections pending", len(w.ops), len(w.conns))
	w.mu.Unlock()
	return b.String()
}

// checkIdentical holds (d): every node that is UpToDate and Established
// with the Primary, nothing out of sync between them, has the Primary's
// bytes.
func (w *world) checkIdentical() {
	var p *simNode
	for _, n := range w.nodes {
		if n.st != nil && n.st.Role == "Primary" {
			p = n
		}
	}
	if p == nil {
		return
	}
	inSync := map[string]bool{}
	for _, ps := range p.st.Peers {
		inSync[ps.Name] = ps.Conn == "Connected" && ps.Repl == "Established" && ps.OutOfSync == 0
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, n := range w.nodes {
		if n == p || n.st == nil || n.st.Disk != "UpToDate" || !inSync[n.name] {
			continue
		}
		if diff := w.differ(p, n); diff != "" {
			w.violate("d", "%s is UpToDate and in sync with the Primary %s but its data differs: %s", n.name, p.name, diff)
		}
	}
}

// differ compares two nodes' data and describes the first differences.
// Called with mu held.
func (w *world) differ(a, b *simNode) string {
	pages := map[int64]bool{}
	for pg := range a.data.view {
		pages[pg] = true
	}
	for pg := range b.data.view {
		pages[pg] = true
	}
	var list []int64
	for pg := range pages {
		if !bytes.Equal(pageOrZero(a.data.view[pg]), pageOrZero(b.data.view[pg])) {
			list = append(list, pg)
		}
	}
	slices.Sort(list)
	var out []string
	for _, pg := range list {
		out = append(out, fmt.Sprintf("block %d: %s holds %s, %s holds %s", pg, a.name, w.describeBlock(a, pg), b.name, w.describeBlock(b, pg)))
	}
	return summarize(out)
}

func (w *world) describeBlock(n *simNode, pg int64) string {
	tag, ok, err := checker.DecodeBlock(pageOrZero(n.data.view[pg]), w.m.run, uint64(pg))
	switch {
	case err != nil:
		return err.Error()
	case !ok:
		return "zeroes"
	}
	x := w.m.writes[tag.Seq]
	return fmt.Sprintf("write %d (term %d, issued at %d, completed at %d)", tag.Seq, x.term.id, x.Submitted, x.Complete)
}

// shutdown kills every node and waits for their goroutines to end.
func (w *world) shutdown() {
	for _, n := range w.nodes {
		if n.up {
			w.crash(n, false)
		}
	}
	for {
		w.mu.Lock()
		open := slices.ContainsFunc(w.incs, func(inc *incarnation) bool { return !inc.closed })
		w.mu.Unlock()
		if !open {
			break
		}
		// An administrative request still runs on a dead incarnation;
		// it ends with an error once its resource is gone.
		time.Sleep(10 * time.Millisecond)
	}
	w.closers.Wait()
	w.clients.Wait() // their requests failed as their resources went down
	// An administrative request that retries (a demotion waiting for
	// requests to end) returns at its next try once its daemon is
	// closed. One still running after a minute is left for synctest to
	// report as a leak.
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); {
		w.mu.Lock()
		busy := slices.ContainsFunc(w.incs, func(inc *incarnation) bool { return inc.busy > 0 })
		w.mu.Unlock()
		if !busy {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
}
