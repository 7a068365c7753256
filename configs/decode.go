package configs

import (
	"fmt"
	"math/bits"
	"net"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/convert"

	"github.com/georepl/georepl/core"
	"github.com/georepl/georepl/core/meta"
	"github.com/georepl/georepl/core/wire"
	"github.com/georepl/georepl/protocols"
)

// The schema, block by block. hcl's Body.Content rejects anything not listed
// here, with a "Did you mean ...?" suggestion for near misses.
var (
	fileSchema = &hcl.BodySchema{
		Attributes: []hcl.AttributeSchema{{Name: "metrics_address"}},
		Blocks: []hcl.BlockHeaderSchema{
			{Type: "resource", LabelNames: []string{"name"}},
			{Type: "plugin", LabelNames: []string{"name"}},
		},
	}
	resourceSchema = &hcl.BodySchema{
		Attributes: []hcl.AttributeSchema{{Name: "protocol"}, {Name: "quorum"}, {Name: "on_no_quorum"}},
		Blocks: []hcl.BlockHeaderSchema{
			{Type: "net"},
			{Type: "disk"},
			{Type: "handlers"},
			{Type: "tls"},
			{Type: "failover"},
			{Type: "node", LabelNames: []string{"name"}},
			{Type: "connection", LabelNames: []string{"node_a", "node_b"}},
		},
	}
	netSchema = &hcl.BodySchema{
		Attributes: []hcl.AttributeSchema{
			{Name: "transport"},
			{Name: "compression"},
			{Name: "shared_secret"},
			{Name: "max_buffer"},
			{Name: "on_congestion"},
			{Name: "csums"},
			{Name: "resync_rate"},
			{Name: "resync_min_app_share"},
			{Name: "ping_interval"},
			{Name: "timeout"},
			{Name: "connect_retry"},
			{Name: "after_split_brain"},
			{Name: "discard_node"},
			{Name: "tls"},
			{Name: "insecure"},
			{Name: "rpo_warning"},
		},
	}
	handlersSchema = &hcl.BodySchema{
		Attributes: []hcl.AttributeSchema{{Name: "split_brain"}, {Name: "rpo_exceeded"}, {Name: "on_promote"}, {Name: "on_demote"}, {Name: "fence_peer"}},
	}
	diskSchema = &hcl.BodySchema{
		Attributes: []hcl.AttributeSchema{{Name: "block_size"}, {Name: "logical_block_size"}, {Name: "flushes"}, {Name: "al_extents"}, {Name: "on_io_error"}, {Name: "resync_undo_size"}},
	}
	nodeSchema = &hcl.BodySchema{
		Attributes: []hcl.AttributeSchema{
			{Name: "id", Required: true},
			{Name: "address", Required: true},
			{Name: "disk", Required: true},
			{Name: "meta_disk"},
			{Name: "resync_undo"},
			{Name: "export"},
			{Name: "device"},
			{Name: "ublk_queues"},
			{Name: "ublk_queue_depth"},
			{Name: "export_insecure"},
			{Name: "peer_fingerprint"},
		},
		Blocks: []hcl.BlockHeaderSchema{{Type: "tls"}, {Type: "export_tls"}, {Type: "failover"}},
	}
	connectionSchema = &hcl.BodySchema{
		Attributes: []hcl.AttributeSchema{{Name: "protocol"}},
		Blocks:     []hcl.BlockHeaderSchema{{Type: "net"}, {Type: "path"}},
	}
)

// Accepted names.
var (
	resourceNameRE = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)
	nodeNameRE     = regexp.MustCompile(`^[A-Za-z0-9_.-]+$`)
)

const (
	maxNodeID    = 31
	minBlockSize = 512
	maxBlockSize = 4 << 20 // one activity-log extent
	// The kernel's block layer takes logical block sizes from 512 bytes to
	// the page size (4 KiB on every architecture georepl builds for).
	minLogicalBlockSize = 512
	maxLogicalBlockSize = 4 << 10
	minMaxBuffer        = 64 << 10 // one compression batch
	maxMinAppShare      = core.MaxResyncMinAppShare
	// minALExtents covers the extents of the largest write (8 MiB, not
	// aligned: 3) with room to spare; maxALExtents is what one
	// activity-log transaction holds.
	minALExtents = 7
	maxALExtents = meta.MaxActivityLogExtents
	// The ublk driver's limits are 4096 queues and 4096 requests per
	// queue; every request of a queue keeps a 512 KiB buffer, and kmod/ublk
	// bounds a queue's buffers to 1 GiB: 2048 requests.
	maxUblkQueues     = 4096
	maxUblkQueueDepth = 2048
)

// Defaults, applied before any block is read.
const (
	defaultProtocol       = protocols.C
	defaultMetaDisk       = MetaDiskInternal
	defaultUblkQueues     = 1
	defaultUblkQueueDepth = 128
	// defaultLogicalBlockSize is the smallest: a filesystem made with any
	// block size mounts on it.
	defaultLogicalBlockSize = 512
	// minResyncUndoSize holds the undo log's two header pages and a few
	// records (attach refuses a log that cannot hold one record of the
	// resource's block size); defaultResyncUndoSize is sparse until used.
	minResyncUndoSize     = 64 << 10
	defaultResyncUndoSize = 1 << 30
)

