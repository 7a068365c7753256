package node

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/georepl/georepl/core"
)

// metricsCollector exposes the daemon's status snapshots (published every
// 250 ms by each resource, see publishStatus) as Prometheus metrics. It
// reads them at scrape time: no engine lock is taken and the write path
// only keeps the atomic counters and histograms the snapshots copy.
type metricsCollector struct{ d *Daemon }

// A metric's labels: every series carries the resource and this node's
// name; per-peer series the peer's too.
var (
	resourceLabels = []string{"resource", "node"}
	peerLabels     = []string{"resource", "node", "peer"}
)

// metricDef is one metric the collector exposes: its Desc, and what the
// dashboard test checks queries against.
type metricDef struct {
	desc      *prometheus.Desc
	name      string
	labels    []string
	histogram bool
}

// metricDefs lists every metric, in declaration order (desc appends).
var metricDefs []metricDef

func desc(name, help string, labels []string, extra ...string) *prometheus.Desc {
	return define(name, help, false, append(append([]string(nil), labels...), extra...))
}

func histogramDesc(name, help string, labels []string, extra ...string) *prometheus.Desc {
	return define(name, help, true, append(append([]string(nil), labels...), extra...))
}

func define(name, help string, histogram bool, labels []string) *prometheus.Desc {
	d := prometheus.NewDesc("georepl_"+name, help, labels, nil)
	metricDefs = append(metricDefs, metricDef{desc: d, name: "georepl_" + name, labels: labels, histogram: histogram})
	return d
}

