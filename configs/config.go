package configs

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/agext/levenshtein"
	"github.com/hashicorp/hcl/v2"

	"github.com/georepl/georepl/core"
	"github.com/georepl/georepl/core/wire"
	"github.com/georepl/georepl/protocols"
)

// ErrNotFound is wrapped by the errors of Config.Resource, Resource.Node and
// Resource.Link when a name does not exist in the configuration.
var ErrNotFound = errors.New("not found")

// Config is a whole configuration: every resource of a configuration
// directory. LoadDir and Parse return it fully validated and defaulted; it is
// never modified by this package afterwards, so it may be shared between
// goroutines as long as nobody writes to it.
type Config struct {
	// Resources in the order they were declared, files taken in name order.
	Resources []*Resource
	// Plugins are the transport plugin blocks, in the same order.
	Plugins []*Plugin
	// MetricsAddress is the host:port where the daemon serves its
	// Prometheus metrics (/metrics); empty (the default) for none. It is
	// daemon-wide, set at the top level of at most one file.
	MetricsAddress string
}

// Resource returns the resource called name. The error wraps ErrNotFound
// and lists the resources that exist, suggesting a close name if there is one.
func (c *Config) Resource(name string) (*Resource, error) {
	names := make([]string, 0, len(c.Resources))
	for _, r := range c.Resources {
		if r.Name == name {
			return r, nil
		}
		names = append(names, r.Name)
	}
	return nil, fmt.Errorf("configs: resource %q %w%s (resources: %s)",
		name, ErrNotFound, didYouMean(name, names), quoteList(names))
}

// Resource is one replicated volume: the nodes that hold a copy and how each
// pair of them talks. Every pair of nodes is connected (a full mesh).
type Resource struct {
	// Name is the resource's label, made of letters, digits, '_' and '-'.
	Name string
	// Protocol is the default write-ordering protocol of every connection.
	Protocol protocols.Protocol
	// Net holds the default network settings of every connection.
	Net Net
	// Disk holds the settings shared by the resource's disks on every node.
	Disk Disk
	// Quorum is how many nodes (this one included) a node must see to be
	// promoted and, while Primary, to complete writes; 0 means no quorum
	// (the default). The failover block's witnesses count as nodes:
	// "majority" is (len(Nodes)+len(Failover.Witnesses))/2+1.
	Quorum int
	// OnNoQuorum is what a Primary that lost quorum does with writes.
	// Meaningful only with Quorum.
	OnNoQuorum core.NoQuorumPolicy
	// Handlers are commands the daemon runs on events.
	Handlers Handlers
	// Failover is the failover block: FailoverManual without one.
	Failover Failover
	// Nodes in declaration order. Node ids and names are unique.
	Nodes []*Node
	// Connections are the connection blocks, which override Protocol and
	// Net for one pair of nodes. Pairs without a block use the defaults;
	// use Link to get the effective settings of any pair.
	Connections []*Connection
	// DeclRange is where the resource block's header is in the source.
	DeclRange hcl.Range
}

// Node returns the node called name. The error wraps ErrNotFound, lists the
// resource's nodes and suggests a close name if there is one.
func (r *Resource) Node(name string) (*Node, error) {
	names := make([]string, 0, len(r.Nodes))
	for _, n := range r.Nodes {
		if n.Name == name {
			return n, nil
		}
		names = append(names, n.Name)
	}
	return nil, fmt.Errorf("configs: resource %q: node %q %w%s (nodes: %s)",
		r.Name, name, ErrNotFound, didYouMean(name, names), quoteList(names))
}

// NodeByID returns the node whose ID is id, or nil if there is none.
func (r *Resource) NodeByID(id int) *Node {
	for _, n := range r.Nodes {
		if n.ID == id {
			return n
		}
	}
	return nil
}

// Peers returns every node of the resource except the one called name,
// ordered by ID: the nodes that name connects to. It returns nil if name is
// not a node of the resource.
func (r *Resource) Peers(name string) []*Node {
	if _, err := r.Node(name); err != nil {
		return nil
	}
	peers := make([]*Node, 0, len(r.Nodes)-1)
	for _, n := range r.Nodes {
		if n.Name != name {
			peers = append(peers, n)
		}
	}
	sort.Slice(peers, func(i, j int) bool { return peers[i].ID < peers[j].ID })
	return peers
}

// Link returns the effective settings of the connection between nodes a
// and b, in either order: the resource's Protocol and Net, overlaid by every
// field that the pair's connection block sets. It fails, wrapping
// ErrNotFound, if a or b is not a node of the resource, and fails if a and b
// are the same node.
func (r *Resource) Link(a, b string) (Link, error) {
	for _, name := range []string{a, b} {
		if _, err := r.Node(name); err != nil {
			return Link{}, err
		}
	}
	if a == b {
		return Link{}, fmt.Errorf("configs: resource %q: no connection from node %q to itself", r.Name, a)
	}
	for _, c := range r.Connections {
		if c.Joins(a, b) {
			return c.Link, nil
		}
	}
	return Link{Protocol: r.Protocol, Net: r.Net}, nil
}