func defaultNet() Net {
	return Net{
		Transport:       "tcp",
		Compression:     wire.CompressionNone,
		MaxBuffer:       core.DefaultMaxBuffer,
		OnCongestion:    core.CongestionBlock,
		Csums:           wire.CsumNone,
		PingInterval:    10 * time.Second,
		Timeout:         6 * time.Second,
		ConnectRetry:    time.Second,
		AfterSplitBrain: core.SplitBrainDisconnect,
		// The application keeps at least 30% of a busy link.
		ResyncMinAppShare: 0.3,
	}
}

func defaultDisk() Disk {
	return Disk{BlockSize: core.DefaultBlockSize, LogicalBlockSize: defaultLogicalBlockSize, Flushes: false, ALExtents: 1024, OnIOError: core.DetachOnIOError, ResyncUndoSize: defaultResyncUndoSize}
}

// decoder turns parsed HCL bodies into a Config, collecting every problem as
// a diagnostic rather than stopping at the first.
type decoder struct {
	transports []string
	config     Config
	diags      hcl.Diagnostics
	// resourceAt remembers where each resource was declared, across files.
	resourceAt map[string]hcl.Range
	// resourceBlocks wait until every file's plugin blocks are read,
	// since those add transports.
	resourceBlocks []*hcl.Block
	// metricsAt is where metrics_address was set, if it was.
	metricsAt *hcl.Attribute
}

func newDecoder(transports []string) *decoder {
	return &decoder{transports: transports, resourceAt: map[string]hcl.Range{}}
}

// file decodes the top level of one file.
func (d *decoder) file(body hcl.Body) {
	content, diags := body.Content(fileSchema)
	d.diags = append(d.diags, diags...)
	if attr := content.Attributes["metrics_address"]; attr != nil {
		d.metricsAddress(attr)
	}
	for _, block := range content.Blocks {
		if block.Type == "plugin" {
			d.plugin(block)
		} else {
			d.resourceBlocks = append(d.resourceBlocks, block)
		}
	}
}

// metricsAddress reads the daemon's metrics endpoint: host:port with an
// explicit host, so that serving beyond the loopback interface is never
// an accident of an omitted host.
func (d *decoder) metricsAddress(attr *hcl.Attribute) {
	if d.metricsAt != nil {
		d.failAttr(attr, "Duplicate metrics_address",
			"metrics_address is already set at %s; it is daemon-wide and set once, in one file.", where(d.metricsAt.NameRange))
		return
	}
	d.metricsAt = attr
	s, ok := d.str(attr)
	if !ok {
		return
	}
	host, port, err := net.SplitHostPort(s)
	if err == nil {
		_, err = strconv.ParseUint(port, 10, 16)
	}
	if err != nil || host == "" {
		d.failAttr(attr, "Invalid metrics_address",
			"metrics_address = %q must be host:port with an explicit host, such as \"127.0.0.1:9942\" (loopback only) or \"0.0.0.0:9942\" (every interface).", s)
		return
	}
	d.config.MetricsAddress = s
}

func (d *decoder) resource(block *hcl.Block) {
	name := block.Labels[0]
	if !resourceNameRE.MatchString(name) {
		d.fail(block.LabelRanges[0], &block.DefRange, "Invalid resource name",
			"Resource name %q must be made of letters, digits, '_' and '-' only.", name)
	}
	if first, dup := d.resourceAt[name]; dup {
		d.fail(block.LabelRanges[0], &block.DefRange, "Duplicate resource",
			"Resource %q is already defined at %s; each resource is defined once, in one file.", name, where(first))
	} else {
		d.resourceAt[name] = block.DefRange
	}
	content, diags := block.Body.Content(resourceSchema)
	d.diags = append(d.diags, diags...)

	r := &Resource{
		Name:       name,
		Protocol:   defaultProtocol,
		Net:        defaultNet(),
		Disk:       defaultDisk(),
		OnNoQuorum: core.SuspendIO,
		DeclRange:  block.DefRange,
	}
	if attr := content.Attributes["protocol"]; attr != nil {
		if p, ok := choose(d, attr, "Invalid protocol", protocols.All()); ok {
			r.Protocol = p
		}
	}
	if attr := content.Attributes["on_no_quorum"]; attr != nil {
		if s, ok := choose(d, attr, "Invalid on_no_quorum", core.NoQuorumPolicies()); ok {
			r.OnNoQuorum = s
		}
	}
	byType := map[string][]*hcl.Block{}
	for _, b := range content.Blocks {
		byType[b.Type] = append(byType[b.Type], b)
	}
	var nets []netAt // each net block's settings that need every node to check
	var congestionAt *hcl.Attribute
	if b := d.single(byType["net"], "resource"); b != nil {
		at := d.net(b, &r.Net)
		congestionAt = at.congestion
		nets = append(nets, at)
	}
	if b := d.single(byType["disk"], "resource"); b != nil {
		d.disk(b, &r.Disk)
	}
	if b := d.single(byType["handlers"], "resource"); b != nil {
		d.handlers(b, &r.Handlers)
	}
	tlsBlock := d.single(byType["tls"], "resource")
	var resourceTLS *TLSFiles
	if tlsBlock != nil {
		resourceTLS = &TLSFiles{}
		d.tls(tlsBlock, resourceTLS)
	}
	d.nodes(r, byType["node"], resourceTLS)
	connNets := d.connections(r, byType["connection"])
	connCongestionAt := map[*Connection]*hcl.Attribute{}
	for _, at := range connNets {
		connCongestionAt[at.conn] = at.congestion
	}
	d.checkCongestion(r, congestionAt, connCongestionAt)
	d.checkSplitBrain(r, append(nets, connNets...))
	d.checkSecurity(r, tlsBlock, append(nets, connNets...))
	d.failover(d.single(byType["failover"], "resource"), r)
	if attr := content.Attributes["quorum"]; attr != nil {
		d.quorum(attr, r) // after failover: its witnesses count
	}
	if n := len(byType["node"]); n < 2 {
		d.fail(block.DefRange, nil, "Too few nodes",
			"Resource %q has %d node block(s); replication needs at least 2.", name, n)
	}
	d.config.Resources = append(d.config.Resources, r)
}