var (
	mResourceUp       = desc("resource_up", "1 while the resource is up on this node.", resourceLabels)
	mRole             = desc("resource_role", "This node's role: 1 for the current one.", resourceLabels, "role")
	mDiskState        = desc("resource_disk_state", "This node's disk state: 1 for the current one.", resourceLabels, "state")
	mSize             = desc("resource_size_bytes", "Size of the replicated device.", resourceLabels)
	mPending          = desc("app_pending_requests", "Application requests submitted and not completed (queue depth).", resourceLabels)
	mDiskRead         = desc("disk_read_bytes_total", "Bytes read from the backing disk.", resourceLabels)
	mDiskWritten      = desc("disk_written_bytes_total", "Bytes written to the backing disk.", resourceLabels)
	mALExtents        = desc("activity_log_extents_active", "Active activity-log extents.", resourceLabels)
	mALWrites         = desc("activity_log_transactions_total", "Activity-log transactions written since up.", resourceLabels)
	mQuorumHave       = desc("quorum_nodes_reachable", "Nodes this node reaches, itself included (with quorum configured).", resourceLabels)
	mQuorumNeed       = desc("quorum_nodes_needed", "The configured quorum (0: none).", resourceLabels)
	mQuorumOK         = desc("quorum_ok", "1 while this node has quorum (or no quorum is configured).", resourceLabels)
	mAppLatency       = histogramDesc("app_write_latency_seconds", "Application writes, from submission to completion.", resourceLabels)
	mLocalLatency     = histogramDesc("local_write_latency_seconds", "Writes of the backing disk.", resourceLabels)
	mTLSExpiry        = desc("tls_certificate_expiry_timestamp_seconds", "When this node's TLS certificate for the resource expires.", resourceLabels)
	mPeerInfo         = desc("peer_info", "The connection's settings (always 1).", peerLabels, "protocol", "transport", "compression", "tls")
	mPeerConn         = desc("peer_connection_state", "The connection's state: 1 for the current one.", peerLabels, "state")
	mPeerRepl         = desc("peer_replication_state", "The replication state: 1 for the current one.", peerLabels, "state")
	mPeerRole         = desc("peer_role", "The peer's role as last announced: 1 for the current one.", peerLabels, "role")
	mPeerDisk         = desc("peer_disk_state", "The peer's disk state as last announced: 1 for the current one.", peerLabels, "state")
	mLinkSent         = desc("peer_link_sent_bytes_total", "Bytes sent on the wire to the peer (after compression), every connection.", peerLabels)
	mLinkRecv         = desc("peer_link_received_bytes_total", "Bytes received on the wire from the peer (after compression), every connection.", peerLabels)
	mDataSent         = desc("peer_data_sent_bytes_total", "Payload bytes of data and resync frames sent to the peer (before compression) since up.", peerLabels)
	mDataRecv         = desc("peer_data_received_bytes_total", "Payload bytes of data and resync frames received from the peer (before compression) since up.", peerLabels)
	mWritesSent       = desc("peer_writes_sent_total", "Application writes sent to the peer since up.", peerLabels)
	mWritesRecv       = desc("peer_writes_received_total", "Application writes received from the peer since up.", peerLabels)
	mOutOfSync        = desc("peer_out_of_sync_bytes", "Bytes marked out of sync for the peer.", peerLabels)
	mUnacked          = desc("peer_unacked_bytes", "Data bytes sent to the peer and not acknowledged as written.", peerLabels)
	mMaxBuffer        = desc("peer_max_buffer_bytes", "The connection's max_buffer, the bound of peer_unacked_bytes.", peerLabels)
	mResyncActive     = desc("peer_resync_active", "1 while a resync with the peer runs.", peerLabels)
	mResyncPaused     = desc("peer_resync_paused", "1 while pause-sync holds the resync to the peer.", peerLabels)
	mResyncTotal      = desc("peer_resync_total_bytes", "Bytes the running resync moves.", peerLabels)
	mResyncDone       = desc("peer_resync_done_bytes", "Bytes the running resync moved so far.", peerLabels)
	mResyncRate       = desc("peer_resync_rate_bytes_per_second", "The running resync's rate.", peerLabels)
	mResyncETA        = desc("peer_resync_eta_seconds", "Time the running resync needs at its rate (0: unknown).", peerLabels)
	mPullAhead        = desc("peer_pull_ahead_total", "Times congestion left the peer behind (pull-ahead) since up.", peerLabels)
	mSplitBrains      = desc("peer_split_brains_total", "Split brains met with the peer since up, resolved or not.", peerLabels)
	mRPOSeconds       = desc("peer_rpo_seconds", "On the Primary: age of the oldest completed write the peer lacks.", peerLabels)
	mRPOBytes         = desc("peer_rpo_bytes", "On the Primary: bytes the peer lacks (unacknowledged plus out of sync).", peerLabels)
	mRPOWarning       = desc("peer_rpo_warning_seconds", "The connection's rpo_warning (0: none).", peerLabels)
	mRPOExceeded      = desc("peer_rpo_exceeded", "On the Primary: 1 while the RPO is beyond rpo_warning.", peerLabels)
	mAckLatency       = histogramDesc("peer_write_ack_latency_seconds", "Data frames, from hand-over to the link to the peer's write acknowledgement.", peerLabels, "protocol")
	ownRoles          = []string{core.Secondary.String(), core.Primary.String()}
	peerRoles         = []string{core.RoleUnknown.String(), core.Secondary.String(), core.Primary.String()}
	diskStates        = []string{core.DUnknown.String(), core.Diskless.String(), core.Attaching.String(), core.Inconsistent.String(), core.Outdated.String(), core.Consistent.String(), core.UpToDate.String()}
	connStates        = []string{core.StandAlone.String(), core.Connecting.String(), core.Connected.String()}
	replStates        = []string{core.ReplOff.String(), core.Established.String(), core.SyncSource.String(), core.SyncTarget.String(), core.Ahead.String(), core.Behind.String()}
	latencyUpperBound = LatencyBuckets
)

func (c metricsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, m := range metricDefs {
		ch <- m.desc
	}
}

func (c metricsCollector) Collect(ch chan<- prometheus.Metric) {
	sts, err := c.d.Status("")
	if err != nil {
		return
	}
	for _, st := range sts {
		collectResource(ch, st)
	}
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// stateSet emits one series per possible state, 1 for current.
func stateSet(ch chan<- prometheus.Metric, d *prometheus.Desc, states []string, current string, labels ...string) {
	for _, s := range states {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, boolValue(s == current), append(labels, s)...)
	}
}

func histogram(ch chan<- prometheus.Metric, d *prometheus.Desc, s LatencySnapshot, labels ...string) {
	buckets := make(map[float64]uint64, len(latencyUpperBound))
	for i, ub := range latencyUpperBound {
		if i < len(s.Buckets) {
			buckets[ub] = s.Buckets[i]
		}
	}
	ch <- prometheus.MustNewConstHistogram(d, s.Count, s.Sum, buckets, labels...)
}

