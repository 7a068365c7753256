package failover

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"
)

// testGroup is a consensus group of in-process members on raft's
// in-memory transport, which can be cut apart.
type testGroup struct {
	t       *testing.T
	names   []string
	hub     *MemHub
	members map[string]*Member
	mu      sync.Mutex
	applied map[string][]Promotion // per member, what OnPromotion saw
}

func newTestGroup(t *testing.T, names ...string) *testGroup {
	t.Helper()
	g := &testGroup{t: t, names: names, hub: NewMemHub(),
		members: map[string]*Member{}, applied: map[string][]Promotion{}}
	var voters []Voter
	for _, n := range names {
		voters = append(voters, Voter{ID: n, Addr: n})
	}
	for _, n := range names {
		m, err := Start(Config{ID: n, Voters: voters, Network: g.hub.Join(n), DetectionTimeout: 100 * time.Millisecond,
			OnPromotion: func(p Promotion) {
				g.mu.Lock()
				defer g.mu.Unlock()
				g.applied[n] = append(g.applied[n], p)
			}})
		if err != nil {
			t.Fatal(err)
		}
		g.members[n] = m
	}
	t.Cleanup(func() {
		for _, n := range names {
			if m := g.members[n]; m != nil {
				_ = m.Close()
			}
		}
	})
	return g
}

// heal connects every pair of members.
func (g *testGroup) heal() { g.hub.Heal() }

// isolate cuts member n off from every other, both ways.
func (g *testGroup) isolate(n string) { g.hub.Isolate(n) }