// Net holds a connection's network settings.
type Net struct {
	// Transport names the transport that carries the connection, such as
	// "tcp" or "quic"; LoadOptions.Transports lists the accepted names.
	Transport string
	// Compression is how frames are packed for the peer.
	Compression wire.Compression
	// SharedSecret authenticates peers to each other; empty means that any
	// peer that knows the resource and node names is accepted, unless TLS
	// authenticates them. With TLS it is an extra factor, bound to the TLS
	// session.
	SharedSecret string
	// TLS says whether the connection runs TLS with node certificates
	// (Node.TLS): TLSRequired by default when the resource has a tls
	// block, TLSOff otherwise.
	TLS TLSMode
	// Insecure accepts a connection that nothing authenticates (TLSOff
	// and no SharedSecret), which is refused otherwise.
	Insecure bool
	// MaxBuffer bounds, in bytes, the data sent to a peer and not yet
	// acknowledged by it.
	MaxBuffer int64
	// OnCongestion says what happens when MaxBuffer is full. Policies
	// other than core.CongestionBlock need protocol A.
	OnCongestion core.Congestion
	// Csums is the checksum algorithm of checksum-based resync
	// (wire.CsumNone: send every block marked out of sync). It is the sync
	// source's setting; the target answers whatever algorithm the source
	// asks for.
	Csums wire.Csum
	// ResyncRate caps, in bytes per second, the resync this node sends the
	// peer as its sync source; 0 means no cap.
	ResyncRate int64
	// ResyncMinAppShare, from 0 to 0.9, is the least share of the link's
	// measured capacity that a resync leaves to application writes while
	// there are any; 0 lets the resync take the whole link.
	ResyncMinAppShare float64
	// PingInterval is how often an idle connection is probed.
	PingInterval time.Duration
	// Timeout is how long a peer may stay silent before the connection is
	// considered broken.
	Timeout time.Duration
	// ConnectRetry is the pause between two connection attempts.
	ConnectRetry time.Duration
	// AfterSplitBrain is how a split brain is resolved when the two nodes
	// reconnect.
	AfterSplitBrain core.SplitBrainPolicy
	// DiscardNode names the victim of core.DiscardNode: a node of the
	// resource; on a connection that does not join it, the policy cannot
	// decide and the nodes stay apart. Set only with that policy.
	DiscardNode string
	// RPOWarning is the recovery point a Primary tolerates for the peer:
	// once the oldest write the peer lacks is older, an rpo-exceeded event
	// is raised and Handlers.RPOExceeded runs; 0 (the default) for no
	// warning.
	RPOWarning time.Duration
}

// Handlers are commands run on events: each is a program (an absolute
// path) and its arguments, split at white space and run without a shell;
// nil when not configured.
type Handlers struct {
	// SplitBrain runs when a split brain is detected on a connection,
	// resolved or not (see Net.AfterSplitBrain).
	SplitBrain []string
	// RPOExceeded runs when a peer's RPO crosses its net.rpo_warning.
	RPOExceeded []string
	// OnPromote runs after this node became Primary (an operator's or
	// automatic failover's promotion), OnDemote after it stopped being
	// Primary; neither is waited for.
	OnPromote []string
	OnDemote  []string
	// FencePeer runs, under automatic failover, on the node the log
	// promoted, before it is promoted: exit status 0 says the old Primary
	// is fenced (powered off); any other leaves this node Secondary.
	FencePeer []string
}

// Disk holds the disk settings of a resource, shared by all its nodes.
type Disk struct {
	// BlockSize is the bitmap granularity in bytes: a power of two, at
	// least 512 and at most 4 MiB (one activity-log extent).
	BlockSize int64
	// LogicalBlockSize is the logical block size of the kernel device
	// (Node.Device), nbd and ublk alike, so that a filesystem made on one
	// node's device mounts on every other node's: 512, 1024, 2048 or 4096
	// bytes, 512 by default. A filesystem block smaller than it does not
	// mount.
	LogicalBlockSize int64
	// Flushes says whether secondaries also flush their disk at every
	// epoch boundary, not only when the application flushes. Application
	// flushes (and FUA) are honoured end to end either way.
	Flushes bool
	// ALExtents is the capacity of the activity log: how many 4 MiB
	// extents may be active (written recently, possibly not yet identical
	// on every node) before a write to another extent waits for the least
	// recently used settled one to be retired. After a crash, up to
	// ALExtents*4 MiB are resynchronised. 7 to 16380.
	ALExtents int
	// OnIOError says what a failed read or write of the local disk does.
	OnIOError core.IOErrorPolicy
	// ResyncUndoSize is the capacity in bytes of each node's resync undo
	// log (Node.ResyncUndo): how much old content a sync target can save
	// before its first overwrites during one resync. A sparse file takes
	// disk space only as it fills.
	ResyncUndoSize int64
}

// ResyncUndoNone is Node.ResyncUndo when the node keeps no undo log.
const ResyncUndoNone = "none"

// MetaDiskInternal is Node.MetaDisk when the metadata is at the end of
// the node's disk.
const MetaDiskInternal = "internal"

