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
	// Transport carries the consensus traffic (raft.NewTCPTransport in the
	// daemon, raft.NewInmemTransport in tests).
	Transport raft.Transport
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
	close []func() error
}

// Start opens (or creates) this node's log and joins the group.
func Start(cfg Config) (*Member, error) {
	if cfg.ID == "" || cfg.Transport == nil {
		return nil, errors.New("failover: Config needs ID and Transport")
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
	m := &Member{fsm: newFSM(cfg.OnPromotion)}
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
		err = raft.BootstrapCluster(rc, logs, stable, snaps, cfg.Transport, raft.Configuration{Servers: servers})
	}
	if err == nil {
		m.raft, err = raft.NewRaft(rc, m.fsm, logs, stable, snaps, cfg.Transport)
	}
	if err != nil {
		m.closeStores()
		return nil, fmt.Errorf("failover: starting node %s: %w", cfg.ID, err)
	}
	return m, nil
}

// ErrNotLeader: only the leader proposes; Leader says who it is.
var ErrNotLeader = errors.New("failover: not the consensus leader")

// Promote proposes that node becomes Primary of resource, replacing term
// after (the term this member's decision was based on), and waits until
// the entry is applied here. It returns the committed promotion, ErrStale
// if the log moved past after, ErrNotLeader on a follower, or raft's
// error when the leader lost its majority meanwhile (the outcome is then
// unknown: act on OnPromotion, not on this error).
func (m *Member) Promote(ctx context.Context, resource, node string, after uint64) (Promotion, error) {
	b, err := json.Marshal(command{Op: opPromote, Resource: resource, Node: node, After: after})
	if err != nil {
		return Promotion{}, err
	}
	timeout := time.Duration(0)
	if d, ok := ctx.Deadline(); ok {
		timeout = max(time.Until(d), time.Millisecond)
	}
	f := m.raft.Apply(b, timeout)
	if err := f.Error(); err != nil {
		if errors.Is(err, raft.ErrNotLeader) {
			return Promotion{}, fmt.Errorf("%w: the leader is %q", ErrNotLeader, m.Leader())
		}
		return Promotion{}, fmt.Errorf("failover: promoting %s on %s: %w", resource, node, err)
	}
	switch r := f.Response().(type) {
	case Promotion:
		return r, nil
	case error:
		return Promotion{}, r
	default:
		return Promotion{}, fmt.Errorf("failover: unexpected response %T", r)
	}
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
	return errors.Join(err, m.closeStores())
}

func (m *Member) closeStores() error {
	var errs []error
	for _, c := range m.close {
		errs = append(errs, c())
	}
	m.close = nil
	return errors.Join(errs...)
}
