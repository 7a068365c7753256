package core

import (
	"slices"
	"testing"
	"time"

	"github.com/georepl/georepl/core/wire"
	"github.com/georepl/georepl/protocols"
)

// TestPullAheadSustainedOverload writes faster than the link carries, for
// many rounds, to a protocol A peer with congestion policy pull-ahead. The
// application never waits for the peer, and the peer's replication state
// goes Established, Ahead, SyncSource once and stays there while the
// overload lasts (the hysteresis rule: no switching back and forth). When
// the writes stop, the catch-up resync finishes and the disks are equal.
func TestPullAheadSustainedOverload(t *testing.T) {
	c := newCluster(2, []protocols.Protocol{protocols.A}, func(cfg *Config) {
		cfg.Size = 1 << 20
		cfg.ResyncChunk = 16 << 10
		for i := range cfg.Peers {
			cfg.Peers[i].MaxBuffer = 32 << 10
			cfg.Peers[i].OnCongestion = CongestionPullAhead
		}
	})
	c.quiet = true
	n0, n1 := c.nodes[0], c.nodes[1]
	c.primaryInSync(t, n0, n1)

	states := []ReplState{n0.eng.Status().Peers[0].Repl}
	note := func() {
		if r := n0.eng.Status().Peers[0].Repl; r != states[len(states)-1] {
			states = append(states, r)
		}
	}
	blocks := c.size / uint64(c.block)
	for round := range 400 {
		for k := range 3 {
			b := uint64(round*7+k*61) % blocks
			c.submit(n0, Request{Kind: ReqWrite, Offset: b * uint64(c.block), Length: uint64(c.block),
				Data: slices.Repeat([]byte{byte(round + k + 1)}, int(c.block))})
			note()
		}
		for len(n0.ops) > 0 {
			c.process(n0, -1, false, nil)
		}
		if p := n0.eng.Status().Pending; p != 0 {
			t.Fatalf("round %d: %d application requests wait for the congested peer", round, p)
		}
		// The link carries two frames per round; the peer keeps up with
		// what arrives.
		c.deliver(n0, n1, 2, nil)
		c.process(n1, -1, false, nil)
		c.deliver(n1, n0, -1, nil)
		note()
	}
	want := []ReplState{Established, Ahead, SyncSource}
	if !slices.Equal(states, want) {
		t.Fatalf("replication states under a sustained overload: %v, want %v", states, want)
	}
	if ps := n0.eng.Status().Peers[0]; ps.AheadEpisodes != 1 || ps.RPOBytes == 0 || ps.RPOBytes < ps.OutOfSync {
		t.Fatalf("during the overload: %d pull-ahead episodes (want 1), RPO %d bytes with %d out of sync",
			ps.AheadEpisodes, ps.RPOBytes, ps.OutOfSync)
	}
	c.stabilize()
	note()
	if ps := n0.eng.Status().Peers[0]; ps.RPOBytes != 0 || ps.RPOAge != 0 {
		t.Fatalf("caught up: RPO %v, %d bytes", ps.RPOAge, ps.RPOBytes)
	}
	if got := states[len(states)-1]; got != Established {
		t.Fatalf("after the overload: %v, want Established", got)
	}
	if d := c.disks(); d[len(d)-len("all equal\n"):] != "all equal\n" {
		t.Fatalf("disks differ after the catch-up:\n%s", d)
	}
	if len(c.failed) > 0 {
		t.Fatalf("promises broken: %v", c.failed)
	}
}