// single returns the first of blocks, reporting every further one as a
// duplicate. It returns nil if blocks is empty.
func (d *decoder) single(blocks []*hcl.Block, parent string) *hcl.Block {
	if len(blocks) == 0 {
		return nil
	}
	for _, extra := range blocks[1:] {
		d.fail(extra.DefRange, nil, fmt.Sprintf("Duplicate %s block", extra.Type),
			"A %s has at most one %s block; the first one is at %s.", parent, extra.Type, where(blocks[0].DefRange))
	}
	return blocks[0]
}

// checkCongestion refuses a congestion policy other than "block" on a
// connection whose protocol is not A: under B and C every write waits for
// the peer anyway. The diagnostic points at the on_congestion attribute
// that gave the connection its policy (the resource's or the connection's).
func (d *decoder) checkCongestion(r *Resource, resourceAt *hcl.Attribute, connAt map[*Connection]*hcl.Attribute) {
	reported := map[*hcl.Attribute]bool{}
	for i, a := range r.Nodes {
		for _, b := range r.Nodes[i+1:] {
			lk, err := r.Link(a.Name, b.Name)
			if err != nil || lk.Net.OnCongestion == core.CongestionBlock || lk.Protocol == protocols.A {
				continue
			}
			at := resourceAt
			for _, c := range r.Connections {
				if c.Joins(a.Name, b.Name) && connAt[c] != nil {
					at = connAt[c]
				}
			}
			if at == nil || reported[at] {
				continue
			}
			reported[at] = true
			d.failAttr(at, "Invalid on_congestion",
				"on_congestion = %q needs protocol \"A\", but the connection between %q and %q uses protocol %q, whose writes wait for the peer anyway; use \"block\" or make that connection protocol \"A\".",
				lk.Net.OnCongestion, a.Name, b.Name, lk.Protocol)
		}
	}
}

// netAt remembers, for the checks that need every node, where a net block
// set on_congestion, after_split_brain and discard_node (nil if it did
// not), and which connection it belongs to (nil for the resource's).
type netAt struct {
	congestion   *hcl.Attribute
	tls          *hcl.Attribute
	policy, node *hcl.Attribute
	conn         *Connection
	net          *Net
}

