package configs

import (
	"fmt"
	"path/filepath"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/zclconf/go-cty/cty"
)

// FailoverMode is a resource's failover block's mode.
type FailoverMode uint8

const (
	// FailoverManual: an operator promotes a node (georepl primary); no
	// consensus log runs. Today's behaviour, and the default.
	FailoverManual FailoverMode = iota
	// FailoverAuto: the daemons keep a consensus log of who is Primary and
	// promote a node when the Primary is lost (docs/architecture.md,
	// "Automatic failover").
	FailoverAuto
)

// FailoverModes lists the values mode takes, the default first.
func FailoverModes() []FailoverMode { return []FailoverMode{FailoverManual, FailoverAuto} }

func (m FailoverMode) String() string {
	switch m {
	case FailoverManual:
		return "manual"
	case FailoverAuto:
		return "auto"
	}
	return fmt.Sprintf("FailoverMode(%d)", uint8(m))
}

// Failover is a resource's failover block.
type Failover struct {
	Mode FailoverMode
	// DetectionTimeout is how long the Primary may go unheard in the
	// consensus log before another node is promoted.
	DetectionTimeout time.Duration
	// PromoteConsistent lets the best Consistent or Outdated node be
	// promoted when no node is UpToDate in the lost Primary's generation
	// (the writes it lacks are lost).
	PromoteConsistent bool
	// Witnesses are the consensus log's voters that hold no data.
	Witnesses []*Witness
	// DeclRange is where the failover block's header is (zero without one).
	DeclRange hcl.Range
}

// Witness is a voter of the consensus log without data: a third machine
// that lets two data nodes decide safely.
type Witness struct {
	Name string
	// Address is the HOST:PORT of its consensus log.
	Address string
	// Dir is the directory of its consensus log.
	Dir       string
	DeclRange hcl.Range
}

// NodeFailover is a node's failover block.
type NodeFailover struct {
	// Address is the HOST:PORT of the node's consensus log.
	Address string
	// Dir is the directory of the node's consensus log (raft's log,
	// stable store and snapshots), which must survive a reboot: a voter
	// that forgets what it voted for breaks the log's guarantees.
	Dir string
	// Priority orders the nodes that qualify for a promotion: the highest
	// is promoted.
	Priority int
	// AutoPromote is false on a node (a DR site across the WAN) that only
	// an operator promotes.
	AutoPromote bool
	// DeclRange is where the node's failover block's header is (zero
	// without one).
	DeclRange hcl.Range
}

const (
	defaultDetectionTimeout = 5 * time.Second
	minDetectionTimeout     = 500 * time.Millisecond
	maxDetectionTimeout     = 10 * time.Minute
	maxFailoverPriority     = 1000
)

var (
	failoverSchema = &hcl.BodySchema{
		Attributes: []hcl.AttributeSchema{{Name: "mode"}, {Name: "detection_timeout"}, {Name: "promote_consistent"}},
		Blocks:     []hcl.BlockHeaderSchema{{Type: "witness", LabelNames: []string{"name"}}},
	}
	witnessSchema = &hcl.BodySchema{
		Attributes: []hcl.AttributeSchema{{Name: "address", Required: true}, {Name: "dir", Required: true}},
	}
	nodeFailoverSchema = &hcl.BodySchema{
		Attributes: []hcl.AttributeSchema{{Name: "address"}, {Name: "dir"}, {Name: "priority"}, {Name: "auto_promote"}},
	}
)

func defaultNodeFailover() NodeFailover { return NodeFailover{AutoPromote: true} }

