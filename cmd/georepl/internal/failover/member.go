package failover

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
)

// Voter is one member of the consensus group: a data node or a witness.
type Voter struct {
	ID   string // the node's name in the configuration
	Addr string // its consensus address
}

// Config configures a Member.
type Config struct {
	// ID is this node's name; it must be one of Voters.
	ID string
	// Voters is the whole group, identical on every member: it bootstraps
	// a log that has no state yet.
	Voters []Voter
	// Network carries the consensus traffic and forwarded proposals
	// (ListenTCP in the daemon, a MemHub in tests). Close closes it.
	Network Network
	// Dir holds the log, the stable store and the snapshots; "" keeps them
	// in memory (tests: a restart forgets everything).
	Dir string
	// DetectionTimeout is how long a follower goes without hearing the
	// leader before it starts an election (raft's heartbeat and election
	// timeouts); the leader steps down after the same time without a
	// majority. 0 means one second.
	DetectionTimeout time.Duration
	// OnPromotion is called for every promotion the log applies on this
	// member, in log order, and for every resource after a snapshot is
	// restored. It must not block for long: raft applies nothing else
	// meanwhile.
	OnPromotion func(Promotion)
	// Logger receives raft's log; nil discards it.
	Logger hclog.Logger
}

// Member is this node's place in the consensus group.
type Member struct {
	raft  *raft.Raft
	fsm   *fsm
	net   Network
	close []func() error
}

// Start opens (or creates) this node's log and joins the group.
func Start(cfg Config) (*Member, error) {
	if cfg.ID == "" || cfg.Network == nil {
		return nil, errors.New("failover: Config needs ID and Network")
	}
	var servers []raft.Server
	found := false
	for _, v := range cfg.Voters {
		servers = append(servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(v.ID), Address: raft.ServerAddress(v.Addr)})
		found = found || v.ID == cfg.ID
	}
	if !found {
		return nil, fmt.Errorf("failover: node %q is not among the voters %v", cfg.ID, cfg.Voters)
	}
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.ID)
	timeout := cfg.DetectionTimeout
	if timeout == 0 {
		timeout = time.Second
	}
	rc.HeartbeatTimeout = timeout
	rc.ElectionTimeout = timeout
	rc.LeaderLeaseTimeout = timeout
	rc.CommitTimeout = min(timeout/10, rc.CommitTimeout)
	rc.Logger = cfg.Logger
	if rc.Logger == nil {
		rc.Logger = hclog.NewNullLogger()
	}
	m := &Member{fsm: newFSM(cfg.OnPromotion), net: cfg.Network}
	var (
		logs   raft.LogStore
		stable raft.StableStore
		snaps  raft.SnapshotStore
	)
	if cfg.Dir == "" {
		store := raft.NewInmemStore()
		logs, stable, snaps = store, store, raft.NewInmemSnapshotStore()
	} else {
		if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
			return nil, fmt.Errorf("failover: %w", err)
		}
		store, err := raftboltdb.NewBoltStore(filepath.Join(cfg.Dir, "raft.db"))
		if err != nil {
			return nil, fmt.Errorf("failover: opening the log in %s: %w", cfg.Dir, err)
		}
		m.close = append(m.close, store.Close)
		fss, err := raft.NewFileSnapshotStoreWithLogger(cfg.Dir, 2, rc.Logger)
		if err != nil {
			_ = store.Close()
			return nil, fmt.Errorf("failover: snapshots in %s: %w", cfg.Dir, err)
		}
		logs, stable, snaps = store, store, fss
	}
	has, err := raft.HasExistingState(logs, stable, snaps)
	if err == nil && !has {
		err = raft.BootstrapCluster(rc, logs, stable, snaps, cfg.Network.Transport(), raft.Configuration{Servers: servers})
	}
	if err == nil {
		m.raft, err = raft.NewRaft(rc, m.fsm, logs, stable, snaps, cfg.Network.Transport())
	}
	if err != nil {
		m.closeStores()
		return nil, fmt.Errorf("failover: starting node %s: %w", cfg.ID, err)
	}
	cfg.Network.Serve(m.serveForwarded)
	return m, nil
}

// ErrNotLeader: only the leader proposes; Leader says who it is.
var ErrNotLeader = errors.New("failover: not the consensus leader")

// Promote proposes that node becomes Primary of resource, replacing term
// after (the term this member's decision was based on), and waits until
// the entry is applied on the leader (a follower forwards the proposal).
// It returns the committed promotion, ErrStale if the log moved past
// after, ErrNotLeader if no leader is known or the one asked no longer
// leads, or raft's error when the leader lost its majority meanwhile (the
// outcome is then unknown: act on OnPromotion, not on this error).
func (m *Member) Promote(ctx context.Context, resource, node string, after uint64) (Promotion, error) {
	return m.promote(ctx, command{Op: opPromote, Resource: resource, Node: node, After: after})
}

// replace is Promote of a node that replaces a lost Primary, decided on
// its last report at log index holderReport: stale if it reported since.
func (m *Member) replace(ctx context.Context, resource, node string, after, holderReport uint64) (Promotion, error) {
	return m.promote(ctx, command{Op: opPromote, Resource: resource, Node: node, After: after, HolderReport: &holderReport})
}

