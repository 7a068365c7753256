package node

import (
	"fmt"
	"strings"
	"time"

	"github.com/georepl/georepl/cmd/georepl/internal/storage"
	"github.com/georepl/georepl/configs"
	"github.com/georepl/georepl/core"
)

// ResourceStatus is what `georepl status` shows for one resource; the JSON
// form is the same structure.
type ResourceStatus struct {
	Name   string `json:"name"`
	Node   string `json:"node"`
	NodeID int    `json:"node_id"`
	Up     bool   `json:"up"`
	Role   string `json:"role"`
	Disk   string `json:"disk"`
	Size   uint64 `json:"size_bytes"`
	Export string `json:"export,omitempty"`
	// Device is the kernel block device attached while Primary.
	Device  string `json:"device,omitempty"`
	Current string `json:"current_uuid,omitempty"`
	// Application requests submitted and not yet completed.
	Pending     int          `json:"app_pending"`
	Epoch       uint64       `json:"epoch"`
	DiskRead    uint64       `json:"disk_read_bytes"`
	DiskWritten uint64       `json:"disk_written_bytes"`
	Peers       []PeerStatus `json:"peers"`

	// ALExtents is the number of active activity-log extents; ALWrites
	// counts the activity-log transactions written since up.
	ALExtents int    `json:"al_extents"`
	ALWrites  uint64 `json:"al_writes"`
	// ConsistentResync is the resync undo log's state (nil without one).
	ConsistentResync *storage.UndoStatus `json:"consistent_resync,omitempty"`
	// Error says why the resource went down by itself.
	Error string `json:"error,omitempty"`
	// DiskError says why the disk was detached (on_io_error = "detach"),
	// while the resource is up Diskless.
	DiskError string `json:"disk_error,omitempty"`
	// Quorum is set when the resource has a quorum.
	Quorum *Quorum `json:"quorum,omitempty"`
	// Failover is the failover log's view under automatic failover.
	Failover *FailoverStatus `json:"failover,omitempty"`
	// AppWriteLatency is the histogram of application writes from
	// submission to completion, LocalWriteLatency of the backing disk's
	// writes.
	AppWriteLatency   LatencySnapshot `json:"app_write_latency"`
	LocalWriteLatency LatencySnapshot `json:"local_write_latency"`
	// TLSValidUntil is when this node's TLS certificate for the resource
	// expires (nil without one); TLSExpiresSoon, that it does within 30
	// days.
	TLSValidUntil  *time.Time `json:"tls_valid_until,omitempty"`
	TLSExpiresSoon bool       `json:"tls_expires_soon,omitempty"`
	// ExportTLS is the export's TLS, for a node with an export.
	ExportTLS *ExportTLS `json:"export_tls,omitempty"`
}

// ExportTLS is the TLS of a node's NBD export.
type ExportTLS struct {
	// Mode is "required" (export_tls: every client must start TLS and
	// present a certificate of export_tls's ca) or "off" (a unix socket, a
	// loopback address, or export_insecure).
	Mode string `json:"mode"`
	// The export's certificate, when required: its subject, the host
	// names and addresses clients check (its subject alternative names),
	// its SHA-256 fingerprint, when it expires and whether within 30
	// days.
	Subject     string     `json:"subject,omitempty"`
	Names       []string   `json:"names,omitempty"`
	Fingerprint string     `json:"fingerprint,omitempty"`
	ValidUntil  *time.Time `json:"valid_until,omitempty"`
	ExpiresSoon bool       `json:"expires_soon,omitempty"`
}

// Quorum is a node's quorum: Have nodes reachable (itself and its
// connected peers), Need configured; OK also holds after a promotion
// forced without quorum, until quorum returns.
type Quorum struct {
	Have int  `json:"have"`
	Need int  `json:"need"`
	OK   bool `json:"ok"`
	// Policy is on_no_quorum: what the Primary does with writes without it.
	Policy string `json:"on_no_quorum"`
}

