package node

import (
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"

	"github.com/georepl/georepl/configs"
	"github.com/georepl/georepl/core"
	"github.com/georepl/georepl/transports/nodetls"
)

// How Adjust takes a changed setting of a resource that is up.
type liveness int

const (
	// refused: the resource must go down on this node first.
	refused liveness = iota
	// live: in effect once Adjust returns.
	live
	// nextConnection: in effect from the peer's next connection; the
	// current one, if any, keeps the old value.
	nextConnection
	// unlessConnected: live while the peer is not connected, refused
	// while it is (the protocol: see core.Engine.Reconfigure).
	unlessConnected
)

// setting is how Adjust treats one configuration field: its name in the
// HCL and whether it changes while the resource is up. A field of a
// configuration struct that no table names is refused while up, so that a
// field added later is never silently ignored.
type setting struct {
	hcl string
	how liveness
}

// netSettings are the fields of configs.Net.
var netSettings = map[string]setting{
	"Transport":         {"net.transport", refused},
	"Compression":       {"net.compression", nextConnection},
	"SharedSecret":      {"net.shared_secret", nextConnection},
	"TLS":               {"net.tls", refused},
	"Insecure":          {"net.insecure", live},
	"MaxBuffer":         {"net.max_buffer", live},
	"OnCongestion":      {"net.on_congestion", live},
	"Csums":             {"net.csums", live},
	"ResyncRate":        {"net.resync_rate", live},
	"ResyncMinAppShare": {"net.resync_min_app_share", live},
	"PingInterval":      {"net.ping_interval", nextConnection},
	"Timeout":           {"net.timeout", nextConnection},
	"ConnectRetry":      {"net.connect_retry", live},
	"AfterSplitBrain":   {"net.after_split_brain", live},
	"DiscardNode":       {"net.discard_node", live},
	"RPOWarning":        {"net.rpo_warning", live},
}

// diskSettings are the fields of configs.Disk: the disk is attached.
var diskSettings = map[string]setting{
	"BlockSize":        {"disk.block_size", refused},
	"LogicalBlockSize": {"disk.logical_block_size", refused},
	"Flushes":          {"disk.flushes", refused},
	"ALExtents":        {"disk.al_extents", refused},
	"OnIOError":        {"disk.on_io_error", refused},
	"ResyncUndoSize":   {"disk.resync_undo_size", refused},
}

// resourceSettings are the fields of configs.Resource other than those
// compared elsewhere (Protocol and Net reach the peers through their
// links, Disk, Nodes and Connections have their own tables).
var resourceSettings = map[string]setting{
	"Quorum":     {"quorum", refused},
	"OnNoQuorum": {"on_no_quorum", refused},
	"Handlers":   {"handlers", live},
	// The failover loop starts at up with the voters and timeouts of the
	// configuration then, and its log holds them.
	"Failover": {"failover", refused},
}

// selfSettings are the fields of this node's own node block.
var selfSettings = map[string]setting{
	"ID":             {"id", refused},
	"Address":        {"address", refused},
	"Disk":           {"disk", refused},
	"MetaDisk":       {"meta_disk", refused},
	"ResyncUndo":     {"resync_undo", refused},
	"Export":         {"export", refused},
	"Device":         {"device", refused},
	"UblkQueues":     {"ublk_queues", refused},
	"UblkQueueDepth": {"ublk_queue_depth", refused},
	"ExportInsecure": {"export_insecure", refused},
	// The files are read again by every Adjust (see Daemon.Adjust).
	"TLS":       {"tls", live},
	"ExportTLS": {"export_tls", live},
	// What this node's peers require of it: nothing to do here.
	"PeerFingerprint": {"peer_fingerprint", live},
	"Failover":        {"failover", refused},
}

// peerNodeSettings are the fields of a peer's node block that matter to
// this node; the others (its disk, export, ...) are the peer's business.
var peerNodeSettings = map[string]setting{
	"ID":              {"id", refused},
	"Address":         {"address", refused},
	"PeerFingerprint": {"peer_fingerprint", live},
	// Its consensus address, priority and auto_promote: this node's
	// failover loop knows the voters from up.
	"Failover": {"failover", refused},
}

// change is one difference Adjust found.
type change struct {
	what     string // "peer dr: net.max_buffer"
	peer     string // the peer whose connection it is about, or ""
	old, new string
	at       string // file:line of the block that sets it now
	how      liveness
}

