package failover

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/georepl/georepl/core"
	"github.com/hashicorp/go-hclog"
)

// Node is one voter of a resource's consensus group, as the
// configuration gives it.
type Node struct {
	Name        string
	Addr        string
	Priority    int
	AutoPromote bool
	// Witness: a voter without data, never promoted.
	Witness bool
}

// Local is this node's copy of the resource, as the loop sees and acts on
// it (the driver's resource); nil on a witness.
type Local interface {
	// State is the copy's state now; ok is false while the resource is
	// down (nothing is reported then).
	State() (r Report, ok bool)
	// Act applies a committed promotion on this node: the engine learns
	// its term (ObserveTerm); the node p names is promoted, a Primary the
	// term fences is demoted. force is set when an operator asked for
	// this promotion by force on this node (PromoteHere).
	Act(p Promotion, force bool) error
	// Lease says that the log holds this node's report naming generation
	// gen, sent when no other node could have been promoted for long
	// enough: as Primary it may complete writes in gen until until
	// (core.Engine.Lease).
	Lease(until time.Time, gen uint64)
	// Witnesses says how many of the resource's witnesses are reachable
	// from this node: the log committed a report of theirs that this
	// member applied less than a lease ago (core.Engine.Witnesses). Only
	// the side of a partition that holds a majority of voters commits, so
	// a witness counts for that side.
	Witnesses(reachable int)
}

// LoopConfig configures a Loop.
type LoopConfig struct {
	Resource string
	// Self is this node's name, one of Nodes.
	Self  string
	Nodes []Node
	// DetectionTimeout is how long the Primary may go without a report
	// committed in the log before another node is promoted.
	DetectionTimeout  time.Duration
	PromoteConsistent bool
	Network           Network
	// Dir holds the log ("" keeps it in memory: tests).
	Dir   string
	Local Local
	Log   *slog.Logger
	// RaftLog receives raft's own log; nil discards it.
	RaftLog hclog.Logger
}

// The loop's timing, as fractions of the detection timeout D. A Primary's
// lease ends leaseShare*D after it sent the report the log committed;
// another node is promoted only after the leader has applied no report of
// the Primary for D, and the leader applies a report after it was sent:
// so the lease ends (1-leaseShare)*D before any promotion, a margin for
// timers that fire late and clocks that run at slightly different rates.
// Reports go every D/reportsPerD, so that a Primary renews its lease
// several times before it ends. raft's own timeouts are D/raftShare: a
// lost leader is replaced well within D, and the new one times reports by
// its own application of them, so it decides as soon as one is D old.
const (
	leaseShare  = 0.5
	reportsPerD = 5
	raftShare   = 4
)

// Loop runs automatic failover for one resource on one node: it keeps
// this node's member of the consensus group, reports the node's state
// into the log, decides and proposes promotions while it leads, and acts
// on every committed promotion.
type Loop struct {
	cfg    LoopConfig
	m      *Member
	log    *slog.Logger
	nodes  map[string]Node
	nudge  chan struct{}
	stop   chan struct{}
	done   sync.WaitGroup
	report time.Duration
	lease  time.Duration
	// started is when the loop started: the time of the reports it has
	// not applied.
	started time.Time
	// startIndex is the last index of this member's log when it started;
	// caughtUp is set once it applied a report of its own committed after
	// that: then it applied every entry committed before, and a
	// promotion of this node it replayed from its own log (which may
	// have been replaced while it was down) is no longer acted on as if
	// it were the last.
	startIndex uint64
	caughtUp   atomic.Bool

	mu sync.Mutex
	// queue holds the committed promotions not acted on yet, in log order.
	queue  []Promotion
	wake   chan struct{}
	acted  uint64 // the highest term acted on
	actErr map[uint64]error
	// force: the operator asked for a promotion by force of this node
	// after this term (PromoteHere); acted on when it commits.
	force  uint64
	forced bool
	acting *sync.Cond
	// status for `georepl status`
	lastReport  Report
	reportErr   string
	lastVerdict string
}