func (m *Member) promote(ctx context.Context, c command) (Promotion, error) {
	resource, node := c.Resource, c.Node
	p, _, err := m.propose(ctx, c)
	if err != nil && !errors.Is(err, ErrStale) && !errors.Is(err, ErrNotLeader) {
		err = fmt.Errorf("failover: promoting %s on %s: %w", resource, node, err)
	}
	return p, err
}

// Report commits what node says about its copy of resource. It returns
// once the log holds it (a majority of voters stored it), with whether
// node holds the resource's last promotion, or an error.
func (m *Member) Report(ctx context.Context, resource, node string, r Report) (holds bool, err error) {
	_, holds, err = m.propose(ctx, command{Op: opReport, Resource: resource, Node: node, Report: &r})
	return holds, err
}

// answer is a forwarded proposal's result.
type answer struct {
	Promotion *Promotion `json:"promotion,omitempty"`
	Err       string     `json:"err,omitempty"`
	Stale     bool       `json:"stale,omitempty"`
	NotLeader bool       `json:"not_leader,omitempty"`
	Holds     bool       `json:"holds,omitempty"`
}

// propose applies c on the leader: here, or forwarded to it.
func (m *Member) propose(ctx context.Context, c command) (Promotion, bool, error) {
	b, err := json.Marshal(c)
	if err != nil {
		return Promotion{}, false, err
	}
	if m.raft.State() == raft.Leader {
		return m.apply(ctx, b)
	}
	addr, id := m.raft.LeaderWithID()
	if addr == "" {
		return Promotion{}, false, fmt.Errorf("%w: no leader known", ErrNotLeader)
	}
	out, err := m.net.Forward(ctx, string(addr), b)
	if err != nil {
		return Promotion{}, false, fmt.Errorf("failover: forwarding to the leader %s at %s: %w", id, addr, err)
	}
	var a answer
	if err := json.Unmarshal(out, &a); err != nil {
		return Promotion{}, false, fmt.Errorf("failover: the leader %s answered %q: %w", id, out, err)
	}
	switch {
	case a.NotLeader:
		return Promotion{}, false, fmt.Errorf("%w: %s no longer leads (%s)", ErrNotLeader, id, a.Err)
	case a.Stale:
		return Promotion{}, false, fmt.Errorf("%w: %s", ErrStale, a.Err)
	case a.Err != "":
		return Promotion{}, false, fmt.Errorf("failover: the leader %s: %s", id, a.Err)
	case a.Promotion != nil:
		return *a.Promotion, false, nil
	}
	return Promotion{}, a.Holds, nil
}

// apply proposes entry b as the leader and waits until it is applied, or
// until ctx ends: raft's own wait ends only at commit, at a loss of
// leadership or at shutdown, and a leader that keeps its followers'
// contact while they reject its appends neither commits nor loses
// leadership. The entry may still commit after ctx ended.
func (m *Member) apply(ctx context.Context, b []byte) (Promotion, bool, error) {
	timeout := time.Duration(0)
	if d, ok := ctx.Deadline(); ok {
		timeout = max(time.Until(d), time.Millisecond)
	}
	f := m.raft.Apply(b, timeout)
	applied := make(chan error, 1)
	go func() { applied <- f.Error() }()
	var err error
	select {
	case err = <-applied:
	case <-ctx.Done():
		return Promotion{}, false, fmt.Errorf("failover: the entry was not applied in time (it may still be): %w", ctx.Err())
	}
	if err != nil {
		if errors.Is(err, raft.ErrNotLeader) {
			return Promotion{}, false, fmt.Errorf("%w: the leader is %q", ErrNotLeader, m.Leader())
		}
		return Promotion{}, false, err
	}
	switch r := f.Response().(type) {
	case Promotion:
		return r, false, nil
	case reportResult:
		return Promotion{}, r.Holds, nil
	case error:
		return Promotion{}, false, r
	default:
		return Promotion{}, false, fmt.Errorf("failover: unexpected response %T", r)
	}
}

// serveForwarded applies a follower's proposal if this member leads.
func (m *Member) serveForwarded(b []byte) []byte {
	var a answer
	if m.raft.State() != raft.Leader {
		a.NotLeader, a.Err = true, "not the leader"
	} else {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		p, holds, err := m.apply(ctx, b)
		cancel()
		a.Holds = holds
		switch {
		case errors.Is(err, ErrNotLeader):
			a.NotLeader, a.Err = true, err.Error()
		case errors.Is(err, ErrStale):
			a.Stale, a.Err = true, err.Error()
		case err != nil:
			a.Err = err.Error()
		case p.Term != 0:
			a.Promotion = &p
		}
	}
	out, _ := json.Marshal(a)
	return out
}

// Current is the last promotion of resource this member applied.
func (m *Member) Current(resource string) Promotion { return m.fsm.current(resource) }

// Leader is the name of the leader this member knows of, "" if none.
func (m *Member) Leader() string {
	_, id := m.raft.LeaderWithID()
	return string(id)
}

// IsLeader reports whether this member leads the group.
func (m *Member) IsLeader() bool { return m.raft.State() == raft.Leader }

// Close leaves the group (without removing this node from it) and closes
// the log.
func (m *Member) Close() error {
	err := m.raft.Shutdown().Error()
	return errors.Join(err, m.net.Close(), m.closeStores())
}

func (m *Member) closeStores() error {
	var errs []error
	for _, c := range m.close {
		errs = append(errs, c())
	}
	m.close = nil
	return errors.Join(errs...)
}