func (c change) String() string {
	return fmt.Sprintf("%s: %s -> %s (%s)", c.what, c.old, c.new, c.at)
}

// Adjust applies cfg, the configuration files read again, to the resource
// called name, or to every resource of this node when name is "" or
// "all", and returns one line per change.
//
// A resource that is down on this node is replaced by one built from cfg:
// every change applies at its next up. On a resource that is up, the
// settings that may change while it runs are applied at once or from the
// peer's next connection (the line says which); any other change is
// refused, and then nothing at all is applied: the error names each field,
// where the configuration sets it and what to do. With "all", a resource
// new in cfg is added (down), and one gone from it is removed if down.
// This node's TLS files are read again in every case (certificate
// rotation: established connections keep theirs).
//
// With dryRun nothing is applied; the lines say what would be.
func (d *Daemon) Adjust(cfg *configs.Config, name string, dryRun bool) ([]string, error) {
	d.adjustMu.Lock()
	defer d.adjustMu.Unlock()
	d.idMu.RLock()
	old := d.cfg
	d.idMu.RUnlock()

	all := name == "" || name == "all"
	targets := []string{name}
	if all {
		targets = d.resourceNames()
	}
	var plans []*adjustPlan
	var refusals []string
	for _, n := range targets {
		r, err := d.resource(n)
		if err != nil {
			return nil, err
		}
		p, err := r.planAdjust(cfg)
		if err != nil {
			return nil, err
		}
		plans = append(plans, p)
		refusals = append(refusals, p.refused...)
	}
	if all {
		if cfg.MetricsAddress != old.MetricsAddress {
			refusals = append(refusals, fmt.Sprintf("metrics_address: %q -> %q: the daemon binds it at start: restart the daemon", old.MetricsAddress, cfg.MetricsAddress))
		}
		for _, rc := range cfg.Resources {
			if d.lookup(rc.Name) != nil {
				continue
			}
			if self, err := rc.Node(d.nodeName); err == nil {
				plans = append(plans, d.planAdd(rc, self))
			}
		}
	}
	ids, err := loadIdentities(cfg, d.nodeName)
	if err != nil {
		refusals = append(refusals, err.Error())
	}
	exportIDs, err := loadExportIdentities(cfg, d.nodeName)
	if err != nil {
		refusals = append(refusals, err.Error())
	}
	if len(refusals) > 0 {
		return nil, fmt.Errorf("adjust on %s: nothing applied, because:\n  %s", d.nodeName, strings.Join(refusals, "\n  "))
	}
	var lines []string
	for _, p := range plans {
		lines = append(lines, p.lines...)
	}
	if dryRun {
		for i, l := range lines {
			lines[i] = "dry run, not applied: " + l
		}
		return lines, nil
	}
	var errs []error
	for _, p := range plans {
		if p.apply == nil {
			continue
		}
		if err := p.apply(); err != nil {
			errs = append(errs, err)
			continue
		}
		for _, line := range p.lines {
			d.log.Info("adjusted", "resource", p.resource, "change", line)
			d.events.publish(Event{Time: time.Now().UTC(), Resource: p.resource, Node: d.nodeName, What: "adjusted", Detail: line})
		}
	}
	// This node's TLS identities: the targets' from cfg, the others'
	// as they were.
	d.idMu.Lock()
	newIDs, newExportIDs := map[string]*nodetls.Identity{}, map[string]*nodetls.ExportIdentity{}
	for n, id := range d.identities {
		newIDs[n] = id
	}
	for n, id := range d.exportIDs {
		newExportIDs[n] = id
	}
	for _, n := range targets {
		delete(newIDs, n)
		delete(newExportIDs, n)
		if id, ok := ids[n]; ok {
			newIDs[n] = id
		}
		if id, ok := exportIDs[n]; ok {
			newExportIDs[n] = id
		}
	}
	if all {
		newIDs, newExportIDs = ids, exportIDs
		d.cfg = cfg
	}
	d.identities, d.exportIDs = newIDs, newExportIDs
	d.idMu.Unlock()
	d.noteBufferBudget()
	for _, n := range targets {
		if id, ok := ids[n]; ok {
			lines = append(lines, fmt.Sprintf("%s: TLS files read again (certificate valid until %s)", n, id.Leaf.NotAfter.UTC().Format(time.RFC3339)))
			d.warnExpiry(n, "this node's TLS certificate", id.Leaf)
		}
		if id, ok := exportIDs[n]; ok {
			lines = append(lines, fmt.Sprintf("%s: export TLS files read again (certificate valid until %s)", n, id.Leaf.NotAfter.UTC().Format(time.RFC3339)))
			d.warnExpiry(n, "the export's TLS certificate", id.Leaf)
		}
	}
	return lines, errors.Join(errs...)
}

