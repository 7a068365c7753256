package failover

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/georepl/georepl/core"
)

// fakeCopy is a data node's copy of the resource as a Loop sees it: the
// engine's role, disk, generation and term, and its lease. It writes
// (is writable) while Primary, not fenced, and leased in its current
// generation, as core.Engine completes writes.
type fakeCopy struct {
	mu         sync.Mutex
	name       string
	role       core.Role
	disk       core.DiskState
	current    uint64
	term       uint64 // highest seen
	roleTerm   uint64
	leaseUntil time.Time
	leaseGen   uint64
	promotedAt time.Time
	nextGen    uint64
	witnesses  int
}

func (f *fakeCopy) State() (Report, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return Report{Role: f.role, Disk: f.disk, Current: f.current, Fenced: f.role == core.Primary && f.roleTerm < f.term}, true
}

func (f *fakeCopy) Act(p Promotion, force bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.term = max(f.term, p.Term)
	switch {
	case p.Node == f.name && f.role != core.Primary:
		if f.disk != core.UpToDate && !force {
			return fmt.Errorf("%s is %v", f.name, f.disk)
		}
		f.role, f.roleTerm, f.disk = core.Primary, p.Term, core.UpToDate
		if p.Term > 1 {
			// After a failover the lost Primary misses the writes: a
			// new generation (the first promotion has every node
			// connected).
			f.nextGen++
			f.current = f.current<<8 | f.nextGen
		}
		f.promotedAt = time.Now()
	case f.role == core.Primary && f.roleTerm < f.term:
		f.role = core.Secondary
	}
	return nil
}

func (f *fakeCopy) Lease(until time.Time, gen uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.leaseUntil, f.leaseGen = until, gen
}

func (f *fakeCopy) Witnesses(reachable int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.witnesses = reachable
}

func (f *fakeCopy) witnessesReachable() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.witnesses
}

func (f *fakeCopy) writable(now time.Time) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.role == core.Primary && f.roleTerm >= f.term && now.Before(f.leaseUntil) && f.leaseGen == f.current
}

func (f *fakeCopy) primary() (bool, time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.role == core.Primary && f.roleTerm >= f.term, f.promotedAt
}

// loopGroup is a resource of two data nodes and a witness, each with its
// Loop, on a MemHub.
type loopGroup struct {
	t      *testing.T
	hub    *MemHub
	copies map[string]*fakeCopy
	loops  map[string]*Loop
}

const testDetection = 600 * time.Millisecond