// PathStatus is one path of a connection with path blocks.
type PathStatus struct {
	Local  string `json:"local"`  // this node's address on the path
	Remote string `json:"remote"` // the peer's
	// State is "active" (the connection runs on it), "standby" (its last
	// probe succeeded), "failed" (its last use or probe failed: Error
	// says why) or "unknown" (not tried yet).
	State string `json:"state"`
	Error string `json:"error,omitempty"`
}

// PeerCertificate is the certificate a connected peer presented and this
// node verified: the node it names, its SHA-256 fingerprint (as
// peer_fingerprint takes it) and when it expires.
type PeerCertificate struct {
	Node        string    `json:"node"`
	Fingerprint string    `json:"fingerprint"`
	ValidUntil  time.Time `json:"valid_until"`
}

// PeerStatus is one peer's line of the status.
type PeerStatus struct {
	Name      string `json:"name"`
	ID        int    `json:"id"`
	Address   string `json:"address"`
	Conn      string `json:"connection"`
	Repl      string `json:"replication"`
	Role      string `json:"role"`
	Disk      string `json:"disk"`
	Protocol  string `json:"protocol"`
	Transport string `json:"transport"`
	// TransportState and TransportError are those of a transport that
	// reports its own state (a plugin: "running" or "restarting", and why
	// it last exited); empty for the built-ins.
	TransportState string `json:"transport_state,omitempty"`
	TransportError string `json:"transport_error,omitempty"`
	Compression    string `json:"compression"`
	// TLS is the connection's tls setting: "required" or "off".
	TLS string `json:"tls"`
	// TLSPeer is, while connected with TLS, the certificate the peer
	// proved it holds on the transport connection in use.
	TLSPeer *PeerCertificate `json:"tls_peer,omitempty"`
	// TLSRekeys counts the times the connections to the peer continued
	// on a new TLS session for new keys, since the daemon started.
	TLSRekeys uint64 `json:"tls_rekeys,omitempty"`
	// Auth says what authenticates the peer: "certificate",
	// "certificate+secret", "secret", or "none (insecure)" where the
	// configuration accepts a connection nothing authenticates.
	Auth      string  `json:"auth"`
	BytesSent uint64  `json:"bytes_sent"`
	BytesRecv uint64  `json:"bytes_received"`
	OutOfSync uint64  `json:"out_of_sync_bytes"`
	Unacked   uint64  `json:"unacked_bytes"`
	Resync    *Resync `json:"resync,omitempty"`
	// ResyncPaused: pause-sync holds the resync from this node to the peer.
	ResyncPaused bool `json:"resync_paused,omitempty"`
	// SameBytes counts, for the running or last resync with this peer,
	// the bytes a checksum comparison found identical (csums), which were
	// not sent.
	SameBytes uint64 `json:"resync_same_bytes"`
	// Verify is the running or last online verify with the peer.
	Verify *Verify `json:"verify,omitempty"`
	// LastResync is the last finished or interrupted resync with the
	// peer since up, while none runs.
	LastResync *LastResync `json:"last_resync,omitempty"`
	LastError  string      `json:"last_error,omitempty"`

	// RPO is what the peer would lack if this node were lost now; set on
	// a Primary only.
	RPO *RPO `json:"rpo,omitempty"`
	// The counters below run since the daemon started (LinkSent,
	// LinkRecv: every connection's bytes on the wire, after
	// compression) or since the resource came up (the rest: payload
	// bytes before compression, application writes, pull-ahead
	// episodes, split brains).
	LinkSent      uint64 `json:"link_sent_bytes_total"`
	LinkRecv      uint64 `json:"link_received_bytes_total"`
	DataSent      uint64 `json:"data_sent_bytes_total"`
	DataRecv      uint64 `json:"data_received_bytes_total"`
	WritesSent    uint64 `json:"writes_sent_total"`
	WritesRecv    uint64 `json:"writes_received_total"`
	AheadEpisodes uint64 `json:"pull_ahead_total"`
	SplitBrains   uint64 `json:"split_brains_total"`
	// Paths are the connection's path blocks, in their order; empty
	// without any (the nodes' own addresses are the only path).
	Paths []PathStatus `json:"paths,omitempty"`
	// MaxBuffer is the connection's max_buffer: Unacked may reach it.
	MaxBuffer uint64 `json:"max_buffer_bytes"`
	// AckLatency is the histogram of the time from handing a data frame
	// to the link to the peer's WriteAck.
	AckLatency LatencySnapshot `json:"write_ack_latency"`
}

