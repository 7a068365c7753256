package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/georepl/georepl/cmd/georepl/internal/failover"
	"github.com/georepl/georepl/configs"
	"github.com/georepl/georepl/core"
	"github.com/hashicorp/go-hclog"
)

// Automatic failover on this node (docs/architecture.md, "Automatic
// failover"): every daemon of a resource with failover { mode = "auto" }
// runs a failover.Loop, a voter of the resource's consensus log on its
// failover address. The voters find each other from the configuration
// alone: every node's failover block and every witness block name a
// voter's address, and every daemon bootstraps the same group from them.

// consensusNetwork is the Network of this node's voter of rc at addr.
func (o Options) consensusNetwork(rc *configs.Resource, self, addr string, timeout time.Duration, log *slog.Logger) (failover.Network, error) {
	if o.Consensus != nil {
		return o.Consensus(rc.Name, self, addr)
	}
	return failover.ListenTCP(addr, timeout, slogWriter{log})
}

// voters lists the consensus group of rc: its data nodes, then its
// witnesses.
func voters(rc *configs.Resource) []failover.Node {
	var nodes []failover.Node
	for _, n := range rc.Nodes {
		nodes = append(nodes, failover.Node{Name: n.Name, Addr: n.Failover.Address,
			Priority: n.Failover.Priority, AutoPromote: n.Failover.AutoPromote})
	}
	for _, w := range rc.Failover.Witnesses {
		nodes = append(nodes, failover.Node{Name: w.Name, Addr: w.Address, Witness: true})
	}
	return nodes
}

// startLoop starts the failover loop of rc on node self (local nil: a
// witness).
func startLoop(d *Daemon, rc *configs.Resource, self, addr, dir string, local failover.Local, log *slog.Logger) (*failover.Loop, error) {
	timeout := rc.Failover.DetectionTimeout
	network, err := d.opts.consensusNetwork(rc, self, addr, timeout, log)
	if err != nil {
		return nil, fmt.Errorf("resource %s: failover on %s: %w", rc.Name, self, err)
	}
	l, err := failover.StartLoop(failover.LoopConfig{
		Resource: rc.Name, Self: self, Nodes: voters(rc),
		DetectionTimeout: timeout, PromoteConsistent: rc.Failover.PromoteConsistent,
		Network: network, Dir: dir, Local: local, Log: log,
		RaftLog: hclog.New(&hclog.LoggerOptions{Name: "raft", Level: hclog.Warn, Output: slogWriter{log}}),
	})
	if err != nil {
		network.Close()
		return nil, fmt.Errorf("resource %s: failover on %s: %w", rc.Name, self, err)
	}
	log.Info("failover: voter started", "address", addr, "dir", dir, "voters", len(voters(rc)), "detection_timeout", timeout)
	return l, nil
}

// slogWriter logs raft's lines.
type slogWriter struct{ log *slog.Logger }

func (w slogWriter) Write(p []byte) (int, error) {
	w.log.Warn("failover: raft", "msg", strings.TrimSpace(string(p)))
	return len(p), nil
}

// witness is this daemon's voter of a resource it holds no data of.
type witness struct {
	rc   *configs.Resource
	w    *configs.Witness
	loop *failover.Loop
}

// StartWitnesses starts a voter for every resource with automatic
// failover that names this node as a witness (the daemon does at start;
// UpAll too).
func (d *Daemon) StartWitnesses() error {
	for _, wt := range d.witnesses {
		if wt.loop != nil {
			continue
		}
		l, err := startLoop(d, wt.rc, wt.w.Name, wt.w.Address, wt.w.Dir, nil, d.log.With("resource", wt.rc.Name))
		if err != nil {
			return err
		}
		wt.loop = l
	}
	return nil
}

// foLocal is a resource as its failover loop sees it.
type foLocal struct{ r *resource }

func (f foLocal) State() (failover.Report, bool) {
	var rep failover.Report
	err := f.r.call(func() error {
		st := f.r.engine.Status()
		rep = failover.Report{Role: st.Role, Disk: st.Disk, Current: st.Current, Previous: st.History[0], Fenced: st.Fenced}
		return nil
	})
	return rep, err == nil
}