// net overlays into with the attributes that block sets, leaving the others
// as they are: this is how connection blocks override resource defaults.
// It returns where the block set the settings checked later.
func (d *decoder) net(block *hcl.Block, into *Net) netAt {
	content, diags := block.Body.Content(netSchema)
	d.diags = append(d.diags, diags...)
	attrs := content.Attributes
	at := netAt{policy: attrs["after_split_brain"], node: attrs["discard_node"], net: into}
	if attr := attrs["tls"]; attr != nil {
		if m, ok := choose(d, attr, "Invalid tls", TLSModes()); ok {
			into.TLS = m
			at.tls = attr
		}
	}
	if attr := attrs["insecure"]; attr != nil {
		if v, ok := d.value(attr, cty.Bool); ok {
			into.Insecure = v.True()
		}
	}
	if attr := at.policy; attr != nil {
		if s, ok := choose(d, attr, "Invalid after_split_brain", core.SplitBrainPolicies()); ok {
			into.AfterSplitBrain = s
		}
	}
	if attr := at.node; attr != nil {
		if s, ok := d.str(attr); ok {
			into.DiscardNode = s
		}
	}
	if attr := attrs["transport"]; attr != nil {
		if s, ok := d.choice(attr, "Unknown transport", d.transports); ok {
			into.Transport = s
		}
	}
	if attr := attrs["compression"]; attr != nil {
		if s, ok := choose(d, attr, "Invalid compression", wire.Compressions()); ok {
			into.Compression = s
		}
	}
	if attr := attrs["shared_secret"]; attr != nil {
		if s, ok := d.str(attr); ok {
			into.SharedSecret = s
		}
	}
	if attr := attrs["max_buffer"]; attr != nil {
		if n, ok := d.size(attr); ok {
			if n < minMaxBuffer {
				d.failAttr(attr, "Invalid max_buffer",
					"max_buffer = %s is too small; it must be at least %s so that a compression batch fits.", FormatSize(n), FormatSize(minMaxBuffer))
			} else {
				into.MaxBuffer = n
			}
		}
	}
	if attr := attrs["on_congestion"]; attr != nil {
		if s, ok := choose(d, attr, "Invalid on_congestion", core.Congestions()); ok {
			into.OnCongestion = s
			at.congestion = attr
		}
	}
	if attr := attrs["csums"]; attr != nil {
		if s, ok := choose(d, attr, "Invalid csums", wire.Csums()); ok {
			into.Csums = s
		}
	}
	if attr := attrs["resync_rate"]; attr != nil {
		if n, ok := d.size(attr); ok {
			into.ResyncRate = n
		}
	}
	if attr := attrs["resync_min_app_share"]; attr != nil {
		if v, ok := d.value(attr, cty.Number); ok {
			f, _ := v.AsBigFloat().Float64()
			if !(f >= 0 && f <= maxMinAppShare) {
				d.failAttr(attr, "Invalid resync_min_app_share",
					"resync_min_app_share = %s must be a number from 0 to %g: the share of a busy link that a resync leaves to the application.", v.AsBigFloat().Text('g', -1), maxMinAppShare)
			} else {
				into.ResyncMinAppShare = f
			}
		}
	}
	for _, f := range []struct {
		name string
		dst  *time.Duration
	}{
		{"ping_interval", &into.PingInterval},
		{"timeout", &into.Timeout},
		{"connect_retry", &into.ConnectRetry},
		{"rpo_warning", &into.RPOWarning},
	} {
		if attr := attrs[f.name]; attr != nil {
			if v, ok := d.duration(attr); ok {
				*f.dst = v
			}
		}
	}
	return at
}

// checkSplitBrain checks the split-brain settings once every node is
// known: discard_node names a node (of the connection, in a connection
// block) and goes with after_split_brain = "discard-node" only.
func (d *decoder) checkSplitBrain(r *Resource, nets []netAt) {
	names := make([]string, len(r.Nodes))
	for i, n := range r.Nodes {
		names[i] = n.Name
	}
	for _, at := range nets {
		n := at.net
		switch {
		case n.AfterSplitBrain == core.DiscardNode && n.DiscardNode == "":
			rng := at.policy
			if rng == nil {
				continue // inherited from the resource's net block, reported there
			}
			d.failAttr(rng, "Missing discard_node",
				"after_split_brain = \"discard-node\" needs discard_node = \"NAME\" in the same net block: the node whose changes are discarded.")
		case at.node == nil:
		case n.AfterSplitBrain != core.DiscardNode:
			d.failAttr(at.node, "Unused discard_node",
				"discard_node goes with after_split_brain = \"discard-node\" only (here after_split_brain is %q).", n.AfterSplitBrain)
		case !slices.Contains(names, n.DiscardNode):
			d.failAttr(at.node, "Unknown node",
				"discard_node = %q is not a node of resource %q%s; its nodes are %s.", n.DiscardNode, r.Name, didYouMean(n.DiscardNode, names), quoteList(names))
		case at.conn != nil && !slices.Contains(at.conn.Nodes[:], n.DiscardNode):
			d.failAttr(at.node, "Invalid discard_node",
				"discard_node = %q is not one of this connection's nodes (%q and %q).", n.DiscardNode, at.conn.Nodes[0], at.conn.Nodes[1])
		}
	}
}

// quorum reads quorum = "majority" or a number of nodes, more than half of
// them: fewer would let two parts of a split cluster both write. The
// failover block's witnesses count as nodes.
func (d *decoder) quorum(attr *hcl.Attribute, r *Resource) {
	s, ok := d.str(attr)
	if !ok {
		return
	}
	n := len(r.Nodes) + len(r.Failover.Witnesses)
	if s == "majority" {
		r.Quorum = n/2 + 1
		return
	}
	q, err := strconv.Atoi(s)
	if err != nil || q <= n/2 || q > n {
		what := fmt.Sprintf("%d nodes", n)
		if w := len(r.Failover.Witnesses); w > 0 {
			what = fmt.Sprintf("%d nodes (%d of them witnesses)", n, w)
		}
		d.failAttr(attr, "Invalid quorum",
			"quorum = %q must be \"majority\" or a whole number of nodes from %d to %d: resource %q has %s, and a quorum of half of them or less would let both halves of a split cluster write.",
			s, n/2+1, n, r.Name, what)
		return
	}
	r.Quorum = q
}

func (d *decoder) handlers(block *hcl.Block, into *Handlers) {
	content, diags := block.Body.Content(handlersSchema)
	d.diags = append(d.diags, diags...)
	for _, h := range []struct {
		name string
		dst  *[]string
	}{
		{"split_brain", &into.SplitBrain},
		{"rpo_exceeded", &into.RPOExceeded},
		{"on_promote", &into.OnPromote},
		{"on_demote", &into.OnDemote},
		{"fence_peer", &into.FencePeer},
	} {
		attr := content.Attributes[h.name]
		if attr == nil {
			continue
		}
		if s, ok := d.str(attr); ok {
			argv := strings.Fields(s)
			if len(argv) == 0 || !strings.HasPrefix(argv[0], "/") {
				d.failAttr(attr, "Invalid handler",
					"%s = %q must start with the absolute path of a program, then its arguments separated by spaces (it runs without a shell).", h.name, s)
			} else {
				*h.dst = argv
			}
		}
	}
}

