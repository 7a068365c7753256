package node

import (
	"fmt"
	"io"
	"strings"
	"time"
)

// WriteStatus prints statuses for people.
func WriteStatus(w io.Writer, sts []*ResourceStatus) {
	for _, st := range sts {
		if !st.Up {
			fmt.Fprintf(w, "%s node:%s (id %d) down\n", st.Name, st.Node, st.NodeID)
			if st.Error != "" {
				fmt.Fprintf(w, "  error: %s\n", st.Error)
			}
			continue
		}
		fmt.Fprintf(w, "%s node:%s role:%s disk:%s size:%s", st.Name, st.Node, st.Role, st.Disk, HumanBytes(st.Size))
		if st.Export != "" && st.Role == "Primary" {
			fmt.Fprintf(w, " export:%s", st.Export)
		}
		if st.Device != "" {
			fmt.Fprintf(w, " device:%s", st.Device)
		}
		if q := st.Quorum; q != nil {
			state := "yes"
			if !q.OK {
				state = "NO, " + q.Policy
			}
			fmt.Fprintf(w, " quorum:%d/%d (%s)", q.Have, q.Need, state)
		}
		fmt.Fprintln(w)
		if f := st.Failover; f != nil {
			holder := "no Primary promoted by the log yet"
			if f.Term > 0 {
				holder = fmt.Sprintf("term %d held by %s", f.Term, f.Holder)
			}
			leader := f.Leader
			if leader == "" {
				leader = "none (no majority of voters reachable?)"
			}
			fmt.Fprintf(w, "  failover: %s, leader %s", holder, leader)
			if f.WritesHeld {
				fmt.Fprint(w, ", WRITES HELD (no failover lease: the log has not vouched for this Primary recently)")
			}
			fmt.Fprintln(w)
			if f.ReportError != "" {
				fmt.Fprintf(w, "      last report not committed: %s\n", f.ReportError)
			}
			if f.Verdict != "" {
				fmt.Fprintf(w, "      leader's decision: %s\n", f.Verdict)
			}
		}
		if st.TLSExpiresSoon {
			fmt.Fprintf(w, "  WARNING: this node's TLS certificate expires on %s: renew it and send the daemon SIGHUP\n", st.TLSValidUntil.Format(time.RFC3339))
		}
		if e := st.ExportTLS; e != nil {
			fmt.Fprintf(w, "  export %s tls:%s", st.Export, e.Mode)
			if e.Mode == "required" && e.ValidUntil != nil {
				fmt.Fprintf(w, " certificate:%q names:%s fingerprint:%s valid-until:%s", e.Subject, strings.Join(e.Names, ","), e.Fingerprint, e.ValidUntil.Format(time.RFC3339))
			}
			fmt.Fprintln(w)
			if e.ExpiresSoon {
				fmt.Fprintf(w, "  WARNING: the export's TLS certificate expires on %s: renew it and send the daemon SIGHUP\n", e.ValidUntil.Format(time.RFC3339))
			}
		}
		if st.DiskError != "" {
			fmt.Fprintf(w, "  disk detached: %s (reads and writes go to the peers in sync; see the admin guide, \"Failures\")\n", st.DiskError)
		}
		if u := st.ConsistentResync; u != nil && u.State != "idle" {
			fmt.Fprintf(w, "  consistent resync: %s, %d blocks saved, %s of %s used (%s)\n", u.State, u.SavedBlocks,
				HumanBytes(uint64(u.UsedBytes)), HumanBytes(uint64(u.CapacityBytes)), u.Path)
			if u.State == "exhausted" {
				fmt.Fprintln(w, "      WARNING: space exhausted: this node is Inconsistent until the resync completes")
			}
		}
		for _, p := range st.Peers {
			fmt.Fprintf(w, "  %s (id %d) connection:%s replication:%s role:%s disk:%s\n", p.Name, p.ID, p.Conn, p.Repl, p.Role, p.Disk)
			transport := p.Transport
			if p.TransportState != "" {
				transport += "(" + p.TransportState + ")"
			}
			fmt.Fprintf(w, "      protocol:%s transport:%s tls:%s auth:%s compression:%s sent:%s received:%s out-of-sync:%s\n",
				p.Protocol, transport, p.TLS, p.Auth, p.Compression, HumanBytes(p.BytesSent), HumanBytes(p.BytesRecv), HumanBytes(p.OutOfSync))
			if c := p.TLSPeer; c != nil {
				fmt.Fprintf(w, "      tls peer: node %s, certificate %s, valid until %s, keys renewed %d times\n", c.Node, c.Fingerprint, c.ValidUntil.Format(time.RFC3339), p.TLSRekeys)
			}
			if p.TransportError != "" {
				fmt.Fprintf(w, "      transport %s last error: %s\n", p.Transport, p.TransportError)
			}
			for i, path := range p.Paths {
				fmt.Fprintf(w, "      path %d %s - %s: %s", i, path.Local, path.Remote, path.State)
				if path.Error != "" {
					fmt.Fprintf(w, " (%s)", path.Error)
				}
				fmt.Fprintln(w)
			}
			if p.RPO != nil && (p.Protocol == "A" || p.RPO.Bytes > 0 || p.RPO.AgeSeconds > 0) {
				warn := ""
				switch {
				case p.RPO.Exceeded:
					warn = fmt.Sprintf(" EXCEEDS rpo_warning %s", rpoAge(p.RPO.WarningSeconds))
				case p.RPO.WarningSeconds > 0:
					warn = fmt.Sprintf(" (rpo_warning %s)", rpoAge(p.RPO.WarningSeconds))
				}
				fmt.Fprintf(w, "      rpo: %s, %s not on the peer%s\n", rpoAge(p.RPO.AgeSeconds), HumanBytes(p.RPO.Bytes), warn)
			}
			if p.Resync != nil {
				fmt.Fprintf(w, "      resync: %.1f%% (%s of %s, same:%s) rate:%s/s eta:%s\n", p.Resync.Percent,
					HumanBytes(p.Resync.DoneBytes), HumanBytes(p.Resync.TotalBytes), HumanBytes(p.Resync.SameBytes),
					HumanBytes(uint64(p.Resync.Rate)), eta(p.Resync.ETASeconds))
				fmt.Fprintf(w, "      resync reason: %s\n", p.Resync.Reason)
				if p.Repl == "SyncSource" {
					limit := "none"
					if p.Resync.Limit > 0 {
						limit = HumanBytes(uint64(p.Resync.Limit)) + "/s"
					}
					fmt.Fprintf(w, "      link: app:%s/s resync:%s/s app-share:%.0f%% capacity:%s/s limit:%s\n",
						HumanBytes(uint64(p.Resync.AppRate)), HumanBytes(uint64(p.Resync.ResyncRate)), 100*p.Resync.AppShare,
						HumanBytes(uint64(p.Resync.LinkCapacity)), limit)
				}
			} else if p.LastResync != nil {
				same := ""
				if p.SameBytes > 0 {
					same = fmt.Sprintf(" (same:%s found identical by checksum, not sent)", HumanBytes(p.SameBytes))
				}
				fmt.Fprintf(w, "      last resync: %s moved%s; %s\n", HumanBytes(p.LastResync.Bytes), same, p.LastResync.Reason)
			} else if p.SameBytes > 0 {
				fmt.Fprintf(w, "      last resync: same:%s (found identical by checksum, not sent)\n", HumanBytes(p.SameBytes))
			}
			if p.ResyncPaused {
				fmt.Fprintf(w, "      resync paused (georepl resume-sync %s %s)\n", st.Name, p.Name)
			}
			if p.Verify != nil {
				fmt.Fprintf(w, "      verify: %s\n", p.Verify.Summary())
			}
			if p.LastError != "" {
				fmt.Fprintf(w, "      last error: %s\n", p.LastError)
			}
		}
	}
}