func collectResource(ch chan<- prometheus.Metric, st *ResourceStatus) {
	rl := []string{st.Name, st.Node}
	gauge := func(d *prometheus.Desc, v float64, labels []string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v uint64, labels []string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge(mResourceUp, boolValue(st.Up), rl)
	stateSet(ch, mRole, ownRoles, st.Role, rl...)
	stateSet(ch, mDiskState, diskStates, st.Disk, rl...)
	gauge(mSize, float64(st.Size), rl)
	gauge(mPending, float64(st.Pending), rl)
	counter(mDiskRead, st.DiskRead, rl)
	counter(mDiskWritten, st.DiskWritten, rl)
	gauge(mALExtents, float64(st.ALExtents), rl)
	counter(mALWrites, st.ALWrites, rl)
	q := Quorum{OK: true}
	if st.Quorum != nil {
		q = *st.Quorum
	}
	gauge(mQuorumHave, float64(q.Have), rl)
	gauge(mQuorumNeed, float64(q.Need), rl)
	gauge(mQuorumOK, boolValue(q.OK), rl)
	histogram(ch, mAppLatency, st.AppWriteLatency, rl...)
	histogram(ch, mLocalLatency, st.LocalWriteLatency, rl...)
	if st.TLSValidUntil != nil {
		gauge(mTLSExpiry, float64(st.TLSValidUntil.Unix()), rl)
	}
	for i := range st.Peers {
		p := &st.Peers[i]
		pl := []string{st.Name, st.Node, p.Name}
		gauge(mPeerInfo, 1, append(pl[:3:3], p.Protocol, p.Transport, p.Compression, p.TLS))
		stateSet(ch, mPeerConn, connStates, p.Conn, pl...)
		stateSet(ch, mPeerRepl, replStates, p.Repl, pl...)
		stateSet(ch, mPeerRole, peerRoles, p.Role, pl...)
		stateSet(ch, mPeerDisk, diskStates, p.Disk, pl...)
		counter(mLinkSent, p.LinkSent, pl)
		counter(mLinkRecv, p.LinkRecv, pl)
		counter(mDataSent, p.DataSent, pl)
		counter(mDataRecv, p.DataRecv, pl)
		counter(mWritesSent, p.WritesSent, pl)
		counter(mWritesRecv, p.WritesRecv, pl)
		gauge(mOutOfSync, float64(p.OutOfSync), pl)
		gauge(mUnacked, float64(p.Unacked), pl)
		gauge(mMaxBuffer, float64(p.MaxBuffer), pl)
		var rs Resync
		if p.Resync != nil {
			rs = *p.Resync
		}
		gauge(mResyncActive, boolValue(p.Resync != nil), pl)
		gauge(mResyncPaused, boolValue(p.ResyncPaused), pl)
		gauge(mResyncTotal, float64(rs.TotalBytes), pl)
		gauge(mResyncDone, float64(rs.DoneBytes), pl)
		gauge(mResyncRate, rs.Rate, pl)
		gauge(mResyncETA, rs.ETASeconds, pl)
		counter(mPullAhead, p.AheadEpisodes, pl)
		counter(mSplitBrains, p.SplitBrains, pl)
		if p.RPO != nil {
			gauge(mRPOSeconds, p.RPO.AgeSeconds, pl)
			gauge(mRPOBytes, float64(p.RPO.Bytes), pl)
			gauge(mRPOWarning, p.RPO.WarningSeconds, pl)
			gauge(mRPOExceeded, boolValue(p.RPO.Exceeded), pl)
		}
		histogram(ch, mAckLatency, p.AckLatency, append(pl[:3:3], p.Protocol)...)
	}
}

// MetricsHandler serves the daemon's metrics, and the Go runtime's and
// the process's, in Prometheus' exposition format.
func (d *Daemon) MetricsHandler() http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(metricsCollector{d}, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: slogErrorLog{d}})
}

type slogErrorLog struct{ d *Daemon }

func (l slogErrorLog) Println(v ...any) { l.d.log.Error("metrics", "err", fmt.Sprint(v...)) }

// ServeMetrics serves MetricsHandler at /metrics on addr (metrics_address)
// until stop is called; it returns the address it listens on.
func (d *Daemon) ServeMetrics(addr string) (bound net.Addr, stop func(), err error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, nil, fmt.Errorf("metrics_address %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", d.MetricsHandler())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			d.log.Error("metrics endpoint stopped", "addr", addr, "err", err)
		}
	}()
	return l.Addr(), func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	}, nil
}
