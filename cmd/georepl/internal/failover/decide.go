package failover

import (
	"fmt"
	"sort"

	"github.com/georepl/georepl/core"
)

// Candidate is what one node reported about a resource, as the leader
// last heard it.
type Candidate struct {
	Node string
	// Witness: a voter without data; never promoted.
	Witness bool
	// AutoPromote is the node's auto_promote setting (false on a DR node).
	AutoPromote bool
	// Priority orders eligible nodes: the highest is promoted.
	Priority int
	// Fresh: the node reported within the detection timeout.
	Fresh bool
	Role  core.Role
	Disk  core.DiskState
	// Current is the node's current generation id, Previous the one
	// before it.
	Current, Previous uint64
}

// Situation is everything Decide looks at for one resource.
type Situation struct {
	// Holder is the log's promotion (Term 0: none committed yet).
	Holder Promotion
	// HolderGen is the last current generation id the holder reported as
	// Primary (0: unknown).
	HolderGen uint64
	// PromoteConsistent allows, when no node qualifies as UpToDate, the
	// best Consistent or Outdated one (explicit policy: the writes it
	// lacks are lost).
	PromoteConsistent bool
	Candidates        []Candidate
}

// Decision is Decide's verdict: promote Node after term After, or not
// (Node empty), and why, for the log and status.
type Decision struct {
	Node   string
	After  uint64
	Reason string
}

// Decide says whether one node of the resource is to be promoted, and
// which. It promotes only when the log names a Primary (the first Primary
// is the operator's choice), that Primary has not reported within the
// detection timeout (one that reports in time is not replaced, whatever
// its role: a demotion is the operator's), and no other node reports
// being Primary. A node qualifies when it is a data
// node (not a witness) with auto_promote, reported in time, and is
// UpToDate in the generation the lost Primary last reported, or in the
// one the Primary started after it (its first history id is the
// reported one): a leased Primary acknowledges writes only in a
// generation the log holds, so that node has every write the Primary
// acknowledged, while a node UpToDate in an older generation stopped
// receiving writes before the failure and would lose them. Without such a node nothing is promoted,
// unless PromoteConsistent: then the best Consistent, Outdated or
// UpToDate-in-another-generation node is. Among the qualifying nodes the
// highest priority wins, then the lowest name, so that every member
// decides alike.
func Decide(s Situation) Decision {
	if s.Holder.Term == 0 || s.Holder.Node == "" {
		return Decision{Reason: "no promotion in the log: the first Primary is the operator's"}
	}
	for _, c := range s.Candidates {
		switch {
		case c.Fresh && c.Node == s.Holder.Node:
			return Decision{Reason: fmt.Sprintf("%s holds term %d and reports in time (%v)", c.Node, s.Holder.Term, c.Role)}
		case c.Fresh && c.Role == core.Primary:
			return Decision{Reason: fmt.Sprintf("%s reports being Primary although term %d is %s's: the operator must demote one", c.Node, s.Holder.Term, s.Holder.Node)}
		}
	}
	var best, fallback []Candidate
	for _, c := range s.Candidates {
		if c.Node == s.Holder.Node || c.Witness || !c.AutoPromote || !c.Fresh {
			continue
		}
		switch {
		case c.Disk == core.UpToDate && s.HolderGen != 0 && (c.Current == s.HolderGen || c.Previous == s.HolderGen):
			best = append(best, c)
		case c.Disk == core.UpToDate || c.Disk == core.Consistent || c.Disk == core.Outdated:
			fallback = append(fallback, c)
		}
	}
	pick := best
	why := "UpToDate in the lost Primary's generation"
	if len(pick) == 0 {
		if !s.PromoteConsistent {
			return Decision{Reason: fmt.Sprintf("%s is lost (term %d) and no node with auto_promote is UpToDate in its generation %x: waiting for the operator", s.Holder.Node, s.Holder.Term, s.HolderGen)}
		}
		pick = fallback
		why = "best consistent copy, by policy: writes it lacks are lost"
	}
	if len(pick) == 0 {
		return Decision{Reason: fmt.Sprintf("%s is lost (term %d) and no node with auto_promote has a consistent copy", s.Holder.Node, s.Holder.Term)}
	}
	sort.Slice(pick, func(i, j int) bool {
		a, b := pick[i], pick[j]
		if a.Priority != b.Priority {
			return a.Priority > b.Priority
		}
		if rank(a.Disk) != rank(b.Disk) {
			return rank(a.Disk) > rank(b.Disk)
		}
		return a.Node < b.Node
	})
	c := pick[0]
	return Decision{Node: c.Node, After: s.Holder.Term,
		Reason: fmt.Sprintf("%s is lost (term %d): promoting %s (priority %d, %v, %s)", s.Holder.Node, s.Holder.Term, c.Node, c.Priority, c.Disk, why)}
}

// rank orders the fallback disk states: UpToDate (of another
// generation) before Consistent before Outdated.
func rank(d core.DiskState) int {
	switch d {
	case core.UpToDate:
		return 2
	case core.Consistent:
		return 1
	}
	return 0
}