func (d *decoder) disk(block *hcl.Block, into *Disk) {
	content, diags := block.Body.Content(diskSchema)
	d.diags = append(d.diags, diags...)
	if attr := content.Attributes["block_size"]; attr != nil {
		if n, ok := d.size(attr); ok {
			if n < minBlockSize || n > maxBlockSize || bits.OnesCount64(uint64(n)) != 1 {
				d.failAttr(attr, "Invalid block_size",
					"block_size = %s must be a power of two from %s to %s.", FormatSize(n), FormatSize(minBlockSize), FormatSize(maxBlockSize))
			} else {
				into.BlockSize = n
			}
		}
	}
	if attr := content.Attributes["logical_block_size"]; attr != nil {
		if n, ok := d.size(attr); ok {
			if n < minLogicalBlockSize || n > maxLogicalBlockSize || bits.OnesCount64(uint64(n)) != 1 {
				d.failAttr(attr, "Invalid logical_block_size",
					"logical_block_size = %s must be 512B, 1KiB, 2KiB or 4KiB.", FormatSize(n))
			} else {
				into.LogicalBlockSize = n
			}
		}
	}
	if attr := content.Attributes["flushes"]; attr != nil {
		if v, ok := d.value(attr, cty.Bool); ok {
			into.Flushes = v.True()
		}
	}
	if attr := content.Attributes["resync_undo_size"]; attr != nil {
		if n, ok := d.size(attr); ok {
			if n < minResyncUndoSize {
				d.failAttr(attr, "Invalid resync_undo_size",
					"resync_undo_size = %s must be at least %s.", FormatSize(n), FormatSize(minResyncUndoSize))
			} else {
				into.ResyncUndoSize = n
			}
		}
	}
	if attr := content.Attributes["al_extents"]; attr != nil {
		if v, ok := d.value(attr, cty.Number); ok {
			f := v.AsBigFloat()
			n, exact := f.Int64()
			if !f.IsInt() || exact != 0 || n < minALExtents || n > maxALExtents {
				d.failAttr(attr, "Invalid al_extents",
					"al_extents = %s must be a whole number from %d to %d.", f.Text('g', -1), minALExtents, maxALExtents)
			} else {
				into.ALExtents = int(n)
			}
		}
	}
	if attr := content.Attributes["on_io_error"]; attr != nil {
		if s, ok := choose(d, attr, "Invalid on_io_error", core.IOErrorPolicies()); ok {
			into.OnIOError = s
		}
	}
}