// RPO is a peer's recovery point on a Primary: AgeSeconds is how long ago
// the oldest write this node completed and the peer lacks (sent and not
// acknowledged as written, or marked out of sync) was completed, Bytes
// the bytes sent and not acknowledged plus those marked. Exceeded is set
// while AgeSeconds is beyond WarningSeconds (net.rpo_warning, 0: none).
type RPO struct {
	AgeSeconds     float64 `json:"age_seconds"`
	Bytes          uint64  `json:"bytes"`
	WarningSeconds float64 `json:"warning_seconds,omitempty"`
	Exceeded       bool    `json:"exceeded,omitempty"`
}

// stateReporter is implemented by transports that have a state of their
// own: plugins (plugins/host), which run in a process that may exit and be
// restarted.
type stateReporter interface {
	TransportState() (state, lastErr string)
}

// LastResync is what the last resync with a peer moved, and why.
type LastResync struct {
	Reason string      `json:"reason"`
	Cause  ResyncCause `json:"cause"`
	// Bytes is what it moved: sent and acknowledged on the sync source,
	// received on the target.
	Bytes uint64 `json:"bytes"`
}

// ResyncCause is Reason's numbers (core.ResyncWhy).
type ResyncCause struct {
	Source       bool   `json:"source"`
	Full         string `json:"full,omitempty"`
	MarkedHere   uint64 `json:"marked_here_bytes"`
	MarkedByPeer uint64 `json:"marked_by_peer_bytes"`
	AfterCrash   int    `json:"after_crash_extents"`
	Ahead        bool   `json:"ahead,omitempty"`
	Invalidated  string `json:"invalidated,omitempty"`
	Detached     bool   `json:"detached,omitempty"`
}

// Resync is the progress of a running resync.
type Resync struct {
	Percent    float64 `json:"percent"`
	DoneBytes  uint64  `json:"done_bytes"`
	TotalBytes uint64  `json:"total_bytes"`
	// SameBytes are the bytes a checksum comparison found identical on
	// both nodes, so they were not sent (csums); included in DoneBytes on
	// the sync source.
	SameBytes  uint64  `json:"same_bytes"`
	Rate       float64 `json:"rate_bytes_per_second"`
	ETASeconds float64 `json:"eta_seconds"`
	// Reason says why the resync happened: "full: new peer: ...",
	// "bitmap: 64.0MiB marked here (after crash: activity log 16
	// extents)", "bitmap: 2.0MiB marked here (writes the peer missed
	// while disconnected)", ...
	Reason string      `json:"reason"`
	Cause  ResyncCause `json:"cause"`
	// The sync source's pacing (zero on the target): Limit is the rate
	// the resync may use now (resync_rate, or less while the application
	// writes: resync_min_app_share), 0 for none; AppRate and ResyncRate
	// are what the peer acknowledged per second over the last half
	// second, AppShare the application's part of their sum, and
	// LinkCapacity the highest sum seen on the connection.
	Limit        float64 `json:"limit_bytes_per_second"`
	AppRate      float64 `json:"app_rate_bytes_per_second"`
	ResyncRate   float64 `json:"resync_rate_bytes_per_second"`
	AppShare     float64 `json:"app_share"`
	LinkCapacity float64 `json:"link_capacity_bytes_per_second"`
}

func extentsText(n int) string {
	if n == 1 {
		return "1 extent"
	}
	return fmt.Sprintf("%d extents", n)
}

