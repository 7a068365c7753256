package core

import (
	"slices"
	"testing"

	"github.com/georepl/georepl/protocols"
)

// TestPullAheadSustainedOverload writes faster than the link carries, for
// many rounds, to a protocol A peer with congestion policy pull-ahead. The
// application never waits for the peer, and the peer's replication state
// goes Established, Ahead, SyncSource once and stays there while the
// overload lasts (the hysteresis rule: no switching back and forth). When
// the writes stop, the catch-up resync finishes and the disks are equal.
func TestPullAheadSustainedOverload(t *testing.T) {
	c := newCluster(2, []protocols.Protocol{protocols.A}, func(cfg *Config) {
		cfg.Size = 1 << 20
		cfg.ResyncChunk = 16 << 10
		for i := range cfg.Peers {
			cfg.Peers[i].MaxBuffer = 32 << 10
			cfg.Peers[i].OnCongestion = CongestionPullAhead
		}
	})
	c.quiet = true
	n0, n1 := c.nodes[0], c.nodes[1]
	if err := c.connect(n0, n1); err != nil {
		t.Fatal(err)
	}
	if err := n0.eng.Promote(true); err != nil {
		t.Fatal(err)
	}
	c.handle(n0)
	c.stabilize()

	states := []ReplState{n0.eng.Status().Peers[0].Repl}
	note := func() {
		if r := n0.eng.Status().Peers[0].Repl; r != states[len(states)-1] {
			states = append(states, r)
		}
	}
	blocks := c.size / uint64(c.block)
	for round := range 400 {
		for k := range 3 {
			b := uint64(round*7+k*61) % blocks
			c.submit(n0, Request{Kind: ReqWrite, Offset: b * uint64(c.block), Length: uint64(c.block),
				Data: slices.Repeat([]byte{byte(round + k + 1)}, int(c.block))})
			note()
		}
		for len(n0.ops) > 0 {
			c.process(n0, -1, false, nil)
		}
		if p := n0.eng.Status().Pending; p != 0 {
			t.Fatalf("round %d: %d application requests wait for the congested peer", round, p)
		}
		// The link carries two frames per round; the peer keeps up with
		// what arrives.
		c.deliver(n0, n1, 2, nil)
		c.process(n1, -1, false, nil)
		c.deliver(n1, n0, -1, nil)
		note()
	}
	want := []ReplState{Established, Ahead, SyncSource}
	if !slices.Equal(states, want) {
		t.Fatalf("replication states under a sustained overload: %v, want %v", states, want)
	}
	c.stabilize()
	note()
	if got := states[len(states)-1]; got != Established {
		t.Fatalf("after the overload: %v, want Established", got)
	}
	if d := c.disks(); d[len(d)-len("all equal\n"):] != "all equal\n" {
		t.Fatalf("disks differ after the catch-up:\n%s", d)
	}
	if len(c.failed) > 0 {
		t.Fatalf("promises broken: %v", c.failed)
	}
}