// WriteProc prints statuses in the layout of DRBD 8.4's /proc/drbd so that
// existing monitoring scripts keep working: one numbered stanza per
// (resource, peer) pair, counters in KiB.
func WriteProc(w io.Writer, sts []*ResourceStatus) {
	fmt.Fprintln(w, "version: 8.4.11 (api:1/proto:86-101) georepl")
	minor := 0
	for _, st := range sts {
		if !st.Up {
			fmt.Fprintf(w, "%2d: cs:Unconfigured\n", minor)
			minor++
			continue
		}
		for _, p := range st.Peers {
			cs := p.Conn
			switch {
			case p.Conn == "Connected" && p.Repl != "Established":
				cs = p.Repl
			case p.Conn == "Connected" && p.Verify != nil && p.Verify.Running:
				cs = "VerifyS" // DRBD's name for the node that runs a verify
			case p.Conn == "Connecting":
				cs = "WFConnection"
			}
			ds := st.Disk + "/" + p.Disk
			if p.Disk == "DUnknown" {
				ds = st.Disk + "/DUnknown"
			}
			flags := "r-----"
			if p.ResyncPaused {
				flags = "r--u--" // DRBD's user-paused resync flag
				if cs == "SyncSource" {
					cs = "PausedSyncS"
				}
			}
			fmt.Fprintf(w, "%2d: cs:%s ro:%s/%s ds:%s %s %s\n", minor, cs, st.Role, p.Role, ds, p.Protocol, flags)
			fmt.Fprintf(w, "    ns:%d nr:%d dw:%d dr:%d al:%d bm:0 lo:0 pe:%d ua:0 ap:%d ep:1 wo:f oos:%d\n",
				p.BytesSent/1024, p.BytesRecv/1024, st.DiskWritten/1024, st.DiskRead/1024, st.ALWrites,
				p.Unacked/1024, st.Pending, p.OutOfSync/1024)
			if p.RPO != nil {
				fmt.Fprintf(w, "\trpo: %.3f s, %d K\n", p.RPO.AgeSeconds, p.RPO.Bytes/1024)
			}
			if p.Resync != nil {
				const width = 20
				filled := min(int(p.Resync.Percent*width/100), width)
				bar := strings.Repeat("=", filled) + ">" + strings.Repeat(".", width-filled)
				fmt.Fprintf(w, "\t[%s] sync'ed: %.1f%% (%d/%d)K\n", bar, p.Resync.Percent,
					(p.Resync.TotalBytes-p.Resync.DoneBytes)/1024, p.Resync.TotalBytes/1024)
				fmt.Fprintf(w, "\tfinish: %s speed: %d (%d) K/sec\n", eta(p.Resync.ETASeconds), int64(p.Resync.Rate/1024), int64(p.Resync.Rate/1024))
			}
			minor++
		}
	}
}

// rpoAge renders an RPO age for people: "0s", "1.2s", "2m3s".
func rpoAge(sec float64) string {
	d := time.Duration(sec * float64(time.Second))
	if d < time.Minute {
		return d.Round(100 * time.Millisecond).String()
	}
	return d.Round(time.Second).String()
}

func eta(sec float64) string {
	if sec <= 0 {
		return "-"
	}
	d := time.Duration(sec * float64(time.Second)).Round(time.Second)
	return fmt.Sprintf("%d:%02d:%02d", int(d.Hours()), int(d.Minutes())%60, int(d.Seconds())%60)
}

// HumanBytes renders a byte count rounded, for people: "1.5GiB".
func HumanBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%dB", n)
	}
	v, suffix := float64(n), ""
	for _, s := range []string{"KiB", "MiB", "GiB", "TiB", "PiB"} {
		v /= unit
		suffix = s
		if v < unit {
			break
		}
	}
	return fmt.Sprintf("%.1f%s", v, suffix)
}