// nodes decodes the node blocks; resourceTLS holds the resource's tls
// paths (nil without a tls block), which a node's own tls block overlays.
func (d *decoder) nodes(r *Resource, blocks []*hcl.Block, resourceTLS *TLSFiles) {
	byName := map[string]*Node{}
	byID := map[int]*Node{}
	byAddress := map[string]*Node{}
	for _, block := range blocks {
		n := &Node{Name: block.Labels[0], ID: -1, MetaDisk: defaultMetaDisk, ResyncUndo: ResyncUndoNone,
			UblkQueues: defaultUblkQueues, UblkQueueDepth: defaultUblkQueueDepth, Failover: defaultNodeFailover(), DeclRange: block.DefRange}
		if !nodeNameRE.MatchString(n.Name) {
			d.fail(block.LabelRanges[0], &block.DefRange, "Invalid node name",
				"Node name %q must be made of letters, digits, '_', '-' and '.' only.", n.Name)
		}
		if first := byName[n.Name]; first != nil {
			d.fail(block.LabelRanges[0], &block.DefRange, "Duplicate node",
				"Node %q is already defined in resource %q at %s.", n.Name, r.Name, where(first.DeclRange))
			continue
		}
		byName[n.Name] = n
		r.Nodes = append(r.Nodes, n)

		content, diags := block.Body.Content(nodeSchema)
		d.diags = append(d.diags, diags...)
		attrs := content.Attributes
		if resourceTLS != nil {
			files := *resourceTLS
			n.TLS = &files
		}
		if b := d.single(content.Blocks.OfType("failover"), "node"); b != nil {
			d.nodeFailover(b, n)
		}
		if b := d.single(content.Blocks.OfType("tls"), "node"); b != nil {
			if n.TLS == nil {
				n.TLS = &TLSFiles{}
			}
			d.tls(b, n.TLS)
		}
		if attr := attrs["id"]; attr != nil {
			if id, ok := d.nodeID(attr); ok {
				if first := byID[id]; first != nil {
					d.failAttr(attr, "Duplicate node id",
						"Node id %d is already used by node %q at %s; ids must be unique within a resource.", id, first.Name, where(first.DeclRange))
				} else {
					n.ID = id
					byID[id] = n
				}
			}
		}
		if attr := attrs["address"]; attr != nil {
			if s, ok := d.str(attr); ok {
				key, err := hostPortKey(s)
				switch {
				case err != nil:
					d.failAttr(attr, "Invalid address", "address = %q must be HOST:PORT: %v.", s, err)
				case byAddress[key] != nil:
					first := byAddress[key]
					d.failAttr(attr, "Duplicate address",
						"Address %q is already used by node %q at %s; every node needs its own.", s, first.Name, where(first.DeclRange))
				default:
					n.Address = s
					byAddress[key] = n
				}
			}
		}
		if attr := attrs["disk"]; attr != nil {
			if s, ok := d.path(attr); ok {
				n.Disk = s
			}
		}
		if attr := attrs["meta_disk"]; attr != nil {
			if s, ok := d.path(attr); ok {
				n.MetaDisk = s
			}
		}
		if attr := attrs["resync_undo"]; attr != nil {
			if s, ok := d.str(attr); ok {
				switch s {
				case MetaDiskInternal:
					d.failAttr(attr, "Unsupported resync_undo",
						"resync_undo = \"internal\" is not supported yet: name a file (its own, not the data or metadata disk) or \"none\".")
				case "", ResyncUndoNone:
					n.ResyncUndo = ResyncUndoNone
				default:
					p, ok := d.path(attr)
					switch {
					case !ok:
					case p == n.Disk || p == n.MetaDisk:
						d.failAttr(attr, "Invalid resync_undo",
							"resync_undo = %q is this node's disk or meta_disk: the undo log needs a file of its own.", p)
					default:
						n.ResyncUndo = p
					}
				}
			}
		}
		if attr := attrs["export"]; attr != nil {
			if s, ok := d.str(attr); ok {
				if err := checkExport(s); err != nil {
					d.failAttr(attr, "Invalid export", "export = %q: %v.", s, err)
				} else {
					n.Export = s
				}
			}
		}
		deviceBad := false // already diagnosed
		if attr := attrs["device"]; attr != nil {
			s, ok := d.str(attr)
			deviceBad = !ok
			if ok {
				switch err := checkDevice(s); {
				case err != nil:
					d.failAttr(attr, "Invalid device", "device = %q: %v.", s, err)
					deviceBad = true
				case s != "" && s != "ublk" && !strings.HasPrefix(s, "/dev/ublkb") && attrs["export"] == nil:
					d.failAttr(attr, "Device without export",
						"device = %q needs an export in the same node block (for example export = \"unix:/run/georepl/%s.sock\"): the kernel's nbd driver reaches the resource through it (ublk devices do not need one).", s, r.Name)
					deviceBad = true
				default:
					n.Device = s
				}
			}
		}
		d.exportSecurity(n, attrs, d.single(content.Blocks.OfType("export_tls"), "node"), deviceBad)
		if attr := attrs["peer_fingerprint"]; attr != nil {
			d.peerFingerprint(n, attr)
		}
		for _, u := range []struct {
			name string
			max  int
			into *int
		}{{"ublk_queues", maxUblkQueues, &n.UblkQueues}, {"ublk_queue_depth", maxUblkQueueDepth, &n.UblkQueueDepth}} {
			attr := attrs[u.name]
			if attr == nil {
				continue
			}
			v, ok := d.wholeNumber(attr, 1, u.max)
			if !ok || deviceBad {
				continue
			}
			if dev := attrs["device"]; !mayBeUblk(n.Device) {
				d.failAttr(attr, "Setting for another device",
					"%s applies to ublk devices only; this node block has %s: set device = \"ublk\", \"/dev/ublkbN\" or \"auto\", or remove %s.",
					u.name, deviceSaid(dev, n.Device), u.name)
				continue
			}
			*u.into = v
		}
	}
}

// mayBeUblk reports whether the device spelling s may give a ublk device.
func mayBeUblk(s string) bool {
	return s == "ublk" || s == "auto" || strings.HasPrefix(s, "/dev/ublkb")
}

// deviceSaid describes a node block's device setting for a diagnostic.
func deviceSaid(attr *hcl.Attribute, dev string) string {
	if attr == nil {
		return "no device"
	}
	return fmt.Sprintf("device = %q", dev)
}

// checkDevice accepts the device spellings Node.Device documents.
func checkDevice(s string) error {
	switch s {
	case "", "nbd", "ublk", "auto":
		return nil
	}
	for _, prefix := range []string{"/dev/nbd", "/dev/ublkb"} {
		if n, ok := strings.CutPrefix(s, prefix); ok {
			if n == "" || strings.TrimLeft(n, "0123456789") != "" || (len(n) > 1 && n[0] == '0') || len(n) > 6 {
				return fmt.Errorf("must end in a device number, like %s0", prefix)
			}
			return nil
		}
	}
	return fmt.Errorf("must be \"/dev/nbdN\", \"nbd\", \"/dev/ublkbN\", \"ublk\", \"auto\" or empty")
}