// leaderAmong waits until exactly one of the named members leads and the
// others know it.
func (g *testGroup) leaderAmong(names ...string) string {
	g.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		var leaders []string
		for _, n := range names {
			if g.members[n].IsLeader() {
				leaders = append(leaders, n)
			}
		}
		if len(leaders) == 1 {
			agreed := true
			for _, n := range names {
				agreed = agreed && g.members[n].Leader() == leaders[0]
			}
			if agreed {
				return leaders[0]
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	g.t.Fatalf("no single leader among %v", names)
	return ""
}

// waitCurrent waits until every named member applied want for its resource.
func (g *testGroup) waitCurrent(want Promotion, names ...string) {
	g.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for _, n := range names {
		for g.members[n].Current(want.Resource) != want {
			if time.Now().After(deadline) {
				g.t.Fatalf("%s has %+v, want %+v", n, g.members[n].Current(want.Resource), want)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

func (g *testGroup) appliedOn(n string) []Promotion {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Clone(g.applied[n])
}

// promote proposes on whichever of the named members leads, again while
// leadership moves (a leader elected on a loaded machine may lose its
// majority for a heartbeat): the proposal names the term it replaces, so a
// retry after an unknown outcome is committed at most once.
func (g *testGroup) promote(names []string, resource, node string, after uint64) Promotion {
	g.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		leader := g.leaderAmong(names...)
		p, err := promote(g.t, g.members[leader], resource, node, after)
		switch {
		case err == nil:
			return p
		case errors.Is(err, ErrStale):
			if cur := g.members[leader].Current(resource); cur.Node == node && cur.Term == after+1 {
				return cur // an earlier try was committed after all
			}
			g.t.Fatal(err)
		case time.Now().After(deadline):
			g.t.Fatal(err)
		}
	}
}

func others(all []string, not string) []string {
	return slices.DeleteFunc(slices.Clone(all), func(s string) bool { return s == not })
}

func promote(t *testing.T, m *Member, resource, node string, after uint64) (Promotion, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return m.Promote(ctx, resource, node, after)
}

// TestLeaderFailureThenPromotionCommittedOnce: two data nodes and a
// witness. A promotion commits on every member; the leader dies; the two
// survivors elect a new leader, which commits the next promotion, and a
// second proposal made on the same view (after the same term) is refused
// as stale: every term is committed once, for one node.
func TestLeaderFailureThenPromotionCommittedOnce(t *testing.T) {
	names := []string{"alpha", "beta", "witness"}
	g := newTestGroup(t, names...)
	leader := g.leaderAmong(names...)

	// A follower forwards its proposal to the leader.
	follower := others(names, leader)[0]
	first, err := promote(t, g.members[follower], "r0", "alpha", 0)
	if err != nil {
		first = g.promote(names, "r0", "alpha", 0) // leadership moved meanwhile
	}
	if first.Node != "alpha" || first.Term != 1 {
		t.Fatalf("first promotion %+v, want alpha in term 1", first)
	}
	g.waitCurrent(first, names...)

	if err := g.members[leader].Close(); err != nil {
		t.Fatal(err)
	}
	g.members[leader] = nil
	rest := others(names, leader)
	second := g.promote(rest, "r0", "beta", first.Term)
	newLeader := g.leaderAmong(rest...)
	if second.Node != "beta" || second.Term != 2 {
		t.Fatalf("second promotion %+v, want beta in term 2", second)
	}
	if _, err := promote(t, g.members[newLeader], "r0", "witness", first.Term); !errors.Is(err, ErrStale) {
		t.Fatalf("a second promotion after term 1: %v, want ErrStale", err)
	}
	g.waitCurrent(second, rest...)
	for _, n := range rest {
		var terms []uint64
		for _, p := range g.appliedOn(n) {
			terms = append(terms, p.Term)
		}
		if !slices.Equal(terms, []uint64{1, 2}) {
			t.Errorf("%s applied terms %v, want [1 2]: each once, in order", n, terms)
		}
	}
}

// TestMinorityCannotCommitPromotion: the leader is cut off from both other
// members. Its proposal fails and is never applied anywhere, while the
// majority elects a leader and commits its own promotion; once the
// partition heals, the old leader holds the majority's promotion only.
func TestMinorityCannotCommitPromotion(t *testing.T) {
	names := []string{"alpha", "beta", "witness"}
	g := newTestGroup(t, names...)
	base := g.promote(names, "r0", "alpha", 0)
	old := g.leaderAmong(names...)
	g.waitCurrent(base, names...)

	g.isolate(old)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if p, err := g.members[old].Promote(ctx, "r0", "minority", base.Term); err == nil {
		t.Fatalf("the isolated leader committed %+v", p)
	}
	if got := g.members[old].Current("r0"); got != base {
		t.Fatalf("the isolated leader applied %+v", got)
	}

	rest := others(names, old)
	won := g.promote(rest, "r0", rest[0], base.Term)
	if won.Term != base.Term+1 || won.Node != rest[0] {
		t.Fatalf("majority's promotion %+v", won)
	}

	g.heal()
	g.waitCurrent(won, names...)
	for _, n := range names {
		for _, p := range g.appliedOn(n) {
			if p.Node == "minority" {
				t.Errorf("%s applied the minority's promotion %+v", n, p)
			}
		}
	}
}

// TestRestartKeepsTheLog: a member with a directory (the daemon's bolt
// store) finds its committed promotions again after a restart, so a node
// never forgets a term it saw.
func TestRestartKeepsTheLog(t *testing.T) {
	dir := t.TempDir()
	hub := NewMemHub()
	start := func() *Member {
		m, err := Start(Config{ID: "solo", Voters: []Voter{{ID: "solo", Addr: "solo"}}, Network: hub.Join("solo"),
			Dir: dir, DetectionTimeout: 100 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	m := start()
	g := &testGroup{t: t, names: []string{"solo"}, members: map[string]*Member{"solo": m}}
	want := g.promote(g.names, "r0", "solo", 0)
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	m = start()
	defer m.Close()
	g.members["solo"] = m
	g.waitCurrent(want, "solo")
}

// TestTCPNetwork: three members on TCPNetworks (the daemon's), raft and
// forwarded proposals on one port each: a follower's proposal reaches the
// leader and commits everywhere.
func TestTCPNetwork(t *testing.T) {
	names := []string{"alpha", "beta", "witness"}
	nets := map[string]*TCPNetwork{}
	var voters []Voter
	for _, n := range names {
		tn, err := ListenTCP("127.0.0.1:0", time.Second, nil)
		if err != nil {
			t.Fatal(err)
		}
		nets[n] = tn
		voters = append(voters, Voter{ID: n, Addr: tn.Addr()})
	}
	g := &testGroup{t: t, names: names, members: map[string]*Member{}}
	for _, n := range names {
		m, err := Start(Config{ID: n, Voters: voters, Network: nets[n], DetectionTimeout: 100 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		g.members[n] = m
		t.Cleanup(func() { _ = m.Close() })
	}
	leader := g.leaderAmong(names...)
	follower := others(names, leader)[0]
	var p Promotion
	deadline := time.Now().Add(20 * time.Second)
	for {
		var err error
		if p, err = promote(t, g.members[follower], "r0", "beta", 0); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a follower's proposal over TCP: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if p.Node != "beta" || p.Term != 1 {
		t.Fatalf("committed %+v, want beta in term 1", p)
	}
	g.waitCurrent(p, names...)
}