// StartLoop starts this node's member of the resource's group and the
// loop around it.
func StartLoop(cfg LoopConfig) (*Loop, error) {
	if cfg.DetectionTimeout <= 0 {
		return nil, fmt.Errorf("failover: resource %s: detection timeout %s", cfg.Resource, cfg.DetectionTimeout)
	}
	l := &Loop{cfg: cfg, log: cfg.Log, nodes: map[string]Node{},
		nudge: make(chan struct{}, 1), stop: make(chan struct{}), wake: make(chan struct{}, 1),
		actErr: map[uint64]error{}, started: time.Now(),
		report: cfg.DetectionTimeout / reportsPerD,
		lease:  time.Duration(float64(cfg.DetectionTimeout) * leaseShare)}
	l.acting = sync.NewCond(&l.mu)
	if l.log == nil {
		l.log = slog.New(slog.DiscardHandler)
	}
	l.log = l.log.With("resource", cfg.Resource, "failover", cfg.Self)
	var voters []Voter
	for _, n := range cfg.Nodes {
		l.nodes[n.Name] = n
		voters = append(voters, Voter{ID: n.Name, Addr: n.Addr})
	}
	if _, ok := l.nodes[cfg.Self]; !ok {
		return nil, fmt.Errorf("failover: resource %s: node %s is not a voter", cfg.Resource, cfg.Self)
	}
	m, err := Start(Config{ID: cfg.Self, Voters: voters, Network: cfg.Network, Dir: cfg.Dir,
		DetectionTimeout: cfg.DetectionTimeout / raftShare, Logger: cfg.RaftLog,
		OnPromotion: func(p Promotion) {
			if p.Resource != cfg.Resource {
				return
			}
			l.mu.Lock()
			l.queue = append(l.queue, p)
			l.mu.Unlock()
			select {
			case l.wake <- struct{}{}:
			default:
			}
		}})
	if err != nil {
		return nil, err
	}
	l.m = m
	l.startIndex = m.raft.LastIndex()
	l.done.Add(3)
	go l.reporter()
	go l.decider()
	go l.actor()
	return l, nil
}

// Close stops the loop and leaves the group.
func (l *Loop) Close() error {
	close(l.stop)
	l.mu.Lock()
	l.acting.Broadcast()
	l.mu.Unlock()
	l.done.Wait()
	return l.m.Close()
}

// Nudge makes the loop report at once (the node's role, disk or
// generation changed).
func (l *Loop) Nudge() {
	select {
	case l.nudge <- struct{}{}:
	default:
	}
}

// reporter commits this node's state into the log every report interval
// and when nudged, and gives a Primary its lease.
func (l *Loop) reporter() {
	defer l.done.Done()
	t := time.NewTicker(l.report)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
		case <-l.nudge:
		}
		r := Report{Role: core.Secondary, Disk: core.Diskless}
		if l.cfg.Local != nil {
			var ok bool
			if r, ok = l.cfg.Local.State(); !ok {
				continue
			}
		}
		sent := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), l.lease)
		holds, err := l.m.Report(ctx, l.cfg.Resource, l.cfg.Self, r)
		cancel()
		// The report of a Primary the log no longer names (it was
		// promoted another while cut off) is no lease.
		if err == nil && holds && r.Role == core.Primary && l.cfg.Local != nil {
			l.cfg.Local.Lease(sent.Add(l.lease), r.Current)
		}
		l.noteReport(r, err)
		if err == nil && !l.caughtUp.Load() {
			if own, ok := l.m.fsm.reportsOf(l.cfg.Resource)[l.cfg.Self]; ok && own.Index > l.startIndex {
				l.caughtUp.Store(true)
				l.enqueue(l.m.Current(l.cfg.Resource)) // acted on now if it names this node
			}
		}
		if l.cfg.Local != nil {
			l.cfg.Local.Witnesses(l.witnessesReachable(time.Now()))
		}
		if r.Fenced {
			l.enqueue(l.m.Current(l.cfg.Resource)) // demote
		}
	}
}

// witnessesReachable counts the witnesses whose last report this member
// applied less than a lease before now.
func (l *Loop) witnessesReachable(now time.Time) int {
	reports := l.m.fsm.reportsOf(l.cfg.Resource)
	n := 0
	for _, node := range l.cfg.Nodes {
		if r, ok := reports[node.Name]; ok && node.Witness && now.Sub(r.at) < l.lease {
			n++
		}
	}
	return n
}

