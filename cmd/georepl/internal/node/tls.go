package node

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/georepl/georepl/configs"
	"github.com/georepl/georepl/transports"
	"github.com/georepl/georepl/transports/nodetls"
)

// loadIdentities loads node nodeName's TLS identity in every resource of
// cfg whose configuration gives it TLS files. An error names the file
// and the configuration line that set it.
func loadIdentities(cfg *configs.Config, nodeName string) (map[string]*nodetls.Identity, error) {
	ids := map[string]*nodetls.Identity{}
	for _, rc := range cfg.Resources {
		self, err := rc.Node(nodeName)
		if err != nil || self.TLS == nil {
			continue
		}
		f := self.TLS
		id, err := nodetls.Load(nodetls.Files{CA: f.CA, Cert: f.Cert, Key: f.Key})
		var fe *nodetls.FileError
		if errors.As(err, &fe) {
			return nil, fmt.Errorf("%s: resource %s: %w", f.Where(fe.Field), rc.Name, err)
		}
		if err != nil {
			return nil, fmt.Errorf("resource %s: %w", rc.Name, err)
		}
		if id.Node != nodeName {
			return nil, fmt.Errorf("%s: resource %s: tls cert %q names node %q, but this daemon is node %q: give each node its own certificate",
				f.Where("cert"), rc.Name, f.Cert, id.Node, nodeName)
		}
		ids[rc.Name] = id
	}
	return ids, nil
}

// loadExportIdentities loads the TLS set-up of node nodeName's export in
// every resource whose configuration gives the export an export_tls
// block. An error names the file and the configuration line that set it.
func loadExportIdentities(cfg *configs.Config, nodeName string) (map[string]*nodetls.ExportIdentity, error) {
	ids := map[string]*nodetls.ExportIdentity{}
	for _, rc := range cfg.Resources {
		self, err := rc.Node(nodeName)
		if err != nil || self.ExportTLS == nil {
			continue
		}
		f := self.ExportTLS
		id, err := nodetls.LoadExport(nodetls.Files{CA: f.CA, Cert: f.Cert, Key: f.Key})
		var fe *nodetls.FileError
		if errors.As(err, &fe) {
			return nil, fmt.Errorf("%s: resource %s: export_tls: %w", f.Where(fe.Field), rc.Name, err)
		}
		if err != nil {
			return nil, fmt.Errorf("resource %s: export_tls: %w", rc.Name, err)
		}
		ids[rc.Name] = id
	}
	return ids, nil
}

// exportTLS is the TLS configuration of resource's export: its current
// identity at each client's handshake, so that a reload changes the
// certificate of new clients only.
func (d *Daemon) exportTLS(resource string) *tls.Config {
	return &tls.Config{
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			d.idMu.RLock()
			id := d.exportIDs[resource]
			d.idMu.RUnlock()
			if id == nil {
				return nil, fmt.Errorf("resource %s has no export TLS files loaded", resource)
			}
			return id.ServerConfig(), nil
		},
	}
}

// listenerTLS is the TLS configuration of a listener of transport: for
// a dialer that names a resource (in its TLS server name) the resource's
// identity; nil when no resource of the daemon has TLS. A quic dialer that
// names no resource (its connection has tls = "off") gets the transport's
// self-signed certificate.
func (d *Daemon) listenerTLS(transport string) *tls.Config {
	if len(d.identityMap()) == 0 {
		return nil
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		GetConfigForClient: func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			if hello.ServerName == "" && transport != "tcp" {
				return nil, nil
			}
			id, ok := d.identityMap()[hello.ServerName]
			if !ok {
				return nil, fmt.Errorf("the dialer asks for TLS for resource %q, which has no tls block for node %s", hello.ServerName, d.nodeName)
			}
			return id.ServerConfig(nil), nil
		},
	}
}

func (d *Daemon) identityMap() map[string]*nodetls.Identity {
	d.idMu.RLock()
	defer d.idMu.RUnlock()
	return d.identities
}

// identity is this node's identity in resource, or nil.
func (d *Daemon) identity(resource string) *nodetls.Identity {
	return d.identityMap()[resource]
}

// expiryWarning is how long before its certificate expires a node warns.
const expiryWarning = 30 * 24 * time.Hour

// ReloadTLS reads this node's TLS files again, as the configuration
// names them: new connections use the new certificates, established ones
// keep theirs. If any file cannot be used, nothing changes and the error
// says which (as at start).
func (d *Daemon) ReloadTLS() error {
	d.idMu.RLock()
	cfg := d.cfg
	d.idMu.RUnlock()
	ids, err := loadIdentities(cfg, d.nodeName)
	if err != nil {
		return err
	}
	exportIDs, err := loadExportIdentities(cfg, d.nodeName)
	if err != nil {
		return err
	}
	d.idMu.Lock()
	d.identities, d.exportIDs = ids, exportIDs
	d.idMu.Unlock()
	for name, id := range ids {
		d.log.Info("TLS files reloaded", "resource", name, "valid_until", id.Leaf.NotAfter.UTC().Format(time.RFC3339))
		d.warnExpiry(name, "this node's TLS certificate", id.Leaf)
	}
	for name, id := range exportIDs {
		d.log.Info("export TLS files reloaded", "resource", name, "valid_until", id.Leaf.NotAfter.UTC().Format(time.RFC3339))
		d.warnExpiry(name, "the export's TLS certificate", id.Leaf)
	}
	return nil
}

