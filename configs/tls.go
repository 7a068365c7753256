package configs

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"github.com/zclconf/go-cty/cty"
)

// TLSMode says whether a connection runs TLS: net's tls attribute.
type TLSMode uint8

const (
	// TLSOff: no TLS on tcp; quic's self-signed, unverified TLS. Peers
	// are authenticated by shared_secret only, if it is set.
	TLSOff TLSMode = iota
	// TLSRequired: both ends present their node certificate and verify
	// the other's against the CA and the node it names. The default of
	// every connection of a resource with a tls block.
	TLSRequired
)

// TLSModes lists the values net's tls takes.
func TLSModes() []TLSMode { return []TLSMode{TLSOff, TLSRequired} }

func (m TLSMode) String() string {
	switch m {
	case TLSOff:
		return "off"
	case TLSRequired:
		return "required"
	}
	return fmt.Sprintf("TLSMode(%d)", uint8(m))
}

// TLSFiles are the paths of a node's TLS files: the resource's tls block
// overlaid by the node's own. Paths are the node's, read by its daemon
// only.
type TLSFiles struct {
	// CA holds the certificates of the authority that signs every node
	// certificate of the resource.
	CA string
	// Cert is the node's certificate, naming it (georepl://node/NAME).
	Cert string
	// Key is the node's private key, readable by its owner only.
	Key string
	// CAAt, CertAt and KeyAt are where each was set, for diagnostics.
	CAAt, CertAt, KeyAt hcl.Range
}

// Where returns where the field named field ("ca", "cert" or "key") was
// set, as FILE:LINE:COLUMN.
func (f *TLSFiles) Where(field string) string {
	switch field {
	case "ca":
		return where(f.CAAt)
	case "cert":
		return where(f.CertAt)
	default:
		return where(f.KeyAt)
	}
}

// complete names a field the files lack, or is "".
func (f *TLSFiles) missing() string {
	switch {
	case f.CA == "":
		return "ca"
	case f.Cert == "":
		return "cert"
	case f.Key == "":
		return "key"
	}
	return ""
}

var tlsSchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{{Name: "ca"}, {Name: "cert"}, {Name: "key"}},
}

// tls overlays into with the paths that block sets.
func (d *decoder) tls(block *hcl.Block, into *TLSFiles) {
	content, diags := block.Body.Content(tlsSchema)
	d.diags = append(d.diags, diags...)
	for _, f := range []struct {
		name string
		path *string
		at   *hcl.Range
	}{{"ca", &into.CA, &into.CAAt}, {"cert", &into.Cert, &into.CertAt}, {"key", &into.Key, &into.KeyAt}} {
		if attr := content.Attributes[f.name]; attr != nil {
			if s, ok := d.path(attr); ok {
				*f.path, *f.at = s, attr.Range
			}
		}
	}
}

// checkSecurity settles every connection's tls once the tls blocks are
// known, checks that a connection with TLS has its files on both nodes,
// and refuses a connection that nothing authenticates (no TLS, no shared
// secret) unless its configuration says insecure = true: whoever reaches
// the port could then write into a secondary or read the disk. tlsBlock is the resource's tls
// block (nil if none); nets says where each net block set tls.
func (d *decoder) checkSecurity(r *Resource, tlsBlock *hcl.Block, nets []netAt) {
	anyTLS := tlsBlock != nil
	for _, n := range r.Nodes {
		anyTLS = anyTLS || n.TLS != nil
	}
	explicit := map[*Connection]bool{}
	resourceExplicit := false
	for _, at := range nets {
		if at.tls == nil {
			continue
		}
		if at.conn == nil {
			resourceExplicit = true
		} else {
			explicit[at.conn] = true
		}
	}
	if !resourceExplicit && anyTLS {
		r.Net.TLS = TLSRequired
	}
	for _, c := range r.Connections {
		if !explicit[c] {
			c.Link.Net.TLS = r.Net.TLS
		}
	}
	tlsAt := map[*Net]*hcl.Attribute{}
	for _, at := range nets {
		tlsAt[at.net] = at.tls
	}
	reported := map[*Node]bool{}
	for i, a := range r.Nodes {
		for _, b := range r.Nodes[i+1:] {
			lk, err := r.Link(a.Name, b.Name)
			if err != nil {
				continue
			}
			at := r.DeclRange
			var conn *Connection
			for _, c := range r.Connections {
				if c.Joins(a.Name, b.Name) {
					conn, at = c, c.DeclRange
				}
			}
			if lk.Net.TLS == TLSRequired {
				for _, n := range []*Node{a, b} {
					missing := "tls block"
					if n.TLS != nil {
						missing = n.TLS.missing()
					}
					peer := other(a, b, n)
					if missing == "ca" && peer.PeerFingerprint != nil {
						// n knows its peer by the pinned fingerprint.
						missing = ""
						if n.TLS.Cert == "" {
							missing = "cert"
						} else if n.TLS.Key == "" {
							missing = "key"
						}
					}
					if missing == "" || reported[n] {
						continue
					}
					reported[n] = true
					why := "the default once a tls block exists"
					if attr := tlsAtOf(tlsAt, r, conn); attr != nil {
						why = fmt.Sprintf("tls = \"required\" at %s", where(attr.Range))
					}
					if missing == "tls block" {
						d.fail(n.DeclRange, nil, "Missing TLS files",
							"Node %q has no tls files, but its connection to %q requires TLS (%s): give the resource a tls block with ca, cert and key, or the node a tls block of its own.", n.Name, other(a, b, n).Name, why)
					} else {
						orPin := ""
						if missing == "ca" {
							orPin = fmt.Sprintf(", or give node %q a peer_fingerprint", peer.Name)
						}
						d.fail(n.DeclRange, nil, "Missing TLS files",
							"Node %q has no tls %s, but its connection to %q requires TLS (%s): set %s in the resource's tls block or in the node's%s.", n.Name, missing, peer.Name, why, missing, orPin)
					}
				}
			}
			if lk.Net.TLS == TLSOff && lk.Net.SharedSecret == "" && !lk.Net.Insecure {
				d.fail(at, nil, "Unauthenticated connection",
					"The connection between %q and %q has neither TLS nor a shared_secret: anyone who reaches a node's port could pose as the other node, write into a secondary or receive the whole disk. Give the resource a tls block (georepl tls init makes the files), or a shared_secret in its net block; or, on a network you trust entirely, write insecure = true in the net block to accept this.",
					a.Name, b.Name)
			}
		}
	}
}