// noteReport logs a report that differs from the last one, or whose
// outcome does.
func (l *Loop) noteReport(r Report, err error) {
	why := ""
	if err != nil {
		why = err.Error()
	}
	l.mu.Lock()
	changed := r != l.lastReport || why != l.reportErr
	l.lastReport, l.reportErr = r, why
	l.mu.Unlock()
	if !changed {
		return
	}
	if err != nil {
		l.log.Warn("failover report not committed: no majority of voters reached", "role", r.Role, "disk", r.Disk, "current", fmt.Sprintf("%x", r.Current), "leader", l.m.Leader(), "err", err)
		return
	}
	l.log.Info("failover report", "role", r.Role, "disk", r.Disk, "current", fmt.Sprintf("%x", r.Current), "fenced", r.Fenced, "leader", l.m.Leader())
}

func (l *Loop) enqueue(p Promotion) {
	if p.Term == 0 {
		return
	}
	l.mu.Lock()
	l.queue = append(l.queue, p)
	l.mu.Unlock()
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

// decider runs Decide while this member leads, and proposes what it
// decides.
func (l *Loop) decider() {
	defer l.done.Done()
	t := time.NewTicker(l.report)
	defer t.Stop()
	caughtUp := false // this leadership applied every entry before it
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
		}
		if !l.m.IsLeader() {
			caughtUp = false
			continue
		}
		// A new leader holds every committed report but may not have
		// applied the last ones yet: a Primary alive a moment ago would
		// look silent. It decides once it applied them all.
		if !caughtUp {
			if err := l.m.raft.Barrier(l.cfg.DetectionTimeout).Error(); err != nil {
				continue
			}
			caughtUp = true
		}
		s, holderReport := l.situation(time.Now())
		d := Decide(s)
		l.mu.Lock()
		changed := d.Reason != l.lastVerdict
		l.lastVerdict = d.Reason
		l.mu.Unlock()
		if changed {
			l.log.Info("failover decision", "promote", d.Node, "reason", d.Reason)
		}
		if d.Node == "" {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), l.cfg.DetectionTimeout)
		p, err := l.m.replace(ctx, l.cfg.Resource, d.Node, d.After, holderReport)
		cancel()
		if err != nil {
			l.log.Warn("failover promotion not committed", "node", d.Node, "after", d.After, "err", err)
			continue
		}
		l.log.Info("failover promotion committed", "node", p.Node, "term", p.Term, "index", p.Index)
	}
}

// situation is what Decide looks at, from the log as this member applied
// it. A report counts as fresh for a detection timeout after this member
// applied it, which is after it was sent: so a node looks silent only
// when it sent nothing committed for at least that long. A node of which
// this member applied no report (reports are not in snapshots) counts as
// having reported when the loop started. It also returns the log index
// of the holder's last report: the promotion is committed only if the
// holder has not reported since (its lease then ends before). The lost Primary's generation is the last one it reported, in
// whatever role: a leased Primary completes writes only in a generation
// the log holds from its report, so a node UpToDate in that generation
// has every write it acknowledged (under protocol C).
func (l *Loop) situation(now time.Time) (Situation, uint64) {
	reports := l.m.fsm.reportsOf(l.cfg.Resource)
	s := Situation{Holder: l.m.Current(l.cfg.Resource), PromoteConsistent: l.cfg.PromoteConsistent}
	var holderReport uint64
	if r, ok := reports[s.Holder.Node]; ok {
		s.HolderGen, holderReport = r.Current, r.Index
	}
	for _, n := range l.cfg.Nodes {
		c := Candidate{Node: n.Name, Witness: n.Witness, AutoPromote: n.AutoPromote, Priority: n.Priority,
			Role: core.RoleUnknown, Disk: core.DUnknown}
		if r, ok := reports[n.Name]; ok {
			c.Fresh = now.Sub(r.at) < l.cfg.DetectionTimeout
			c.Role, c.Disk, c.Current, c.Previous = r.Role, r.Disk, r.Current, r.Previous
		} else {
			c.Fresh = now.Sub(l.started) < l.cfg.DetectionTimeout
		}
		s.Candidates = append(s.Candidates, c)
	}
	return s, holderReport
}

