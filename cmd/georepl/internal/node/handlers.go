package node

import (
	"context"
	"os"
	"os/exec"
	"slices"
	"strconv"
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
	h := r.handlers.Load()
	// on_promote and on_demote are not started by the role's event:
	// on_promote runs once the kernel device is attached (promoted), and
	// on_demote before it is detached (demoting), so that they may mount
	// and unmount it.
	if ev.What != "split-brain" || len(h.SplitBrain) == 0 {
		return
	}
	r.runHandler("split_brain", h.SplitBrain, ev,
		"GEOREPL_OUTCOME="+ev.New,
		"GEOREPL_REASON="+ev.Detail,
	)
}

// promoted starts the on_promote handler, if configured, once this node
// is Primary and its kernel device, if it has one, is attached: the
// handler may mount it.
func (r *resource) promoted() {
	h := r.handlers.Load()
	if len(h.OnPromote) == 0 {
		return
	}
	r.runHandler("on_promote", h.OnPromote, Event{Time: time.Now().UTC(), Resource: r.cfg.Name, Node: r.self.Name,
		What: "role", Old: core.Secondary.String(), New: core.Primary.String()})
}

// demoting runs the on_demote handler, if configured, on a Primary about
// to be demoted, before its kernel device is detached, and waits for it:
// it may stop the service and unmount the device, which the detach
// needs. Its failure is logged; the detach then says what still holds
// the device.
func (r *resource) demoting() {
	h := r.handlers.Load()
	if len(h.OnDemote) == 0 {
		return
	}
	r.handler("on_demote", h.OnDemote, Event{Time: time.Now().UTC(), Resource: r.cfg.Name, Node: r.self.Name,
		What: "role", Old: core.Primary.String(), New: core.Secondary.String()})()
}

// runRPOHandler starts the rpo_exceeded handler, if configured, with the
// figures of rpo in its environment.
func (r *resource) runRPOHandler(ev Event, rpo *RPO) {
	h := r.handlers.Load()
	if len(h.RPOExceeded) == 0 {
		return
	}
	r.runHandler("rpo_exceeded", h.RPOExceeded, ev,
		"GEOREPL_RPO_SECONDS="+strconv.FormatFloat(rpo.AgeSeconds, 'f', 3, 64),
		"GEOREPL_RPO_BYTES="+strconv.FormatUint(rpo.Bytes, 10),
		"GEOREPL_RPO_WARNING_SECONDS="+strconv.FormatFloat(rpo.WarningSeconds, 'f', 3, 64),
		"GEOREPL_REASON="+ev.Detail,
	)
}

// handlerEnv is a handler's environment: the daemon's, the event's names
// and extra.
func handlerEnv(ev Event, extra ...string) []string {
	env := append(os.Environ(),
		"GEOREPL_EVENT="+ev.What,
		"GEOREPL_RESOURCE="+ev.Resource,
		"GEOREPL_NODE="+ev.Node,
		"GEOREPL_PEER="+ev.Peer,
	)
	return append(env, extra...)
}

// runHandler runs argv on a goroutine of its own with the event's names
// and extra in its environment.
func (r *resource) runHandler(name string, argv []string, ev Event, extra ...string) {
	go r.handler(name, argv, ev, extra...)()
}

// handler is the run of argv with the event's names and extra in its
// environment, bounded by handlerTimeout, its output and failure logged.
func (r *resource) handler(name string, argv []string, ev Event, extra ...string) func() {
	argv = slices.Clone(argv)
	env := handlerEnv(ev, extra...)
	log := r.log.With("handler", name, "command", argv[0], "peer", ev.Peer)
	return func() {
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
	}
}
