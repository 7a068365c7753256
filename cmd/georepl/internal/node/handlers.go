package node

import (
	"context"
	"os"
	"os/exec"
	"slices"
	"time"

	"github.com/georepl/georepl/configs"
	"github.com/georepl/georepl/core"
)

// handlerTimeout bounds one run of a handler command; it is killed after.
const handlerTimeout = time.Minute

// discardNode is the id of the node a connection's discard_node names,
// the victim of the engine's DiscardNode policy; 0 under other policies.
func discardNode(rc *configs.Resource, n configs.Net) (core.NodeID, error) {
	if n.AfterSplitBrain != core.DiscardNode {
		return 0, nil
	}
	victim, err := rc.Node(n.DiscardNode)
	if err != nil {
		return 0, err
	}
	return core.NodeID(victim.ID), nil
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