// connections decodes the connection blocks; it returns where each one's
// net block set the settings checked later.
func (d *decoder) connections(r *Resource, blocks []*hcl.Block) []netAt {
	var nets []netAt
	names := make([]string, len(r.Nodes))
	for i, n := range r.Nodes {
		names[i] = n.Name
	}
	for _, block := range blocks {
		c := &Connection{
			Nodes:     [2]string{block.Labels[0], block.Labels[1]},
			Link:      Link{Protocol: r.Protocol, Net: r.Net},
			DeclRange: block.DefRange,
		}
		known := true
		for i, name := range c.Nodes {
			if _, err := r.Node(name); err != nil {
				known = false
				d.fail(block.LabelRanges[i], &block.DefRange, "Unknown node",
					"Connection names node %q, which resource %q does not define%s; its nodes are %s.",
					name, r.Name, didYouMean(name, names), quoteList(names))
			}
		}
		switch {
		case c.Nodes[0] == c.Nodes[1]:
			d.fail(block.LabelRanges[1], &block.DefRange, "Invalid connection",
				"A connection joins two different nodes; this one names %q twice.", c.Nodes[0])
		case known:
			for _, first := range r.Connections {
				if first.Joins(c.Nodes[0], c.Nodes[1]) {
					d.fail(block.DefRange, nil, "Duplicate connection",
						"The connection between %q and %q is already defined at %s (the order of the two names does not matter).",
						c.Nodes[0], c.Nodes[1], where(first.DeclRange))
					break
				}
			}
		}

		content, diags := block.Body.Content(connectionSchema)
		d.diags = append(d.diags, diags...)
		if attr := content.Attributes["protocol"]; attr != nil {
			if p, ok := choose(d, attr, "Invalid protocol", protocols.All()); ok {
				c.Link.Protocol = p
			}
		}
		for _, b := range content.Blocks.OfType("path") {
			if known && c.Nodes[0] != c.Nodes[1] {
				d.pathBlock(b, c)
			}
		}
		if b := d.single(content.Blocks.OfType("net"), "connection"); b != nil {
			at := d.net(b, &c.Link.Net)
			at.conn = c
			nets = append(nets, at)
		}
		r.Connections = append(r.Connections, c)
	}
	return nets
}

// pathBlock decodes a path block of connection c: one address per node of
// the connection, attributes named after the nodes.
func (d *decoder) pathBlock(block *hcl.Block, c *Connection) {
	attrs, diags := block.Body.JustAttributes()
	d.diags = append(d.diags, diags...)
	if diags.HasErrors() {
		return
	}
	var p Path
	for name, attr := range attrs {
		i := slices.Index(c.Nodes[:], name)
		if i < 0 {
			d.failAttr(attr, "Unknown path end",
				"A path of the connection between %q and %q gives an address to each of them; %q is neither.", c.Nodes[0], c.Nodes[1], name)
			continue
		}
		s, ok := d.str(attr)
		if !ok {
			continue
		}
		if _, err := hostPortKey(s); err != nil {
			d.failAttr(attr, "Invalid address", "%s = %q must be HOST:PORT: %v.", name, s, err)
			continue
		}
		p[i] = s
	}
	for i, a := range p {
		if a == "" {
			d.fail(block.DefRange, nil, "Incomplete path",
				"A path of the connection between %q and %q needs an address for each: %s = \"HOST:PORT\" is missing.", c.Nodes[0], c.Nodes[1], c.Nodes[i])
			return
		}
	}
	for _, first := range c.Paths {
		if first == p {
			d.fail(block.DefRange, nil, "Duplicate path",
				"The connection between %q and %q already has the path %s = %q, %s = %q.", c.Nodes[0], c.Nodes[1], c.Nodes[0], p[0], c.Nodes[1], p[1])
			return
		}
	}
	c.Paths = append(c.Paths, p)
}

// value evaluates attr as a constant of type ty. It reports a diagnostic and
// returns false if the expression is not a constant, is null or cannot be
// converted.
func (d *decoder) value(attr *hcl.Attribute, ty cty.Type) (cty.Value, bool) {
	v, diags := attr.Expr.Value(nil)
	d.diags = append(d.diags, diags...)
	if diags.HasErrors() {
		return cty.NilVal, false
	}
	if v.IsNull() {
		d.failAttr(attr, "Missing value", "%s must not be null; leave it out to use the default.", attr.Name)
		return cty.NilVal, false
	}
	converted, err := convert.Convert(v, ty)
	if err != nil {
		d.failAttr(attr, "Incorrect attribute value type",
			"Inappropriate value for %s: %s required, got %s.", attr.Name, ty.FriendlyName(), v.Type().FriendlyName())
		return cty.NilVal, false
	}
	if !converted.IsWhollyKnown() || converted.IsMarked() {
		d.failAttr(attr, "Invalid value", "%s must be a constant.", attr.Name)
		return cty.NilVal, false
	}
	return converted, true
}

func (d *decoder) str(attr *hcl.Attribute) (string, bool) {
	v, ok := d.value(attr, cty.String)
	if !ok {
		return "", false
	}
	return v.AsString(), true
}

// path reads a non-empty string.
func (d *decoder) path(attr *hcl.Attribute) (string, bool) {
	s, ok := d.str(attr)
	if ok && s == "" {
		d.failAttr(attr, "Empty path", "%s must name a file or device.", attr.Name)
		return "", false
	}
	return s, ok
}