// resyncReason renders why a resync moves what it moves, from the
// engine's account of it.
func resyncReason(w core.ResyncWhy) string {
	switch {
	case w.Full != "":
		return "full: " + w.Full
	case w.Invalidated == "here":
		return "invalidate: this node's data was declared bad (georepl invalidate): every block"
	case w.Invalidated == "peer":
		return "invalidate: the peer's data was declared bad (georepl invalidate-remote): every block"
	case w.Detached && w.Source:
		return "bitmap: every block (the peer's disk was detached after an I/O error)"
	}
	var parts []string
	if w.MarkedHere > 0 {
		var cause string
		switch {
		case w.Ahead:
			cause = "writes the peer missed while congestion left it behind (pull-ahead)"
		case w.AfterCrash > 0 && w.Source:
			cause = fmt.Sprintf("after crash: activity log %s, and writes the peer missed while disconnected", extentsText(w.AfterCrash))
		case w.AfterCrash > 0:
			cause = "after crash: activity log " + extentsText(w.AfterCrash)
		case w.Source:
			cause = "writes the peer missed while disconnected"
		default:
			cause = "writes of a lost primary that not every node confirmed, or made here while disconnected"
		}
		parts = append(parts, fmt.Sprintf("%s marked here (%s)", HumanBytes(w.MarkedHere), cause))
	}
	if w.Source && w.MarkedByPeer > 0 {
		parts = append(parts, fmt.Sprintf("%s marked by the peer (its activity log after a crash, or writes it missed or got from a lost primary)", HumanBytes(w.MarkedByPeer)))
	}
	if !w.Source {
		parts = append(parts, "the source's own marks")
	}
	if len(parts) == 0 {
		return "bitmap: nothing marked"
	}
	return "bitmap: " + strings.Join(parts, "; ")
}

