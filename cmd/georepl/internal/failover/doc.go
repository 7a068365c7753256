// Package failover is the record of who is Primary, kept in an embedded
// consensus log (hashicorp/raft) among the daemons of a cluster, and the
// rules that decide an automatic promotion.
//
// A promotion is a log entry (resource, node, the term it replaces). The
// state machine applies it only if the resource's term in the log is still
// the one the proposer saw, and then gives the resource the next term: so
// of two proposers that decided on the same situation, one wins and the
// other is told its view is stale, and every term is held by one node.
// The term is the fencing token: the node promoted in term T announces T
// in its hello (core.Config.Term, wire.Hello.Term), and a node that has
// seen T refuses a Primary of an older term.
//
// A node acts on a promotion when the log applies it (Config.OnPromotion),
// never on the proposer's return value: a proposal whose leader lost its
// majority fails (raft.ErrLeadershipLost) without saying whether the entry
// will be committed, and an entry proposed in a minority is never applied
// before a majority has it.
//
// Every member also reports its node's role, disk state and current
// generation into the log (Report); raft takes proposals on the leader
// only, so a follower forwards its own over its Network (one TCP address
// per member: ListenTCP). A committed report is the lease of a Primary:
// no other node is promoted before the leader has applied none of its
// reports for the detection timeout, so the Primary may complete writes
// for a shorter time after sending it (Loop, core.Engine.Lease).
//
// Decide holds the eligibility rules as a pure function of what the
// cluster reports (docs/architecture.md, "Automatic failover"); Loop runs
// them on the leader, proposes, and acts on every committed promotion
// through the driver's Local.
package failover