// choice reads a string that must be one of valid.
func (d *decoder) choice(attr *hcl.Attribute, summary string, valid []string) (string, bool) {
	s, ok := d.str(attr)
	if !ok {
		return "", false
	}
	for _, v := range valid {
		if s == v {
			return s, true
		}
	}
	d.failAttr(attr, summary, "%s = %q is not valid%s; use one of %s.", attr.Name, s, didYouMean(s, valid), quoteList(valid))
	return "", false
}

// choose reads a string that must name one of values, as their String
// methods spell it: the package that defines an enumeration owns its names.
func choose[T fmt.Stringer](d *decoder, attr *hcl.Attribute, summary string, values []T) (T, bool) {
	names := make([]string, len(values))
	for i, v := range values {
		names[i] = v.String()
	}
	s, ok := d.choice(attr, summary, names)
	if !ok {
		var zero T
		return zero, false
	}
	return values[slices.Index(names, s)], true
}

func (d *decoder) size(attr *hcl.Attribute) (int64, bool) {
	s, ok := d.str(attr)
	if !ok {
		return 0, false
	}
	n, err := ParseSize(s)
	if err != nil {
		d.failAttr(attr, "Invalid size", "%s: %v.", attr.Name, err)
		return 0, false
	}
	return n, true
}

// duration reads a positive Go duration such as "10s" or "1m30s".
func (d *decoder) duration(attr *hcl.Attribute) (time.Duration, bool) {
	s, ok := d.str(attr)
	if !ok {
		return 0, false
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		d.failAttr(attr, "Invalid duration",
			"%s = %q is not a duration such as \"500ms\", \"10s\" or \"1m30s\" (units ns, us, ms, s, m, h).", attr.Name, s)
		return 0, false
	}
	if v <= 0 {
		d.failAttr(attr, "Invalid duration", "%s = %q must be greater than zero.", attr.Name, s)
		return 0, false
	}
	return v, true
}

// wholeNumber reads a whole number from lo to hi.
func (d *decoder) wholeNumber(attr *hcl.Attribute, lo, hi int) (int, bool) {
	v, ok := d.value(attr, cty.Number)
	if !ok {
		return 0, false
	}
	f := v.AsBigFloat()
	n, exact := f.Int64()
	if !f.IsInt() || exact != 0 || n < int64(lo) || n > int64(hi) {
		d.failAttr(attr, "Invalid "+attr.Name, "%s = %s must be a whole number from %d to %d.", attr.Name, f.Text('g', -1), lo, hi)
		return 0, false
	}
	return int(n), true
}

func (d *decoder) nodeID(attr *hcl.Attribute) (int, bool) {
	v, ok := d.value(attr, cty.Number)
	if !ok {
		return 0, false
	}
	f := v.AsBigFloat()
	id, exact := f.Int64()
	if !f.IsInt() || exact != 0 || id < 0 || id > maxNodeID {
		d.failAttr(attr, "Invalid node id", "id = %s must be a whole number from 0 to %d.", f.Text('g', -1), maxNodeID)
		return 0, false
	}
	return int(id), true
}

// hostPortKey checks that s is HOST:PORT with a non-empty host and a port
// from 1 to 65535, and returns a normalised form for duplicate detection.
func hostPortKey(s string) (string, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return "", err
	}
	if host == "" {
		return "", fmt.Errorf("the host is empty; peers need a host name or IP address to dial")
	}
	if strings.ContainsAny(host, " \t\r\n/") {
		return "", fmt.Errorf("host %q contains a space or slash", host)
	}
	if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
		return "", fmt.Errorf("port %q is not a number from 1 to 65535", port)
	}
	return net.JoinHostPort(strings.ToLower(host), port), nil
}

// checkExport validates "unix:PATH" and "tcp:HOST:PORT".
func checkExport(s string) error {
	if path, ok := strings.CutPrefix(s, "unix:"); ok {
		if path == "" {
			return fmt.Errorf("the socket path after \"unix:\" is empty")
		}
		return nil
	}
	if hostPort, ok := strings.CutPrefix(s, "tcp:"); ok {
		if _, err := hostPortKey(hostPort); err != nil {
			return fmt.Errorf("after \"tcp:\": %w", err)
		}
		return nil
	}
	return fmt.Errorf("must be \"unix:PATH\" or \"tcp:HOST:PORT\"")
}

// fail records an error diagnostic at subject.
func (d *decoder) fail(subject hcl.Range, context *hcl.Range, summary, format string, args ...any) {
	d.diags = append(d.diags, &hcl.Diagnostic{
		Severity: hcl.DiagError,
		Summary:  summary,
		Detail:   fmt.Sprintf(format, args...),
		Subject:  subject.Ptr(),
		Context:  context,
	})
}

// failAttr records an error diagnostic at attr's value.
func (d *decoder) failAttr(attr *hcl.Attribute, summary, format string, args ...any) {
	d.fail(attr.Expr.Range(), &attr.Range, summary, format, args...)
}

// where writes r's start as FILE:LINE:COLUMN.
func where(r hcl.Range) string {
	return fmt.Sprintf("%s:%d:%d", r.Filename, r.Start.Line, r.Start.Column)
}