// AdjustFromFiles reads the configuration files again (Options.ReadConfig)
// and adjusts the resource called name, or every resource, to them
// (Adjust). A configuration that does not load changes nothing.
func (d *Daemon) AdjustFromFiles(name string, dryRun bool) ([]string, error) {
	if d.opts.ReadConfig == nil {
		return nil, fmt.Errorf("node %s has no configuration files to read again", d.nodeName)
	}
	cfg, err := d.opts.ReadConfig()
	if err != nil {
		return nil, fmt.Errorf("reading the configuration again: %w (nothing changed)", err)
	}
	return d.Adjust(cfg, name, dryRun)
}

// adjustPlan is what Adjust does to one resource.
type adjustPlan struct {
	resource string
	lines    []string
	refused  []string
	apply    func() error // nil: nothing to do
}

// planAdd adds a resource new in the configuration, down.
func (d *Daemon) planAdd(rc *configs.Resource, self *configs.Node) *adjustPlan {
	p := &adjustPlan{resource: rc.Name}
	p.lines = []string{fmt.Sprintf("%s: new resource (%s), added down: `georepl up %s` brings it up", rc.Name, at(rc.DeclRange), rc.Name)}
	p.apply = func() error {
		r, err := newResource(d, rc, self)
		if err != nil {
			return err
		}
		d.resMu.Lock()
		d.resources[rc.Name] = r
		d.resMu.Unlock()
		return nil
	}
	return p
}

// planAdjust compares r's configuration with its version in cfg.
func (r *resource) planAdjust(cfg *configs.Config) (*adjustPlan, error) {
	name := r.cfg.Name
	p := &adjustPlan{resource: name}
	rc, err := cfg.Resource(name)
	var self *configs.Node
	if err == nil {
		self, err = rc.Node(r.self.Name)
	}
	if err != nil {
		if r.isUp() {
			p.refused = append(p.refused, fmt.Sprintf("%s: %v: take it down on %s first (`georepl down %s`)", name, err, r.self.Name, name))
			return p, nil
		}
		p.lines = []string{fmt.Sprintf("%s: no longer in the configuration for %s: removed", name, r.self.Name)}
		p.apply = func() error {
			r.d.resMu.Lock()
			delete(r.d.resources, name)
			r.d.resMu.Unlock()
			return nil
		}
		return p, nil
	}
	changes := diffResource(r.applied, rc, r.self.Name)
	if len(changes) == 0 {
		return p, nil
	}
	if !r.isUp() {
		for _, c := range changes {
			p.lines = append(p.lines, fmt.Sprintf("%s: %v: applies at the next up (the resource is down)", name, c))
		}
		p.apply = func() error { return r.replaceDown(rc, self) }
		return p, nil
	}

	newSettings := map[core.NodeID]*peerSettings{}
	var engine []core.PeerConfig
	protocolChanged := map[core.NodeID]bool{}
	for _, pe := range sortedPeers(r.peers) {
		node := rc.NodeByID(int(pe.id))
		if node == nil || node.Name != pe.node.Name {
			continue // refused by diffResource
		}
		lk, err := rc.Link(r.self.Name, node.Name)
		if err != nil {
			return nil, err
		}
		cur := pe.settings.Load()
		if reflect.DeepEqual(cur.link, lk) && reflect.DeepEqual(cur.node, node) {
			continue
		}
		newSettings[pe.id] = &peerSettings{link: lk, node: node}
		pc, err := peerConfig(rc, pe, &lk)
		if err != nil {
			return nil, err
		}
		engine = append(engine, pc)
		protocolChanged[pe.id] = lk.Protocol != cur.link.Protocol
	}
	// Which peers are connected now, for the protocol and the settings
	// that wait for the next connection.
	connected := map[string]bool{}
	if err := r.call(func() error {
		for _, ps := range r.engine.Status().Peers {
			connected[ps.Name] = ps.Conn == core.Connected
		}
		return nil
	}); err != nil {
		return nil, err
	}
	down := fmt.Sprintf("take %s down on %s (`georepl down %s`, after `georepl secondary %s` if it is Primary), run `georepl adjust %s` there, and bring it up again", name, r.self.Name, name, name, name)
	for _, c := range changes {
		peer := c.peer
		switch {
		case c.how == refused:
			p.refused = append(p.refused, fmt.Sprintf("%s: %v: cannot change while the resource is up: %s", name, c, down))
		case c.how == unlessConnected && connected[peer]:
			p.refused = append(p.refused, fmt.Sprintf("%s: %v: cannot change while %s is connected, as writes in flight were sent under the old protocol: `georepl disconnect %s %s`, run `georepl adjust %s`, then `georepl connect %s %s`", name, c, peer, name, peer, name, name, peer))
		case c.how == nextConnection && connected[peer]:
			p.lines = append(p.lines, fmt.Sprintf("%s: %v: from the next connection (connected now: `georepl disconnect %s %s` and `georepl connect %s %s` apply it at once)", name, c, name, peer, name, peer))
		case c.how == unlessConnected, c.how == nextConnection:
			p.lines = append(p.lines, fmt.Sprintf("%s: %v: applied (from the next connection)", name, c))
		default:
			p.lines = append(p.lines, fmt.Sprintf("%s: %v: applied", name, c))
		}
	}
	p.apply = func() error {
		return r.call(func() error {
			// A peer may have connected since the plan: check every
			// protocol change before changing anything.
			for _, ps := range r.engine.Status().Peers {
				if protocolChanged[ps.ID] && ps.Conn == core.Connected {
					return fmt.Errorf("%s: node %s connected meanwhile: its protocol cannot change now; nothing applied, run adjust again", name, ps.Name)
				}
			}
			for _, pc := range engine {
				if err := r.engine.Reconfigure(pc); err != nil {
					return fmt.Errorf("%s: %w", name, err)
				}
			}
			for id, s := range newSettings {
				r.peers[id].settings.Store(s)
			}
			r.handlers.Store(&rc.Handlers)
			r.applied = rc
			r.publishStatus()
			return nil
		})
	}
	return p, nil
}

