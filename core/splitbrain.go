package core

import (
	"fmt"

	"github.com/georepl/georepl/core/wire"
)

// SplitBrainPolicy says how a connection recovers from a split brain
// (generation id row 6: both nodes changed the data since they were last
// in sync). Whatever the policy, nothing is merged: one node, the victim,
// discards its changes and becomes a sync target of the other (the
// survivor), which resynchronises the blocks either of them changed (its
// own marks and the victim's, never the whole device). Both ends decide
// from the two hellos alone, so they agree; when a policy cannot decide,
// the connection drops (StandAlone) as with SplitBrainDisconnect.
type SplitBrainPolicy uint8

const (
	// SplitBrainDisconnect never picks a victim: the connection drops
	// (StandAlone, ErrSplitBrain) until an operator discards one node's
	// changes (DiscardMyData). The default.
	SplitBrainDisconnect SplitBrainPolicy = iota
	// DiscardZeroChanges picks the node that marked no block for the other
	// since the split (its changes are none); if both or neither did, it
	// cannot decide.
	DiscardZeroChanges
	// DiscardYoungerPrimary picks the node promoted last (Config.Clock at
	// Promote, persisted): the older Primary kept serving through the
	// split. It cannot decide when either promotion time is unknown or
	// both are equal; the times come from two clocks, so clocks skewed by
	// more than the gap between the promotions pick the wrong node.
	DiscardYoungerPrimary
	// DiscardLeastChanges picks the node with fewer blocks marked for the
	// other; it cannot decide on a tie.
	DiscardLeastChanges
	// DiscardNode picks the node PeerConfig.DiscardNode names, when it is
	// one of the two ends; otherwise it cannot decide.
	DiscardNode
)

// SplitBrainPolicies lists every policy, the default first.
func SplitBrainPolicies() []SplitBrainPolicy {
	return []SplitBrainPolicy{SplitBrainDisconnect, DiscardZeroChanges, DiscardYoungerPrimary, DiscardLeastChanges, DiscardNode}
}

// String returns the policy's configuration spelling ("discard-least-changes").
func (sp SplitBrainPolicy) String() string {
	return enumName(uint8(sp), "SplitBrainPolicy", "disconnect", "discard-zero-changes",
		"discard-younger-primary", "discard-least-changes", "discard-node")
}

// DiscardMyData makes this node offer, in its next hello to peer, to be
// the victim of a split brain with it, whatever the connection's policy:
// the operator's recovery (`georepl connect --discard-my-data`). The offer
// lasts until the next Connected for peer; it is ignored while peer is
// connected, so that it cannot linger until some later split brain. A
// Primary is never a sync target, so a Primary's offer ends in a refusal
// naming it. Unknown peers are ignored.
func (e *Engine) DiscardMyData(peer NodeID) {
	if p := e.peer(peer); p != nil && p.conn != Connected {
		p.discardMine = true
	}
}

// sbSide is one end's split-brain inputs, as its hello carried them.
type sbSide struct {
	node NodeID
	wire.SplitBrain
}

// splitBrainVictim picks the node whose changes a split brain discards, or
// says why it cannot. It depends only on the two sides, and
// splitBrainVictim(a, b) == splitBrainVictim(b, a): both ends of a
// connection reach the same verdict independently.
//
// An operator's offer (DiscardMyData) from exactly one side decides;
// offers from both cannot. Otherwise both ends must have the same policy
// (and, for DiscardNode, the same node), which then decides.
func splitBrainVictim(a, b sbSide) (victim NodeID, how string, err error) {
	aMine, bMine := a.Flags&wire.SplitBrainDiscardMine != 0, b.Flags&wire.SplitBrainDiscardMine != 0
	switch {
	case aMine && bMine:
		return 0, "", fmt.Errorf("both nodes were told to discard their data")
	case aMine:
		return a.node, "discard-my-data", nil
	case bMine:
		return b.node, "discard-my-data", nil
	}
	// Order the two sides by node id, so that every message reads the same
	// on both ends.
	lo, hi := a, b
	if hi.node < lo.node {
		lo, hi = hi, lo
	}
	pol := SplitBrainPolicy(a.Policy)
	if a.Policy != b.Policy || (pol == DiscardNode && a.Victim != b.Victim) {
		return 0, "", fmt.Errorf("the nodes' after_split_brain settings differ (node %d: %v, node %d: %v)",
			lo.node, policyName(lo), hi.node, policyName(hi))
	}
	how = pol.String()
	switch pol {
	case SplitBrainDisconnect:
		return 0, "", fmt.Errorf("after_split_brain is disconnect")
	case DiscardZeroChanges:
		switch {
		case lo.Changes == 0 && hi.Changes == 0:
			return 0, "", fmt.Errorf("%s cannot decide: neither node marked a block", how)
		case lo.Changes == 0:
			return lo.node, how, nil
		case hi.Changes == 0:
			return hi.node, how, nil
		}
		return 0, "", fmt.Errorf("%s cannot decide: both nodes changed data (node %d %d blocks, node %d %d blocks)",
			how, lo.node, lo.Changes, hi.node, hi.Changes)
	case DiscardLeastChanges:
		switch {
		case lo.Changes < hi.Changes:
			return lo.node, how, nil
		case hi.Changes < lo.Changes:
			return hi.node, how, nil
		}
		return 0, "", fmt.Errorf("%s cannot decide: both nodes changed %d blocks", how, lo.Changes)
	case DiscardYoungerPrimary:
		switch {
		case lo.Promoted == 0 || hi.Promoted == 0:
			return 0, "", fmt.Errorf("%s cannot decide: a promotion time is unknown (node %d %d, node %d %d)",
				how, lo.node, lo.Promoted, hi.node, hi.Promoted)
		case lo.Promoted > hi.Promoted:
			return lo.node, how, nil
		case hi.Promoted > lo.Promoted:
			return hi.node, how, nil
		}
		return 0, "", fmt.Errorf("%s cannot decide: both nodes were promoted at %d", how, lo.Promoted)
	case DiscardNode:
		if v := NodeID(a.Victim); v == a.node || v == b.node {
			return v, fmt.Sprintf("%s %d", how, v), nil
		}
		return 0, "", fmt.Errorf("%s cannot decide: node %d is neither end of this connection", how, a.Victim)
	}
	return 0, "", fmt.Errorf("unknown after_split_brain policy %d", a.Policy)
}

func policyName(s sbSide) string {
	if pol := SplitBrainPolicy(s.Policy); pol == DiscardNode {
		return fmt.Sprintf("%v %d", pol, s.Victim)
	}
	return SplitBrainPolicy(s.Policy).String()
}