// nodeFailover reads a node's failover block; what needs the whole
// resource is checked by failover.
func (d *decoder) nodeFailover(block *hcl.Block, n *Node) {
	n.Failover.DeclRange = block.DefRange
	content, diags := block.Body.Content(nodeFailoverSchema)
	d.diags = append(d.diags, diags...)
	if attr := content.Attributes["address"]; attr != nil {
		if s, ok := d.str(attr); ok {
			if _, err := hostPortKey(s); err != nil {
				d.failAttr(attr, "Invalid address", "address = %q must be HOST:PORT: %v.", s, err)
			} else {
				n.Failover.Address = s
			}
		}
	}
	if attr := content.Attributes["dir"]; attr != nil {
		n.Failover.Dir = d.dir(attr)
	}
	if attr := content.Attributes["priority"]; attr != nil {
		if v, ok := d.wholeNumber(attr, 0, maxFailoverPriority); ok {
			n.Failover.Priority = v
		}
	}
	if attr := content.Attributes["auto_promote"]; attr != nil {
		if v, ok := d.value(attr, cty.Bool); ok {
			n.Failover.AutoPromote = v.True()
		}
	}
}

// failover reads the resource's failover block (nil: none) once the
// nodes are read, and checks the failover settings of the resource and
// its nodes together.
func (d *decoder) failover(block *hcl.Block, r *Resource) {
	f := &r.Failover
	f.DetectionTimeout = defaultDetectionTimeout
	var autoOnly []hcl.Range // settings that act only with mode = "auto"
	if block != nil {
		f.DeclRange = block.DefRange
		content, diags := block.Body.Content(failoverSchema)
		d.diags = append(d.diags, diags...)
		if attr := content.Attributes["mode"]; attr != nil {
			if m, ok := choose(d, attr, "Invalid failover mode", FailoverModes()); ok {
				f.Mode = m
			}
		}
		if attr := content.Attributes["detection_timeout"]; attr != nil {
			autoOnly = append(autoOnly, attr.Range)
			if v, ok := d.duration(attr); ok {
				if v < minDetectionTimeout || v > maxDetectionTimeout {
					d.failAttr(attr, "Invalid detection_timeout", "detection_timeout = %s must be from %s to %s.", v, minDetectionTimeout, maxDetectionTimeout)
				} else {
					f.DetectionTimeout = v
				}
			}
		}
		if attr := content.Attributes["promote_consistent"]; attr != nil {
			autoOnly = append(autoOnly, attr.Range)
			if v, ok := d.value(attr, cty.Bool); ok {
				f.PromoteConsistent = v.True()
			}
		}
		d.witnesses(content.Blocks, r)
		for _, w := range f.Witnesses {
			autoOnly = append(autoOnly, w.DeclRange)
		}
	}
	for _, n := range r.Nodes {
		if n.Failover.DeclRange != (hcl.Range{}) {
			autoOnly = append(autoOnly, n.Failover.DeclRange)
		}
	}
	if f.Mode == FailoverManual {
		for _, at := range autoOnly {
			d.fail(at, nil, "Setting without automatic failover",
				"This failover setting of resource %q acts only with mode = \"auto\" in the resource's failover block; with mode = \"manual\" (the default) an operator promotes a node, and it would do nothing: remove it.", r.Name)
		}
		return
	}
	voters := len(f.Witnesses)
	anyAuto := false
	for _, n := range r.Nodes {
		if n.Failover.Address == "" {
			at := n.DeclRange
			if n.Failover.DeclRange != (hcl.Range{}) {
				at = n.Failover.DeclRange
			}
			d.fail(at, nil, "Missing consensus address",
				"With automatic failover every node of resource %q votes in the consensus log: node %q needs failover { address = \"HOST:PORT\" }, an address of its own, not its replication address.", r.Name, n.Name)
			continue
		}
		if n.Failover.Dir == "" {
			d.fail(n.Failover.DeclRange, nil, "Missing consensus log directory",
				"With automatic failover node %q of resource %q keeps its part of the consensus log on disk: its failover block needs dir = \"/ABSOLUTE/PATH\", a directory that survives a reboot.", n.Name, r.Name)
		}
		voters++
		anyAuto = anyAuto || n.Failover.AutoPromote
	}
	if voters > 0 && voters < 3 {
		d.fail(block.DefRange, nil, "Too few voters",
			"Automatic failover of resource %q has %d voter(s): a consensus log decides only with a majority of at least 3 voters (two data nodes need a witness \"NAME\" { address = \"HOST:PORT\" } in this block).", r.Name, voters)
	}
	if voters >= 3 && !anyAuto {
		d.fail(block.DefRange, nil, "No node to promote",
			"Every node of resource %q has auto_promote = false: automatic failover could never promote one. Use mode = \"manual\".", r.Name)
	}
	d.checkConsensusAddresses(r)
}

