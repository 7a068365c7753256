package core

import (
	"testing"

	"github.com/georepl/georepl/core/wire"
	"pgregory.net/rapid"
)

// TestSplitBrainVictim checks each policy's verdict, from both ends.
func TestSplitBrainVictim(t *testing.T) {
	side := func(node NodeID, pol SplitBrainPolicy, changes, promoted uint64) sbSide {
		return sbSide{node: node, SplitBrain: wire.SplitBrain{Changes: changes, Promoted: promoted, Policy: uint8(pol)}}
	}
	mine := func(s sbSide) sbSide { s.Flags |= wire.SplitBrainDiscardMine; return s }
	named := func(s sbSide, v NodeID) sbSide { s.Victim = uint8(v); return s }
	const none = NodeID(255)
	tests := []struct {
		name   string
		a, b   sbSide
		victim NodeID // none: cannot decide
	}{
		{"disconnect", side(0, SplitBrainDisconnect, 1, 1), side(1, SplitBrainDisconnect, 2, 2), none},
		{"zero changes: one side", side(0, DiscardZeroChanges, 0, 0), side(1, DiscardZeroChanges, 5, 0), 0},
		{"zero changes: the other side", side(0, DiscardZeroChanges, 5, 0), side(1, DiscardZeroChanges, 0, 0), 1},
		{"zero changes: both", side(0, DiscardZeroChanges, 0, 0), side(1, DiscardZeroChanges, 0, 0), none},
		{"zero changes: neither", side(0, DiscardZeroChanges, 1, 0), side(1, DiscardZeroChanges, 2, 0), none},
		{"least changes", side(3, DiscardLeastChanges, 7, 0), side(1, DiscardLeastChanges, 9, 0), 3},
		{"least changes: tie", side(3, DiscardLeastChanges, 7, 0), side(1, DiscardLeastChanges, 7, 0), none},
		{"younger primary", side(0, DiscardYoungerPrimary, 0, 100), side(1, DiscardYoungerPrimary, 0, 200), 1},
		{"younger primary: unknown time", side(0, DiscardYoungerPrimary, 0, 0), side(1, DiscardYoungerPrimary, 0, 200), none},
		{"younger primary: same time", side(0, DiscardYoungerPrimary, 0, 5), side(1, DiscardYoungerPrimary, 0, 5), none},
		{"discard node", named(side(0, DiscardNode, 9, 0), 1), named(side(1, DiscardNode, 1, 0), 1), 1},
		{"discard node: not an end", named(side(0, DiscardNode, 9, 0), 2), named(side(1, DiscardNode, 1, 0), 2), none},
		{"discard node: different nodes", named(side(0, DiscardNode, 9, 0), 0), named(side(1, DiscardNode, 1, 0), 1), none},
		{"policies differ", side(0, DiscardLeastChanges, 1, 0), side(1, DiscardZeroChanges, 0, 0), none},
		{"discard-my-data beats the policy", mine(side(0, DiscardLeastChanges, 9, 0)), side(1, DiscardLeastChanges, 1, 0), 0},
		{"discard-my-data beats different policies", side(0, SplitBrainDisconnect, 0, 0), mine(side(1, DiscardNode, 0, 0)), 1},
		{"discard-my-data on both ends", mine(side(0, DiscardLeastChanges, 9, 0)), mine(side(1, DiscardLeastChanges, 1, 0)), none},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, ends := range [][2]sbSide{{tt.a, tt.b}, {tt.b, tt.a}} {
				v, how, err := splitBrainVictim(ends[0], ends[1])
				switch {
				case tt.victim == none && err == nil:
					t.Fatalf("node %d: victim %d (%s), want no decision", ends[0].node, v, how)
				case tt.victim != none && err != nil:
					t.Fatalf("node %d: %v, want victim %d", ends[0].node, err, tt.victim)
				case tt.victim != none && v != tt.victim:
					t.Fatalf("node %d: victim %d, want %d", ends[0].node, v, tt.victim)
				}
			}
		})
	}
}

// TestSplitBrainVictimSymmetric: whatever the two hellos say, both ends
// reach the same verdict (the same victim, or the same reason not to
// decide), and a victim is always one of the two ends.
func TestSplitBrainVictimSymmetric(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		draw := func(label string, node NodeID) sbSide {
			return sbSide{node: node, SplitBrain: wire.SplitBrain{
				Changes:  rapid.Uint64Range(0, 3).Draw(t, label+" changes"),
				Promoted: rapid.Uint64Range(0, 3).Draw(t, label+" promoted"),
				Policy:   rapid.Uint8Range(0, uint8(DiscardNode)+1).Draw(t, label+" policy"),
				Victim:   rapid.Uint8Range(0, 3).Draw(t, label+" victim"),
				Flags:    rapid.Uint8Range(0, 1).Draw(t, label+" flags"),
			}}
		}
		a := draw("a", NodeID(rapid.IntRange(0, 1).Draw(t, "a node")))
		b := draw("b", NodeID(rapid.IntRange(2, 3).Draw(t, "b node")))
		va, howA, errA := splitBrainVictim(a, b)
		vb, howB, errB := splitBrainVictim(b, a)
		if (errA == nil) != (errB == nil) || va != vb || howA != howB ||
			(errA != nil && errA.Error() != errB.Error()) {
			t.Fatalf("asymmetric: %d %q %v / %d %q %v", va, howA, errA, vb, howB, errB)
		}
		if errA == nil && va != a.node && va != b.node {
			t.Fatalf("victim %d is neither end (%d, %d)", va, a.node, b.node)
		}
	})
}

// TestDiscardMyDataOffer: the offer goes into the next hello to that peer
// only, ends at Connected, and is ignored while the peer is connected (it
// would otherwise linger until some later split brain).
func TestDiscardMyDataOffer(t *testing.T) {
	c := newCluster(3, nil, nil)
	c.quiet = true
	n0 := c.nodes[0].eng
	offered := func(peer NodeID) bool {
		h := n0.Hello(peer)
		return h.SplitBrain.Flags&wire.SplitBrainDiscardMine != 0
	}
	n0.DiscardMyData(1)
	if !offered(1) || offered(2) {
		t.Fatalf("offer towards n1 %v, n2 %v; want n1 only", offered(1), offered(2))
	}
	if err := c.connect(c.nodes[0], c.nodes[1]); err != nil {
		t.Fatal(err)
	}
	if offered(1) {
		t.Fatal("the offer outlived the handshake")
	}
	n0.DiscardMyData(1)
	c.handle(c.nodes[0])
	if offered(1) {
		t.Fatal("an offer to a connected peer was kept")
	}
}