// TestResyncLeavesAppShare runs a full resync over a modelled link of
// fixed capacity while the application keeps four protocol C writes in
// flight. Without the controller (share 0) the resync's window crowds the
// application out of the link; with ResyncMinAppShare 0.3 the resync backs
// off to at most 70% of the measured capacity once the application writes,
// and the application's share of the link grows accordingly (at queue
// depth 4 it is latency-bound and uses a little less than the room left).
func TestResyncLeavesAppShare(t *testing.T) {
	for _, tc := range []struct {
		share            float64
		minApp, maxApp   float64 // bounds of the application's share of the delivered bytes
		wantLimitedWhile bool
	}{
		{share: 0, minApp: 0, maxApp: 0.2},
		{share: 0.3, minApp: 0.25, maxApp: 1, wantLimitedWhile: true},
	} {
		app, resync, limited := runSharedLink(t, tc.share)
		const linkBytes = 150 * 10_000 // what the link carries while measured
		got := float64(app) / float64(app+resync)
		if linkShare := float64(resync) / float64(linkBytes); tc.share > 0 && linkShare > 1-tc.share+0.02 {
			t.Errorf("share %.1f: the resync took %.2f of the link's capacity", tc.share, linkShare)
		}
		t.Logf("share %.1f: application %d bytes, resync %d bytes: application share %.2f", tc.share, app, resync, got)
		if got < tc.minApp || got > tc.maxApp {
			t.Errorf("share %.1f: the application got %.2f of the link, want %.2f to %.2f", tc.share, got, tc.minApp, tc.maxApp)
		}
		if limited != tc.wantLimitedWhile {
			t.Errorf("share %.1f: status showed a resync limit: %v, want %v", tc.share, limited, tc.wantLimitedWhile)
		}
	}
}

// runSharedLink resyncs a 4 MiB device to a protocol C peer over a link
// that carries 1 MB/s (10 KB per 10 ms tick, frames in order), with four
// 4 KiB application writes always in flight from the first second on.
// It returns the application and resync payload bytes the link carried
// in the last 1.5 simulated seconds (when the controller has settled), and
// whether the status showed a resync limit meanwhile.
func runSharedLink(t *testing.T, share float64) (app, resync uint64, limited bool) {
	t.Helper()
	const (
		tick       = 10 * time.Millisecond
		perTick    = 10_000 // bytes the link carries per tick
		frameBytes = 32     // a frame header, roughly
	)
	c := newCluster(2, []protocols.Protocol{protocols.C}, func(cfg *Config) {
		cfg.Size = 4 << 20
		cfg.ResyncChunk = 16 << 10
		cfg.ResyncWindow = 8
		for i := range cfg.Peers {
			cfg.Peers[i].ResyncMinAppShare = share
		}
	})
	c.quiet = true
	n0, n1 := c.nodes[0], c.nodes[1]
	if err := c.connect(n0, n1); err != nil {
		t.Fatal(err)
	}
	if err := n0.eng.Promote(true); err != nil {
		t.Fatal(err)
	}
	c.handle(n0)
	inFlight := 0
	c.onDone = func(nd *node, id RequestID, err error) {
		if nd == n0 {
			inFlight--
		}
	}
	var credit int
	next := uint64(0)
	for step := range 400 {
		measuring := step >= 250
		if step >= 100 {
			for inFlight < 4 {
				inFlight++
				off := (next % 1024) * 4096
				next++
				c.submit(n0, Request{Kind: ReqWrite, Offset: off, Length: 4096, Data: make([]byte, 4096)})
			}
		}
		credit += perTick
		l := n0.links[n1.id]
		for credit > 0 && len(l.queue) > 0 {
			f := l.queue[0]
			credit -= len(f.Payload) + frameBytes
			if measuring {
				switch f.Type {
				case wire.TypeData:
					app += uint64(len(f.Payload))
				case wire.TypeResyncData:
					resync += uint64(len(f.Payload))
				}
			}
			c.deliver(n0, n1, 1, nil)
		}
		credit = min(credit, 0)
		for len(n1.ops) > 0 {
			c.process(n1, -1, false, nil)
		}
		c.deliver(n1, n0, -1, nil)
		for len(n0.ops) > 0 {
			c.process(n0, -1, false, nil)
		}
		n0.eng.Tick(tick)
		c.handle(n0)
		if measuring && n0.eng.Status().Peers[0].ResyncLimit > 0 {
			limited = true
		}
		if n0.eng.Status().Peers[0].Repl != SyncSource {
			t.Fatalf("step %d: the resync ended before the measurement did", step)
		}
	}
	return app, resync, limited
}