func (d *decoder) witnesses(blocks []*hcl.Block, r *Resource) {
	for _, block := range blocks {
		w := &Witness{Name: block.Labels[0], DeclRange: block.DefRange}
		if !nodeNameRE.MatchString(w.Name) {
			d.fail(block.LabelRanges[0], &block.DefRange, "Invalid witness name",
				"Witness name %q must be made of letters, digits, '_', '-' and '.' only.", w.Name)
			continue
		}
		if n, err := r.Node(w.Name); err == nil {
			d.fail(block.LabelRanges[0], &block.DefRange, "Duplicate name",
				"Witness %q has the name of node %q at %s: voters of the consensus log need distinct names.", w.Name, n.Name, where(n.DeclRange))
			continue
		}
		dup := false
		for _, o := range r.Failover.Witnesses {
			if o.Name == w.Name {
				d.fail(block.LabelRanges[0], &block.DefRange, "Duplicate witness",
					"Witness %q is already defined at %s.", w.Name, where(o.DeclRange))
				dup = true
			}
		}
		if dup {
			continue
		}
		content, diags := block.Body.Content(witnessSchema)
		d.diags = append(d.diags, diags...)
		if attr := content.Attributes["address"]; attr != nil {
			if s, ok := d.str(attr); ok {
				if _, err := hostPortKey(s); err != nil {
					d.failAttr(attr, "Invalid address", "address = %q must be HOST:PORT: %v.", s, err)
				} else {
					w.Address = s
				}
			}
		}
		if attr := content.Attributes["dir"]; attr != nil {
			w.Dir = d.dir(attr)
		}
		r.Failover.Witnesses = append(r.Failover.Witnesses, w)
	}
}

// checkConsensusAddresses refuses two voters on one consensus address, and
// a consensus address that is a node's replication address.
func (d *decoder) checkConsensusAddresses(r *Resource) {
	type voter struct {
		what string
		at   hcl.Range
	}
	seen := map[string]voter{}
	for _, n := range r.Nodes {
		if key, err := hostPortKey(n.Address); err == nil {
			seen[key] = voter{fmt.Sprintf("the replication address of node %q", n.Name), n.DeclRange}
		}
	}
	check := func(addr, what string, at hcl.Range) {
		key, err := hostPortKey(addr)
		if err != nil {
			return
		}
		if first, dup := seen[key]; dup {
			d.fail(at, nil, "Duplicate address",
				"%s uses address %q, already %s at %s; every consensus address is its own.", what, addr, first.what, where(first.at))
			return
		}
		seen[key] = voter{"the consensus address of " + what, at}
	}
	for _, n := range r.Nodes {
		check(n.Failover.Address, fmt.Sprintf("node %q", n.Name), n.Failover.DeclRange)
	}
	for _, w := range r.Failover.Witnesses {
		check(w.Address, fmt.Sprintf("witness %q", w.Name), w.DeclRange)
	}
}

// dir reads an absolute directory path ("" if invalid).
func (d *decoder) dir(attr *hcl.Attribute) string {
	s, ok := d.path(attr)
	if ok && !filepath.IsAbs(s) {
		d.failAttr(attr, "Invalid directory", "%s = %q must be an absolute path.", attr.Name, s)
		return ""
	}
	return s
}