func newLoopGroup(t *testing.T) *loopGroup {
	g := &loopGroup{t: t, hub: NewMemHub(), copies: map[string]*fakeCopy{}, loops: map[string]*Loop{}}
	nodes := []Node{
		{Name: "alpha", Addr: "alpha", Priority: 1, AutoPromote: true},
		{Name: "beta", Addr: "beta", Priority: 1, AutoPromote: true},
		{Name: "witness", Addr: "witness", Witness: true},
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	for _, n := range nodes {
		cfg := LoopConfig{Resource: "r0", Self: n.Name, Nodes: nodes, DetectionTimeout: testDetection,
			Network: g.hub.Join(n.Addr), Log: log}
		if !n.Witness {
			c := &fakeCopy{name: n.Name, role: core.Secondary, disk: core.UpToDate, current: 0x10}
			g.copies[n.Name] = c
			cfg.Local = c
		}
		l, err := StartLoop(cfg)
		if err != nil {
			t.Fatal(err)
		}
		g.loops[n.Name] = l
	}
	t.Cleanup(func() {
		for _, l := range g.loops {
			if l != nil {
				_ = l.Close()
			}
		}
	})
	return g
}

// promoteAlpha makes alpha Primary through the log, as the operator's
// `georepl primary` does, and waits until it is writable.
func (g *loopGroup) promoteAlpha() {
	g.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := g.loops["alpha"].PromoteHere(ctx, false); err != nil {
		g.t.Fatal(err)
	}
	g.waitFor("alpha writable", func() bool { return g.copies["alpha"].writable(time.Now()) })
}

func (g *loopGroup) waitFor(what string, cond func() bool) {
	g.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			g.t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestLoopPromotesWhenThePrimaryDies: alpha is Primary; its daemon dies
// (its loop stops, its copy stops renewing). beta, UpToDate in alpha's
// generation, is promoted by the log, in the next term; the time from the
// death to beta's promotion is logged.
func TestLoopPromotesWhenThePrimaryDies(t *testing.T) {
	g := newLoopGroup(t)
	g.promoteAlpha()
	if h := g.loops["beta"].Status().Holder; h.Node != "alpha" || h.Term != 1 {
		t.Fatalf("after the operator's promotion the log holds %+v", h)
	}
	died := time.Now()
	if err := g.loops["alpha"].Close(); err != nil {
		t.Fatal(err)
	}
	g.loops["alpha"] = nil
	g.waitFor("beta promoted", func() bool { p, _ := g.copies["beta"].primary(); return p })
	_, at := g.copies["beta"].primary()
	t.Logf("failover time: %v from the Primary's death to the promotion (detection_timeout %v)", at.Sub(died), testDetection)
	g.waitFor("beta writable", func() bool { return g.copies["beta"].writable(time.Now()) })
	if h := g.loops["witness"].Status().Holder; h.Node != "beta" || h.Term != 2 {
		t.Fatalf("the log holds %+v, want beta in term 2", h)
	}
}

// TestLoopIsolatedPrimary: alpha, Primary, is cut off from beta and the
// witness. An observer samples both copies every millisecond: never are
// both writable at once. alpha's lease ends, beta is promoted; when the
// partition heals, alpha learns the new term and demotes itself.
func TestLoopIsolatedPrimary(t *testing.T) {
	g := newLoopGroup(t)
	g.promoteAlpha()

	stop := make(chan struct{})
	var both []time.Time
	var observed sync.WaitGroup
	observed.Add(1)
	go func() {
		defer observed.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
			}
			now := time.Now()
			if g.copies["alpha"].writable(now) && g.copies["beta"].writable(now) {
				both = append(both, now)
			}
		}
	}()

	cut := time.Now()
	g.hub.Isolate("alpha")
	g.waitFor("beta writable", func() bool { return g.copies["beta"].writable(time.Now()) })
	_, at := g.copies["beta"].primary()
	t.Logf("failover time: %v from the partition to the promotion (detection_timeout %v)", at.Sub(cut), testDetection)
	if g.copies["alpha"].writable(time.Now()) {
		t.Fatal("the isolated alpha is still writable after beta was promoted")
	}
	g.hub.Heal()
	g.waitFor("alpha demoted", func() bool {
		r, _ := g.copies["alpha"].State()
		return r.Role == core.Secondary
	})
	close(stop)
	observed.Wait()
	if len(both) > 0 {
		t.Fatalf("alpha and beta were both writable at %d samples, the first at %v after the partition", len(both), both[0].Sub(cut))
	}
	if h := g.loops["alpha"].Status().Holder; h.Node != "beta" {
		t.Fatalf("alpha's log holds %+v after healing, want beta", h)
	}
}

// TestLoopIsolatedSecondaryChangesNothing: beta is cut off; alpha keeps
// its lease (it reaches the witness) and nothing is promoted.
func TestLoopIsolatedSecondaryChangesNothing(t *testing.T) {
	g := newLoopGroup(t)
	g.promoteAlpha()
	g.hub.Isolate("beta")
	time.Sleep(3 * testDetection)
	if !g.copies["alpha"].writable(time.Now()) {
		t.Fatal("alpha lost its lease while it reaches the witness")
	}
	if p, _ := g.copies["beta"].primary(); p {
		t.Fatal("the isolated beta was promoted")
	}
	var terms []uint64
	for _, n := range []string{"alpha", "witness"} {
		terms = append(terms, g.loops[n].Status().Holder.Term)
	}
	if !slices.Equal(terms, []uint64{1, 1}) {
		t.Fatalf("terms %v, want alpha's term 1 everywhere", terms)
	}
}

// TestLoopWitnessReachable: a data node counts the witness reachable
// while the log commits its reports, and not once the witness is cut off
// (the other side of the partition), until it returns.
func TestLoopWitnessReachable(t *testing.T) {
	g := newLoopGroup(t)
	g.promoteAlpha()
	for _, n := range []string{"alpha", "beta"} {
		g.waitFor(n+" counts the witness", func() bool { return g.copies[n].witnessesReachable() == 1 })
	}
	g.hub.Isolate("witness")
	for _, n := range []string{"alpha", "beta"} {
		g.waitFor(n+" no longer counts the cut-off witness", func() bool { return g.copies[n].witnessesReachable() == 0 })
	}
	g.hub.Heal()
	for _, n := range []string{"alpha", "beta"} {
		g.waitFor(n+" counts the witness again", func() bool { return g.copies[n].witnessesReachable() == 1 })
	}
}