// warnExpiry logs, and tells the events' subscribers, that cert (named
// what) expires within expiryWarning.
func (d *Daemon) warnExpiry(resource, what string, cert *x509.Certificate) {
	if !cert.NotAfter.Before(time.Now().Add(expiryWarning)) {
		return
	}
	msg := fmt.Sprintf("%s expires on %s: renew it and send the daemon SIGHUP", what, cert.NotAfter.UTC().Format(time.RFC3339))
	d.log.Warn(msg, "resource", resource)
	d.events.publish(Event{Time: time.Now().UTC(), Resource: resource, Node: d.nodeName, What: "tls-expiry", Detail: msg})
}

// setupFailed logs a listener's refusal of a dialer during TLS set-up.
func (d *Daemon) setupFailed(transport string) func(net.Addr, error) {
	return func(remote net.Addr, err error) {
		d.preAuthLog.Warn("refusing connection: TLS set-up failed", "transport", transport, "remote", remote, "err", err)
	}
}

// dialTLS is the TLS configuration that dials p: nil when the connection
// has tls = "off".
func (r *resource) dialTLS(p *peer) *tls.Config {
	if p.link().Net.TLS != configs.TLSRequired {
		return nil
	}
	return r.d.identity(r.cfg.Name).ClientConfig(r.cfg.Name, nil)
}

// checkPeerIdentity checks, before anything else is said on conn, that
// the peer is the node p the configuration expects there: with tls =
// "required", its certificate verifies against the CA and names p's node;
// with tls = "off", it presented no certificate (a peer whose
// configuration requires TLS there would otherwise be refused later, less
// clearly). dialer says we dialled p.
func (r *resource) checkPeerIdentity(conn transports.Conn, p *peer, dialer bool) error {
	var certs []*x509.Certificate
	if pc, ok := conn.(transports.PeerCertificates); ok {
		certs = pc.PeerCertificates()
	}
	required := p.link().Net.TLS == configs.TLSRequired
	switch {
	case !required && dialer:
		// A quic listener always presents a (self-signed) certificate.
		return nil
	case !required && len(certs) > 0:
		return fmt.Errorf("resource %s: node %s connected with TLS, but this node's configuration has tls = \"off\" for their connection: the two configurations differ", r.cfg.Name, p.node.Name)
	case !required:
		return nil
	case len(certs) == 0:
		return fmt.Errorf("resource %s: the connection between %s and %s requires TLS, but node %s connected without a certificate (its configuration has tls = \"off\" there, or it is not %s)", r.cfg.Name, r.self.Name, p.node.Name, p.node.Name, p.node.Name)
	}
	var pin []byte
	pinned := p.pinned()
	if fp := pinned.PeerFingerprint; fp != nil {
		pin = fp[:]
	}
	if err := r.d.identity(r.cfg.Name).VerifyPeer(certs, p.node.Name, dialer, pin); err != nil {
		if errors.Is(err, nodetls.ErrFingerprint) {
			err = fmt.Errorf("%w (node %s's peer_fingerprint is at %s)", err, p.node.Name, fmt.Sprintf("%s:%d", pinned.PeerFingerprintAt.Filename, pinned.PeerFingerprintAt.Start.Line))
		}
		return fmt.Errorf("resource %s: refusing the peer that claims to be node %s: %w", r.cfg.Name, p.node.Name, err)
	}
	return nil
}

// exportTLSStatus is the status of resource's export TLS: required says
// the configuration has export_tls.
func (d *Daemon) exportTLSStatus(resource string, required bool) *ExportTLS {
	if !required {
		return &ExportTLS{Mode: "off"}
	}
	st := &ExportTLS{Mode: "required"}
	d.idMu.RLock()
	id := d.exportIDs[resource]
	d.idMu.RUnlock()
	if id == nil {
		return st
	}
	leaf := id.Leaf
	st.Subject = leaf.Subject.String()
	st.Names = append(st.Names, leaf.DNSNames...)
	for _, ip := range leaf.IPAddresses {
		st.Names = append(st.Names, ip.String())
	}
	sum := sha256.Sum256(leaf.Raw)
	st.Fingerprint = nodetls.FormatFingerprint(sum[:])
	until := leaf.NotAfter.UTC()
	st.ValidUntil, st.ExpiresSoon = &until, time.Until(until) < expiryWarning
	return st
}

// peerCertificate is the certificate the peer presented on conn, or nil
// without one.
func peerCertificate(conn transports.Conn) *PeerCertificate {
	pc, ok := conn.(transports.PeerCertificates)
	if !ok {
		return nil
	}
	certs := pc.PeerCertificates()
	if len(certs) == 0 {
		return nil
	}
	name, err := nodetls.NodeName(certs[0])
	if err != nil {
		name = "(" + err.Error() + ")"
	}
	sum := sha256.Sum256(certs[0].Raw)
	return &PeerCertificate{Node: name, Fingerprint: nodetls.FormatFingerprint(sum[:]), ValidUntil: certs[0].NotAfter.UTC()}
}

// authOf says what authenticates the peer of a connection with settings
// n, for status.
func authOf(n configs.Net) string {
	switch {
	case n.TLS == configs.TLSRequired && n.SharedSecret != "":
		return "certificate+secret"
	case n.TLS == configs.TLSRequired:
		return "certificate"
	case n.SharedSecret != "":
		return "secret"
	}
	return "none (insecure)"
}