// replaceDown puts a resource built from rc in r's place, r being down:
// everything the configuration says applies at its next up. What the
// administrator set on r (a peer disconnected, a roll-back asked for)
// carries over.
func (r *resource) replaceDown(rc *configs.Resource, self *configs.Node) error {
	if r.isUp() {
		return fmt.Errorf("resource %s came up meanwhile on %s: run adjust again", r.cfg.Name, r.self.Name)
	}
	nr, err := newResource(r.d, rc, self)
	if err != nil {
		return err
	}
	nr.rollBack = r.rollBack
	r.mu.Lock()
	for id, p := range r.peers {
		if np, ok := nr.peers[id]; ok && np.node.Name == p.node.Name {
			np.wanted = p.wanted
		}
	}
	r.mu.Unlock()
	r.d.resMu.Lock()
	r.d.resources[rc.Name] = nr
	r.d.resMu.Unlock()
	return nil
}

// diffResource lists what differs between old and new, two versions of a
// resource, for node self.
func diffResource(old, new *configs.Resource, self string) []change {
	var out []change
	resAt := at(new.DeclRange)
	add := func(what string, a, b any, where string, how liveness) {
		out = append(out, change{what: what, old: show(what, a), new: show(what, b), at: where, how: how})
	}
	// addLink adds a change of the connection to peer.
	addLink := func(peer, what string, a, b any, where string, how liveness) {
		add("peer "+peer+": "+what, a, b, where, how)
		out[len(out)-1].peer = peer
	}
	diffFields(old, new, resourceSettings, []string{"Name", "Protocol", "Net", "Disk", "Nodes", "Connections", "DeclRange"}, func(s setting, a, b any) {
		add(s.hcl, a, b, resAt, s.how)
	})
	diffFields(&old.Disk, &new.Disk, diskSettings, nil, func(s setting, a, b any) {
		add(s.hcl, a, b, resAt, s.how)
	})
	for _, on := range old.Nodes {
		nn, err := new.Node(on.Name)
		if err != nil {
			add("node "+on.Name, "present", "removed", resAt, refused)
			continue
		}
		table, prefix := peerNodeSettings, "peer "+on.Name+": "
		if on.Name == self {
			table, prefix = selfSettings, "this node: "
		}
		diffFields(on, nn, table, []string{"Name", "DeclRange", "PeerFingerprintAt"}, func(s setting, a, b any) {
			add(prefix+s.hcl, a, b, at(nn.DeclRange), s.how)
		})
	}
	for _, nn := range new.Nodes {
		if _, err := old.Node(nn.Name); err != nil {
			add("node "+nn.Name, "absent", "added", at(nn.DeclRange), refused)
		}
	}
	for _, peer := range new.Peers(self) {
		if _, err := old.Node(peer.Name); err != nil {
			continue
		}
		ol, _ := old.Link(self, peer.Name)
		nl, _ := new.Link(self, peer.Name)
		where := resAt
		oc, nc := connectionOf(old, self, peer.Name), connectionOf(new, self, peer.Name)
		if nc != nil {
			where = at(nc.DeclRange)
		}
		if ol.Protocol != nl.Protocol {
			addLink(peer.Name, "protocol", ol.Protocol, nl.Protocol, where, unlessConnected)
		}
		diffFields(&ol.Net, &nl.Net, netSettings, nil, func(s setting, a, b any) {
			addLink(peer.Name, s.hcl, a, b, where, s.how)
		})
		diffFields(&ol, &nl, nil, []string{"Protocol", "Net"}, func(s setting, a, b any) {
			addLink(peer.Name, s.hcl, a, b, where, s.how)
		})
		// A connection block's other fields, against none where the
		// block is new or gone.
		if oc != nil || nc != nil {
			if oc == nil {
				oc = &configs.Connection{}
			}
			if nc == nil {
				nc = &configs.Connection{}
			}
			diffFields(oc, nc, nil, []string{"Nodes", "Link", "DeclRange"}, func(s setting, a, b any) {
				addLink(peer.Name, s.hcl, a, b, where, s.how)
			})
		}
	}
	return out
}