// Node is one host holding a copy of a resource.
type Node struct {
	// Name is the node's label; it is what a daemon is told it is.
	Name string
	// ID is unique within the resource, from 0 to 31.
	ID int
	// Address is the host:port where the node listens for its peers.
	Address string
	// Disk is the path of the backing block device or regular file.
	Disk string
	// MetaDisk is MetaDiskInternal (metadata at the end of Disk) or the
	// path of an external metadata file or device.
	MetaDisk string
	// ResyncUndo is the path of the node's resync undo log, which keeps
	// it a consistent image while it is a sync target (see the admin
	// guide), or ResyncUndoNone for a plain resync, Inconsistent until
	// done.
	ResyncUndo string
	// Export is where the node serves the replicated device locally:
	// "unix:PATH" or "tcp:HOST:PORT", or empty for none.
	Export string
	// Device is the kernel block device the node attaches the export to
	// while it is Primary: "" (none), "/dev/nbdN", "nbd" (any free nbd
	// device), "/dev/ublkbN", "ublk" (any free ublk device) or "auto"
	// (ublk where the kernel has it, else nbd). The nbd spellings and
	// "auto" need Export, through which the kernel's nbd driver reaches the
	// resource; ublk is served directly.
	Device string
	// UblkQueues is the number of hardware queues of a ublk device, each
	// served by its own thread (the kernel uses at most one per CPU), and
	// UblkQueueDepth the requests each queue carries at once. They apply
	// when Device is a ublk spelling or "auto"; 1 and 128 by default.
	UblkQueues     int
	UblkQueueDepth int
	// TLS are the node's TLS files, nil when neither the resource nor the
	// node has a tls block.
	TLS *TLSFiles
	// ExportTLS are the TLS files of the node's export (its export_tls
	// block), nil for an export without TLS: CA signs the certificates
	// clients must present, Cert and Key are the export's own.
	ExportTLS *TLSFiles
	// PeerFingerprint, if not nil, is the SHA-256 sum this node's peers
	// require of the certificate it presents on connections with TLS: of
	// the certificate or of its public key (peer_fingerprint). Where it
	// is set, a peer needs no ca to authenticate the node.
	PeerFingerprint   *[sha256.Size]byte
	PeerFingerprintAt hcl.Range
	// ExportInsecure accepts a tcp export on an address other than
	// loopback without TLS (export_insecure = true).
	ExportInsecure bool
	// Failover is the node's failover block (AutoPromote true without one).
	Failover NodeFailover
	// DeclRange is where the node block's header is in the source.
	DeclRange hcl.Range
}

// Connection is a connection block: settings for one unordered pair of nodes.
type Connection struct {
	// Nodes are the two node names, in the order the block's labels give.
	Nodes [2]string
	// Link holds the effective settings of the pair: the resource's defaults
	// overlaid by what the block sets.
	Link Link
	// Paths are the connection's path blocks, in declaration order: the
	// address pairs it may use, each in the order of Nodes. Empty means
	// one path, between the nodes' own addresses (see Resource.Paths).
	Paths []Path
	// DeclRange is where the connection block's header is in the source.
	DeclRange hcl.Range
}

// Paths returns the address pairs of the connection between nodes a and b,
// each in the order a, b: its path blocks, or nil for a connection without
// any, which uses the nodes' own addresses.
func (r *Resource) Paths(a, b string) []Path {
	for _, c := range r.Connections {
		if !c.Joins(a, b) {
			continue
		}
		out := make([]Path, len(c.Paths))
		for i, p := range c.Paths {
			if c.Nodes[0] != a {
				p = Path{p[1], p[0]}
			}
			out[i] = p
		}
		return out
	}
	return nil
}

// Joins reports whether the connection is the one between nodes a and b, in
// either order.
func (c *Connection) Joins(a, b string) bool {
	return c.Nodes == [2]string{a, b} || c.Nodes == [2]string{b, a}
}

// Link holds the effective settings of the connection between two nodes.
type Link struct {
	// Protocol is the write-ordering protocol.
	Protocol protocols.Protocol
	// Net holds the network settings.
	Net Net
}

// Path is one address pair of a connection: where each of its two nodes
// listens on that path, in the order of the nodes.
type Path [2]string

// didYouMean returns ` (did you mean "x"?)` for the candidate closest to
// given, ignoring case, or "" if none is close: fewer than 3 edits (HCL's own
// threshold) and fewer edits than given has characters.
func didYouMean(given string, candidates []string) string {
	best, bestDist := "", min(3, len(given))
	for _, c := range candidates {
		d := levenshtein.Distance(strings.ToLower(given), strings.ToLower(c), nil)
		if d < bestDist {
			best, bestDist = c, d
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

// quoteList writes names as "a", "b", "c", or "none".
func quoteList(names []string) string {
	if len(names) == 0 {
		return "none"
	}
	quoted := make([]string, len(names))
	for i, n := range names {
		quoted[i] = fmt.Sprintf("%q", n)
	}
	return strings.Join(quoted, ", ")
}