// tlsAtOf is the tls attribute that gave the connection conn (nil: the
// resource's default) its mode, or nil.
func tlsAtOf(tlsAt map[*Net]*hcl.Attribute, r *Resource, conn *Connection) *hcl.Attribute {
	if conn != nil {
		if attr := tlsAt[&conn.Link.Net]; attr != nil {
			return attr
		}
	}
	return tlsAt[&r.Net]
}

// other is the node of a and b that is not n.
func other(a, b, n *Node) *Node {
	if n == a {
		return b
	}
	return a
}

// exportSecurity decodes a node's export_tls block (nil if none) and
// export_insecure, and refuses an export that serves the device in the
// clear beyond this host: a tcp export on an address other than loopback
// without TLS, unless export_insecure = true says so. deviceBad says the
// device attribute was diagnosed already.
func (d *decoder) exportSecurity(n *Node, attrs hcl.Attributes, block *hcl.Block, deviceBad bool) {
	export := attrs["export"]
	insecureAttr := attrs["export_insecure"]
	if insecureAttr != nil {
		if v, ok := d.value(insecureAttr, cty.Bool); ok {
			n.ExportInsecure = v.True()
		}
	}
	if block != nil {
		n.ExportTLS = &TLSFiles{}
		d.tls(block, n.ExportTLS)
		switch missing := n.ExportTLS.missing(); {
		case export == nil:
			d.fail(block.DefRange, nil, "Export TLS without export",
				"export_tls needs an export in the same node block (export = \"tcp:HOST:PORT\"): it is the TLS set-up of the node's NBD export.")
		case missing != "":
			d.fail(block.DefRange, nil, "Missing export TLS file",
				"export_tls has no %s: it needs ca (the authority that signs the clients' certificates), cert and key (the export's own certificate and key).", missing)
		}
		if dev := attrs["device"]; dev != nil && !deviceBad && n.Device != "" && n.Device != "ublk" && !strings.HasPrefix(n.Device, "/dev/ublkb") {
			d.failAttr(dev, "Device without TLS",
				"device = %q attaches the kernel's nbd driver through the export, and it cannot speak TLS, which export_tls requires of every client: use device = \"ublk\" (served by the daemon itself, not through the export), or remove export_tls and keep the export on a unix socket or a loopback address.", n.Device)
		}
		if n.ExportInsecure {
			d.failAttr(insecureAttr, "Contradictory export settings",
				"export_insecure = true accepts an export without TLS, but this node has an export_tls block at %s: remove one of them.", where(block.DefRange))
		}
		return
	}
	if export == nil || n.Export == "" || n.ExportInsecure {
		return
	}
	if hostPort, ok := strings.CutPrefix(n.Export, "tcp:"); ok && !loopbackHost(hostPort) {
		d.failAttr(export, "Unprotected export",
			"export = %q serves the device in the clear to anyone who reaches this address: they may read and overwrite all of it. Give the node an export_tls block (TLS with client certificates), keep the export on a unix socket or a loopback address, or write export_insecure = true in the node block to accept this on a network you trust entirely.", n.Export)
	}
}

// loopbackHost reports whether HOST:PORT names a loopback address: an IP
// address of the loopback range, or "localhost". Any other name may
// resolve to anything.
func loopbackHost(hostPort string) bool {
	host, _, err := net.SplitHostPort(hostPort)
	if err != nil {
		return false
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

// peerFingerprint decodes a node's peer_fingerprint: "sha256:" and 32
// bytes in hexadecimal, with or without colons between them, in either
// case (openssl prints "AB:CD:...").
func (d *decoder) peerFingerprint(n *Node, attr *hcl.Attribute) {
	s, ok := d.str(attr)
	if !ok {
		return
	}
	sum, err := parseFingerprint(s)
	if err != nil {
		d.failAttr(attr, "Invalid peer_fingerprint",
			"peer_fingerprint = %q must be \"sha256:\" followed by 32 bytes in hexadecimal (colons between them allowed), the SHA-256 sum of the node's certificate or of its public key: %v.", s, err)
		return
	}
	n.PeerFingerprint, n.PeerFingerprintAt = sum, attr.Range
}

func parseFingerprint(s string) (*[sha256.Size]byte, error) {
	prefix, digits, ok := strings.Cut(s, ":")
	if !ok || !strings.EqualFold(prefix, "sha256") {
		return nil, fmt.Errorf("it does not start with \"sha256:\"")
	}
	sum, err := hex.DecodeString(strings.ReplaceAll(digits, ":", ""))
	if err != nil {
		return nil, err
	}
	if len(sum) != sha256.Size {
		return nil, fmt.Errorf("it has %d bytes", len(sum))
	}
	return (*[sha256.Size]byte)(sum), nil
}