// publishStatus snapshots the engine's status for readers on other
// goroutines. Called on the loop goroutine (or while the resource is down).
func (r *resource) publishStatus() {
	st := &ResourceStatus{
		Name: r.cfg.Name, Node: r.self.Name, NodeID: r.self.ID,
		Export: r.self.Export, Role: "Unknown", Disk: "Diskless",
	}
	if r.failed != nil {
		st.Error = r.failed.Error()
	}
	st.Device = r.kernelDevicePath()
	if id := r.d.identity(r.cfg.Name); id != nil {
		until := id.Leaf.NotAfter.UTC()
		st.TLSValidUntil, st.TLSExpiresSoon = &until, id.ExpiresWithin(expiryWarning, time.Now())
	}
	if r.self.Export != "" {
		st.ExportTLS = r.d.exportTLSStatus(r.cfg.Name, r.self.ExportTLS != nil)
	}
	r.mu.Lock()
	up := r.up
	r.mu.Unlock()
	var es core.Status
	if up || r.engine != nil && r.loopDone != nil && !isClosed(r.loopDone) {
		es = r.engine.Status()
		st.Up = up
		st.Role, st.Disk = es.Role.String(), es.Disk.String()
		st.Size = r.st.size.Load()
		st.Current = fmt.Sprintf("%016X", es.Current)
		st.Pending, st.Epoch = es.Pending, es.Epoch
		if es.QuorumNeed > 0 {
			st.Quorum = &Quorum{Have: es.QuorumHave, Need: es.QuorumNeed, OK: es.Quorate, Policy: r.cfg.OnNoQuorum.String()}
		}
		st.ALExtents, st.ALWrites = r.st.al.stats()
		if st.Failover = failoverStatus(r.failover.Load()); st.Failover != nil {
			st.Failover.WritesHeld = es.Role == core.Primary && !es.Quorate
		}
		if es.Disk == core.Diskless {
			st.DiskError = r.detachedWhy
		}
		if r.st.Undo != nil {
			st.ConsistentResync = r.st.Undo.Status()
		}
	}
	if !up {
		st.Role, st.Disk = "Secondary", "Diskless"
	}
	st.DiskRead, st.DiskWritten = r.diskRead.Load(), r.diskWritten.Load()
	st.AppWriteLatency, st.LocalWriteLatency = r.appWriteLatency.snapshot(), r.localWriteLatency.snapshot()
	byID := map[core.NodeID]core.PeerStatus{}
	for _, ps := range es.Peers {
		byID[ps.ID] = ps
	}
	now := time.Now()
	for _, p := range sortedPeers(r.peers) {
		r.mu.Lock()
		conn, lastErr, wanted := p.conn, p.lastErr, p.wanted
		sentBefore, recvBefore, rekeys := p.sentBefore, p.recvBefore, p.tlsRekeys
		var paths []PathStatus
		if p.multi {
			for i, path := range p.paths {
				ps := PathStatus{Local: path[0], Remote: path[1], State: p.pathStates[i].state, Error: p.pathStates[i].err}
				if ps.State == "" {
					ps.State = "unknown"
				}
				paths = append(paths, ps)
			}
		}
		r.mu.Unlock()
		ps := PeerStatus{
			Name: p.node.Name, ID: p.node.ID, Address: p.node.Address,
			Protocol: p.link().Protocol.String(), Transport: p.link().Net.Transport, Compression: p.link().Net.Compression.String(),
			Conn: core.StandAlone.String(), Repl: core.ReplOff.String(), Role: core.RoleUnknown.String(), Disk: core.DUnknown.String(),
			TLS: p.link().Net.TLS.String(), Auth: authOf(p.link().Net), TLSRekeys: rekeys,
			LastError: lastErr,
			LinkSent:  sentBefore, LinkRecv: recvBefore,
			MaxBuffer: uint64(p.link().Net.MaxBuffer), AckLatency: p.ackLatency.snapshot(),
			Paths: paths,
		}
		if conn != nil && p.link().Net.TLS == configs.TLSRequired {
			ps.TLSPeer = peerCertificate(conn.current().conn)
		}
		if tr, err := r.d.opts.transport(p.link().Net.Transport); err == nil {
			if sr, ok := tr.(stateReporter); ok {
				ps.TransportState, ps.TransportError = sr.TransportState()
			}
		}
		if up && wanted {
			ps.Conn = core.Connecting.String()
		}
		if eps, ok := byID[p.id]; ok && up {
			ps.Conn, ps.Repl = eps.Conn.String(), eps.Repl.String()
			ps.Role, ps.Disk = eps.Role.String(), eps.Disk.String()
			ps.OutOfSync, ps.Unacked, ps.SameBytes = eps.OutOfSync, eps.Unacked, eps.ResyncSame
			ps.ResyncPaused = eps.ResyncPaused
			ps.Verify = verifyStatus(eps.Verify)
			ps.DataSent, ps.DataRecv = eps.DataSent, eps.DataReceived
			ps.WritesSent, ps.WritesRecv = eps.WritesSent, eps.WritesReceived
			ps.AheadEpisodes, ps.SplitBrains = eps.AheadEpisodes, eps.SplitBrains
			if es.Role == core.Primary {
				ps.RPO = &RPO{AgeSeconds: eps.RPOAge.Seconds(), Bytes: eps.RPOBytes, WarningSeconds: p.link().Net.RPOWarning.Seconds()}
			}
			r.checkRPO(p, ps.RPO, eps.RPOAge)
			switch {
			case eps.Conn == core.StandAlone && wanted:
				ps.Conn = core.Connecting.String()
			case eps.Conn == core.Connecting && !wanted:
				// Disconnected by the administrator before any
				// connection: the engine never heard of it.
				ps.Conn = core.StandAlone.String()
			}
			if eps.Conn != core.Connected && !wanted {
				// Disconnected by the administrator before it ever
				// connected: the engine still says Connecting.
				ps.Conn = core.StandAlone.String()
			}
			if eps.Repl == core.SyncSource || eps.Repl == core.SyncTarget {
				m := r.progress[p.id]
				if m == nil {
					m = &rateMeter{}
					r.progress[p.id] = m
				}
				rate := m.observe(now, eps.ResyncDone)
				rs := &Resync{DoneBytes: eps.ResyncDone, TotalBytes: eps.ResyncTotal, SameBytes: eps.ResyncSame, Rate: rate}
				if eps.ResyncTotal > 0 {
					rs.Percent = 100 * float64(eps.ResyncDone) / float64(eps.ResyncTotal)
				}
				if rate > 0 && eps.ResyncTotal > eps.ResyncDone {
					rs.ETASeconds = float64(eps.ResyncTotal-eps.ResyncDone) / rate
				}
				rs.Reason, rs.Cause = resyncReason(eps.ResyncWhy), ResyncCause(eps.ResyncWhy)
				rs.Limit, rs.AppRate, rs.ResyncRate, rs.LinkCapacity = eps.ResyncLimit, eps.AppRate, eps.ResyncRate, eps.LinkCapacity
				if sum := eps.AppRate + eps.ResyncRate; sum > 0 {
					rs.AppShare = eps.AppRate / sum
				}
				ps.Resync = rs
			} else {
				if r.progress != nil {
					delete(r.progress, p.id)
				}
				if eps.ResyncWhy != (core.ResyncWhy{}) || eps.ResyncDone > 0 {
					ps.LastResync = &LastResync{Reason: resyncReason(eps.ResyncWhy), Cause: ResyncCause(eps.ResyncWhy), Bytes: eps.ResyncDone}
				}
			}
		}
		if conn != nil {
			ps.BytesSent, ps.BytesRecv = conn.stats()
			ps.LinkSent += ps.BytesSent
			ps.LinkRecv += ps.BytesRecv
		}
		st.Peers = append(st.Peers, ps)
	}
	r.status.Store(st)
}

