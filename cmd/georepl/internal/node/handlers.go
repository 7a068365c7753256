package node

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"time"

	"github.com/georepl/georepl/configs"
	"github.com/georepl/georepl/core"
)

// handlerTimeout bounds one run of a handler command; it is killed after.
const handlerTimeout = time.Minute

// splitBrainPolicy maps a connection's after_split_brain (and
// discard_node) to the engine's policy.
func splitBrainPolicy(rc *configs.Resource, n configs.Net) (core.SplitBrainPolicy, core.NodeID, error) {
	for sp := core.SplitBrainDisconnect; sp <= core.DiscardNode; sp++ {
		if sp.String() != n.AfterSplitBrain {
			continue
		}
		if sp != core.DiscardNode {
			return sp, 0, nil
		}
		victim, err := rc.Node(n.DiscardNode)
		if err != nil {
			return 0, 0, err
		}
		return sp, core.NodeID(victim.ID), nil
	}
	return 0, 0, fmt.Errorf("resource %s: after_split_brain = %q is not a policy this build knows", rc.Name, n.AfterSplitBrain)
}

// runHandlers starts the handler configured for ev, if any, on a
// goroutine of its own: the engine never waits for it. Its output and its
// failure are logged.
func (r *resource) runHandlers(ev Event) {
	if ev.What != "split-brain" || len(r.cfg.Handlers.SplitBrain) == 0 {
		return
	}
	argv := slices.Clone(r.cfg.Handlers.SplitBrain)
	env := append(os.Environ(),
		"GEOREPL_EVENT="+ev.What,
		"GEOREPL_RESOURCE="+ev.Resource,
		"GEOREPL_NODE="+ev.Node,
		"GEOREPL_PEER="+ev.Peer,
		"GEOREPL_OUTCOME="+ev.New,
		"GEOREPL_REASON="+ev.Detail,
	)
	log := r.log.With("handler", "split_brain", "command", argv[0], "peer", ev.Peer)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), handlerTimeout)
		defer cancel()
		cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		if len(out) > 0 {
			log.Info("handler output", "output", string(out))
		}
		if err != nil {
			log.Error("handler failed", "err", err)
			return
		}
		log.Info("handler done")
	}()
}