// actor acts on committed promotions, in log order.
func (l *Loop) actor() {
	defer l.done.Done()
	for {
		select {
		case <-l.stop:
			return
		case <-l.wake:
		}
		l.mu.Lock()
		batch := l.queue
		l.queue = nil
		l.mu.Unlock()
		if len(batch) == 0 {
			continue
		}
		// Only the last promotion is acted on: the older ones were
		// replaced (a restarted member replays the whole log), and their
		// terms are below its.
		p := batch[len(batch)-1]
		if cur := l.m.Current(l.cfg.Resource); cur.Term > p.Term {
			p = cur
		}
		if p.Node == l.cfg.Self && !l.caughtUp.Load() {
			// Possibly replayed from this member's own log and replaced
			// since: acted on once this member caught up (reporter).
			l.log.Info("failover: a promotion of this node waits until this member has caught up with the log", "term", p.Term)
			continue
		}
		l.mu.Lock()
		force := l.forced && p.Node == l.cfg.Self && p.Term == l.force+1
		l.mu.Unlock()
		var err error
		if l.cfg.Local != nil {
			err = l.cfg.Local.Act(p, force)
		}
		if err != nil {
			l.log.Error("acting on a committed promotion failed", "node", p.Node, "term", p.Term, "err", err)
		}
		l.mu.Lock()
		for _, q := range batch {
			if q.Term < p.Term {
				l.actErr[q.Term] = fmt.Errorf("failover: term %d was replaced by term %d (%s) before this node acted on it", q.Term, p.Term, p.Node)
			}
		}
		l.acted = max(l.acted, p.Term)
		l.actErr[p.Term] = err
		l.acting.Broadcast()
		l.mu.Unlock()
		l.Nudge()
	}
}

// PromoteHere proposes this node as the resource's Primary (the
// operator's `georepl primary`), replacing the log's current term, and
// waits until this node acted on the committed promotion. force is
// passed to the promotion when it commits.
func (l *Loop) PromoteHere(ctx context.Context, force bool) error {
	if l.cfg.Local == nil {
		return fmt.Errorf("failover: %s is a witness of %s and holds no data", l.cfg.Self, l.cfg.Resource)
	}
	for {
		after := l.m.Current(l.cfg.Resource).Term
		l.mu.Lock()
		l.force, l.forced = after, force
		l.mu.Unlock()
		p, err := l.m.Promote(ctx, l.cfg.Resource, l.cfg.Self, after)
		switch {
		case err == nil:
			return l.waitActed(ctx, p.Term)
		case errors.Is(err, ErrStale):
			continue // the log moved meanwhile: on the new term
		case ctx.Err() != nil:
			return fmt.Errorf("failover: %s on %s: %w", l.cfg.Resource, l.cfg.Self, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("failover: %s on %s: %w", l.cfg.Resource, l.cfg.Self, err)
		case <-time.After(l.report):
		}
	}
}

func (l *Loop) waitActed(ctx context.Context, term uint64) error {
	stop := context.AfterFunc(ctx, func() {
		l.mu.Lock()
		l.acting.Broadcast()
		l.mu.Unlock()
	})
	defer stop()
	l.mu.Lock()
	defer l.mu.Unlock()
	for l.acted < term {
		if ctx.Err() != nil {
			return fmt.Errorf("failover: promotion of %s in term %d committed, not acted on yet: %w", l.cfg.Self, term, ctx.Err())
		}
		select {
		case <-l.stop:
			return errors.New("failover: stopped")
		default:
		}
		l.acting.Wait()
	}
	return l.actErr[term]
}

// Status is the loop's view, for `georepl status`.
type Status struct {
	Leader   string
	IsLeader bool
	Holder   Promotion
	// Reported is this node's last report and why it was not committed
	// ("" if it was).
	Reported  Report
	ReportErr string
	// Verdict is the leader's last decision's reason (leader only).
	Verdict string
}

// Status is a snapshot of the loop.
func (l *Loop) Status() Status {
	l.mu.Lock()
	defer l.mu.Unlock()
	return Status{Leader: l.m.Leader(), IsLeader: l.m.IsLeader(), Holder: l.m.Current(l.cfg.Resource),
		Reported: l.lastReport, ReportErr: l.reportErr, Verdict: l.lastVerdict}
}