// checkRPO raises rpo-exceeded when the peer's RPO (nil: none, not
// Primary) crosses its net.rpo_warning, and rpo-ok when it is back within.
// It runs with each status snapshot (every 250 ms), never on the write
// path.
func (r *resource) checkRPO(p *peer, rpo *RPO, age time.Duration) {
	limit := p.link().Net.RPOWarning
	exceeded := limit > 0 && rpo != nil && age > limit
	if rpo != nil {
		rpo.Exceeded = exceeded
	}
	if exceeded == p.rpoExceeded {
		return
	}
	p.rpoExceeded = exceeded
	ev := Event{Time: time.Now().UTC(), Resource: r.cfg.Name, Node: r.self.Name, Peer: p.node.Name, What: "rpo-exceeded"}
	if exceeded {
		ev.Detail = fmt.Sprintf("RPO %s (%s not on the peer) beyond rpo_warning %s", age.Round(time.Millisecond), HumanBytes(rpo.Bytes), limit)
	} else {
		ev.What = "rpo-ok"
		if rpo != nil {
			ev.Detail = fmt.Sprintf("RPO %s, within rpo_warning %s", age.Round(time.Millisecond), limit)
		} else {
			ev.Detail = "no longer Primary"
		}
	}
	r.log.Warn("rpo", "what", ev.What, "peer", ev.Peer, "detail", ev.Detail)
	r.d.events.publish(ev)
	if exceeded {
		r.runRPOHandler(ev, rpo)
	}
}

func isClosed(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// namesFor returns name, once checked that it is a resource here, or
// every resource's name when it is empty.
func (d *Daemon) namesFor(name string) ([]string, error) {
	if name == "" {
		return d.resourceNames(), nil
	}
	if _, err := d.resource(name); err != nil {
		return nil, err
	}
	return []string{name}, nil
}

// Status returns the statuses of the named resource, or of all.
func (d *Daemon) Status(name string) ([]*ResourceStatus, error) {
	names, err := d.namesFor(name)
	if err != nil {
		return nil, err
	}
	out := make([]*ResourceStatus, 0, len(names))
	for _, n := range names {
		if r := d.lookup(n); r != nil { // not removed by Adjust meanwhile
			out = append(out, r.status.Load())
		}
	}
	return out, nil
}
