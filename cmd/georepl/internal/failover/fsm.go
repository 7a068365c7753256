package failover

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"sort"
	"sync"
	"time"

	"github.com/georepl/georepl/core"
	"github.com/hashicorp/raft"
)

// Promotion is the log's record of a resource's Primary: the node promoted
// and the term it holds. Term 0 (and no node) means no promotion was ever
// committed for the resource.
type Promotion struct {
	Resource string `json:"resource"`
	Node     string `json:"node"`
	Term     uint64 `json:"term"`
	// Index is the raft log index of the entry that made it.
	Index uint64 `json:"index"`
}

// ErrStale: a promotion was proposed on a term the log has moved past
// (another promotion was committed in between).
var ErrStale = errors.New("failover: stale promotion")

// Report is what a member says about its node's copy of a resource, in
// the log: committed, it tells the leader that the node was alive and
// reached a majority of voters when it sent it.
type Report struct {
	Role core.Role      `json:"role"`
	Disk core.DiskState `json:"disk"`
	// Current is the node's current generation id, Previous the one
	// before it (its first history id).
	Current  uint64 `json:"current"`
	Previous uint64 `json:"previous,omitempty"`
	// Fenced: the node is Primary of a term older than one it has seen.
	Fenced bool `json:"fenced,omitempty"`
}

// seenReport is a node's last report as this member applied it: its log
// index (replicated state: a promotion names the index of the lost
// Primary's last report it was decided on) and when this member applied
// it (its own clock: the leader measures freshness with its own).
type seenReport struct {
	Report
	Index uint64 `json:"index"`
	at    time.Time
}

// reportResult is what applying a report returns to its proposer.
type reportResult struct {
	// Holds: the reporting node holds the resource's last promotion; only
	// then is a Primary's report its lease.
	Holds bool
}

// command is one log entry. After is the term the proposer saw for the
// resource: the entry promotes only if the term is still that one.
type command struct {
	Op       string  `json:"op"`
	Resource string  `json:"resource"`
	Node     string  `json:"node"`
	After    uint64  `json:"after,omitempty"`
	Report   *Report `json:"report,omitempty"`
	// HolderReport, on a promotion that replaces a lost Primary, is the
	// log index of its last report the decision saw: the promotion is
	// stale if a newer one was committed since (the Primary was not lost,
	// and holds a lease from it).
	HolderReport *uint64 `json:"holder_report,omitempty"`
}

const (
	opPromote = "promote"
	opReport  = "report"
)

// fsm is the replicated state: per resource, the last committed
// promotion. raft calls Apply, Snapshot and Restore from one goroutine;
// the mutex is for readers (Current).
type fsm struct {
	mu    sync.Mutex
	state map[string]Promotion
	// reports are the last report of each node, by resource and node.
	reports  map[string]map[string]seenReport
	notify   func(Promotion)
	notifyMu sync.Mutex // keeps notifications in log order
}

func newFSM(notify func(Promotion)) *fsm {
	return &fsm{state: map[string]Promotion{}, reports: map[string]map[string]seenReport{}, notify: notify}
}

// Apply applies one committed entry. It returns a Promotion, or an error
// (ErrStale, or a malformed entry) that the proposer receives.
func (f *fsm) Apply(l *raft.Log) any {
	var c command
	if err := json.Unmarshal(l.Data, &c); err != nil {
		return fmt.Errorf("failover: log entry %d: %w", l.Index, err)
	}
	if c.Op == opReport && c.Resource != "" && c.Node != "" && c.Report != nil {
		f.mu.Lock()
		defer f.mu.Unlock()
		if f.reports[c.Resource] == nil {
			f.reports[c.Resource] = map[string]seenReport{}
		}
		f.reports[c.Resource][c.Node] = seenReport{Report: *c.Report, Index: l.Index, at: time.Now()}
		return reportResult{Holds: f.state[c.Resource].Node == c.Node}
	}
	if c.Op != opPromote || c.Resource == "" || c.Node == "" {
		return fmt.Errorf("failover: log entry %d: unknown operation %q for resource %q node %q", l.Index, c.Op, c.Resource, c.Node)
	}
	f.notifyMu.Lock()
	defer f.notifyMu.Unlock()
	f.mu.Lock()
	cur := f.state[c.Resource]
	if cur.Term != c.After {
		f.mu.Unlock()
		return fmt.Errorf("%w: %s on %s proposed after term %d, the log is at term %d (%s)", ErrStale, c.Resource, c.Node, c.After, cur.Term, cur.Node)
	}
	if c.HolderReport != nil {
		if last := f.reports[c.Resource][cur.Node].Index; last != *c.HolderReport {
			f.mu.Unlock()
			return fmt.Errorf("%w: %s on %s was decided on report %d of %s, which has reported since (entry %d)", ErrStale, c.Resource, c.Node, *c.HolderReport, cur.Node, last)
		}
	}
	p := Promotion{Resource: c.Resource, Node: c.Node, Term: c.After + 1, Index: l.Index}
	f.state[c.Resource] = p
	f.mu.Unlock()
	if f.notify != nil {
		f.notify(p)
	}
	return p
}

func (f *fsm) current(resource string) Promotion {
	f.mu.Lock()
	defer f.mu.Unlock()
	p, ok := f.state[resource]
	if !ok {
		return Promotion{Resource: resource}
	}
	return p
}

// reportsOf is a copy of the last reports of resource's nodes.
func (f *fsm) reportsOf(resource string) map[string]seenReport {
	f.mu.Lock()
	defer f.mu.Unlock()
	return maps.Clone(f.reports[resource])
}

func (f *fsm) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := snapshot{Promotions: maps.Clone(f.state), Reports: map[string]map[string]seenReport{}}
	for res, nodes := range f.reports {
		s.Reports[res] = maps.Clone(nodes)
	}
	return s, nil
}

// Restore replaces the state with a snapshot's. The node acting on it
// learns every resource's term again (notify), as after Apply.
func (f *fsm) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	var snap snapshot
	if err := json.NewDecoder(rc).Decode(&snap); err != nil {
		return fmt.Errorf("failover: restoring snapshot: %w", err)
	}
	s := snap.Promotions
	if s == nil {
		s = map[string]Promotion{}
	}
	if snap.Reports == nil {
		snap.Reports = map[string]map[string]seenReport{}
	}
	// A restored report counts from now: later than it was sent.
	now := time.Now()
	for _, nodes := range snap.Reports {
		for n, r := range nodes {
			r.at = now
			nodes[n] = r
		}
	}
	f.notifyMu.Lock()
	defer f.notifyMu.Unlock()
	f.mu.Lock()
	f.state, f.reports = s, snap.Reports
	f.mu.Unlock()
	if f.notify != nil {
		names := make([]string, 0, len(s))
		for name := range s {
			names = append(names, name)
		}
		sort.Strings(names)
		for _, name := range names {
			f.notify(s[name])
		}
	}
	return nil
}

// snapshot is the replicated state: promotions and last reports.
type snapshot struct {
	Promotions map[string]Promotion             `json:"promotions"`
	Reports    map[string]map[string]seenReport `json:"reports"`
}

func (s snapshot) Persist(sink raft.SnapshotSink) error {
	if err := json.NewEncoder(sink).Encode(s); err != nil {
		_ = sink.Cancel()
		return fmt.Errorf("failover: writing snapshot: %w", err)
	}
	return sink.Close()
}

func (snapshot) Release() {}
