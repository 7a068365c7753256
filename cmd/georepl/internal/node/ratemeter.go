package node

import (
	"time"
)

// rateMeter smooths a byte counter into a rate over the last few seconds.
type rateMeter struct {
	samples []rateSample
}

type rateSample struct {
	at    time.Time
	bytes uint64
}

const rateWindow = 3 * time.Second

func (m *rateMeter) observe(now time.Time, bytes uint64) float64 {
	m.samples = append(m.samples, rateSample{now, bytes})
	for len(m.samples) > 2 && now.Sub(m.samples[0].at) > rateWindow {
		m.samples = m.samples[1:]
	}
	first := m.samples[0]
	dt := now.Sub(first.at).Seconds()
	if dt <= 0 || bytes < first.bytes {
		return 0
	}
	return float64(bytes-first.bytes) / dt
}