func (f foLocal) Lease(until time.Time, gen uint64) {
	_ = f.r.call(func() error {
		f.r.engine.Lease(uint64(until.UnixNano()), gen)
		return nil
	})
}

func (f foLocal) Witnesses(reachable int) {
	_ = f.r.call(func() error {
		f.r.engine.Witnesses(reachable)
		return nil
	})
}

// Act learns p's term, then promotes this node if p names it (after
// fence_peer, if configured, said the old Primary is fenced), or demotes
// it if the term fences it.
func (f foLocal) Act(p failover.Promotion, force bool) error {
	r := f.r
	var st core.Status
	if err := r.call(func() error {
		r.engine.ObserveTerm(p.Term)
		r.process()
		r.publishStatus()
		st = r.engine.Status()
		return r.failed
	}); err != nil {
		return err
	}
	switch {
	case p.Node == r.self.Name && st.Role != core.Primary && st.Term > p.Term:
		// A promotion of this node that the log has replaced: a
		// restarted node replays its own before the newer entries reach
		// it, and a peer may have told its engine the newer term
		// already. Acting on it would fence the Primary of the newer
		// term and make this node a Primary that the term does not
		// fence.
		r.log.Info("failover: not acting on a replaced promotion of this node", "term", p.Term, "seen", st.Term)
		return nil
	case p.Node == r.self.Name && st.Role != core.Primary:
		if err := r.fencePeer(p); err != nil {
			return err
		}
		r.log.Info("failover: promoting this node", "term", p.Term)
		err := r.promoteInTerm(force, p.Term)
		if errors.Is(err, errReplacedPromotion) {
			r.log.Info("failover: not acting on a replaced promotion of this node", "term", p.Term, "err", err)
			return nil
		}
		return err
	case p.Node != r.self.Name && st.Role == core.Primary && st.Fenced:
		r.log.Warn("failover: demoting this node: the log promoted another", "node", p.Node, "term", p.Term)
		return r.Secondary()
	}
	return nil
}

// fencePeer runs the fence_peer handler before this node is promoted in
// p's term, and waits for its verdict: exit status 0 lets the promotion
// go on.
func (r *resource) fencePeer(p failover.Promotion) error {
	h := r.handlers.Load()
	if len(h.FencePeer) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), handlerTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, h.FencePeer[0], h.FencePeer[1:]...)
	cmd.Env = handlerEnv(Event{What: "fence-peer", Resource: r.cfg.Name, Node: r.self.Name},
		"GEOREPL_TERM="+strconv.FormatUint(p.Term, 10))
	out, err := cmd.CombinedOutput()
	log := r.log.With("handler", "fence_peer", "command", h.FencePeer[0], "term", p.Term)
	if len(out) > 0 {
		log.Info("handler output", "output", string(out))
	}
	if err != nil {
		log.Error("fence_peer failed: this node stays Secondary", "err", err)
		return fmt.Errorf("fence_peer (%s) failed, so %s is not promoted on %s in term %d: %w", h.FencePeer[0], r.cfg.Name, r.self.Name, p.Term, err)
	}
	log.Info("fence_peer says the old Primary is fenced")
	return nil
}

// FailoverStatus is the failover part of status.
type FailoverStatus struct {
	Leader string `json:"leader"`
	// Holder is the node the log promoted last, in Term.
	Holder string `json:"holder,omitempty"`
	Term   uint64 `json:"term"`
	// ReportError says why this node's last report was not committed.
	ReportError string `json:"report_error,omitempty"`
	// Verdict is the leader's last decision (on the leader only).
	Verdict string `json:"verdict,omitempty"`
	// WritesHeld: this node is Primary and completes no write (no
	// lease, or fenced).
	WritesHeld bool `json:"writes_held,omitempty"`
}

func failoverStatus(l *failover.Loop) *FailoverStatus {
	if l == nil {
		return nil
	}
	s := l.Status()
	return &FailoverStatus{Leader: s.Leader, Holder: s.Holder.Node, Term: s.Holder.Term, ReportError: s.ReportErr, Verdict: s.Verdict}
}