func connectionOf(rc *configs.Resource, a, b string) *configs.Connection {
	for _, c := range rc.Connections {
		if c.Joins(a, b) {
			return c
		}
	}
	return nil
}

// diffFields calls f for every field of the structs *a and *b (of one
// type) that differs, but those named in skip, with its setting in table;
// a field the table does not name is refused, under its Go name.
func diffFields(a, b any, table map[string]setting, skip []string, f func(s setting, a, b any)) {
	va, vb := reflect.ValueOf(a).Elem(), reflect.ValueOf(b).Elem()
	for i := range va.NumField() {
		field := va.Type().Field(i)
		if !field.IsExported() || slices.Contains(skip, field.Name) {
			continue
		}
		x, y := va.Field(i).Interface(), vb.Field(i).Interface()
		if reflect.DeepEqual(x, y) {
			continue
		}
		s, ok := table[field.Name]
		if !ok {
			s = setting{hcl: field.Name, how: refused}
		}
		f(s, x, y)
	}
}

// show writes a setting's value for the report; secrets and file sets
// are only said to have changed.
func show(what string, v any) string {
	if strings.HasSuffix(what, "shared_secret") {
		if v == "" {
			return "(none)"
		}
		return "(secret)"
	}
	rv := reflect.ValueOf(v)
	switch {
	case !rv.IsValid():
		return "(none)"
	case rv.Kind() == reflect.Pointer && rv.IsNil(), rv.Kind() == reflect.Slice && rv.Len() == 0:
		return "(none)"
	case rv.Kind() == reflect.Pointer:
		return "(set)"
	}
	switch x := v.(type) {
	case int64:
		for _, size := range []string{"max_buffer", "resync_rate", "block_size", "resync_undo_size"} {
			if strings.HasSuffix(what, size) {
				return configs.FormatSize(x)
			}
		}
	case string:
		return fmt.Sprintf("%q", x)
	case []string:
		return fmt.Sprintf("%q", strings.Join(x, " "))
	case configs.Handlers, configs.Failover, configs.NodeFailover:
		return fmt.Sprintf("%+v", x)
	}
	return fmt.Sprint(v)
}

// at writes a source range as file:line.
func at(r hcl.Range) string {
	return fmt.Sprintf("%s:%d", r.Filename, r.Start.Line)
}
