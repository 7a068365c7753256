package node

import (
	"sync/atomic"
	"time"
)

// LatencyBuckets are the upper bounds, in seconds, of the latency
// histograms: from a fast local SSD write to a stalled WAN link.
var LatencyBuckets = latencyBuckets[:]

var latencyBuckets = [...]float64{
	0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
	0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
}

// latencyHistogram counts durations into LatencyBuckets with atomics
// only, so that observing costs the write path no lock.
type latencyHistogram struct {
	counts [len(latencyBuckets) + 1]atomic.Uint64 // per bucket, not cumulative; the last is +Inf
	sumNS  atomic.Uint64
}

func (h *latencyHistogram) observe(d time.Duration) {
	s := d.Seconds()
	i := 0
	for i < len(LatencyBuckets) && s > LatencyBuckets[i] {
		i++
	}
	h.counts[i].Add(1)
	h.sumNS.Add(uint64(max(d, 0)))
}

// LatencySnapshot is a histogram as Prometheus exposes one: Buckets[i]
// counts the observations of at most LatencyBuckets[i] seconds
// (cumulative), Count all of them, Sum their total in seconds.
//
// The status JSON carries Count and Sum, from which a client such as
// `georepl top` takes the mean latency between two statuses; the buckets
// are for the metrics.
type LatencySnapshot struct {
	Count   uint64   `json:"count"`
	Sum     float64  `json:"sum_seconds"`
	Buckets []uint64 `json:"-"`
}

func (h *latencyHistogram) snapshot() LatencySnapshot {
	s := LatencySnapshot{Buckets: make([]uint64, len(LatencyBuckets))}
	for i := range h.counts {
		s.Count += h.counts[i].Load()
		if i < len(LatencyBuckets) {
			s.Buckets[i] = s.Count
		}
	}
	s.Sum = time.Duration(h.sumNS.Load()).Seconds()
	return s
}

// ackTimes remembers when the latest data frames to one peer were handed
// to its link, by sequence number, until the peer's WriteAck; a frame
// whose slot a later one took is not measured. Used with emu held only.
type ackTimes struct {
	slots [4096]struct {
		seq  uint64
		sent time.Time
	}
}

func (a *ackTimes) sent(seq uint64, now time.Time) {
	s := &a.slots[seq%uint64(len(a.slots))]
	s.seq, s.sent = seq, now
}

// acked returns how long ago the frame seq was sent, if it is known.
func (a *ackTimes) acked(seq uint64, now time.Time) (time.Duration, bool) {
	s := &a.slots[seq%uint64(len(a.slots))]
	if s.seq != seq || s.sent.IsZero() {
		return 0, false
	}
	d := now.Sub(s.sent)
	s.sent = time.Time{}
	return d, true
}
