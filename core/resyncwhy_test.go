package core

import (
	"strings"
	"testing"
)

// TestResyncWhy: both ends of a resync tell where its blocks come from:
// the source's own marks and the target's, or why it is full.
func TestResyncWhy(t *testing.T) {
	tests := []struct {
		name   string
		n0, n1 Persistent
		// marks of n0 for n1 and of n1 for n0, as bitmap words
		marks0, marks1 []uint64
		full           string // want in Full on both ends; "" for a bitmap resync
		here0, here1   uint64 // want MarkedHere on n0 (source) and n1 (target)
		byPeer         uint64 // want MarkedByPeer on n0
		// activity-log extents each node marked after a crash
		// (Config.RecoveredExtents), named on its end of the resync
		crash0, crash1 int
	}{
		{name: "bitmap, marks on both ends",
			n0:     Persistent{Disk: UpToDate, Current: 5, History: [2]uint64{4}, BitmapUUID: map[NodeID]uint64{1: 4}},
			n1:     Persistent{Disk: UpToDate, Current: 4, BitmapUUID: map[NodeID]uint64{0: 4}},
			marks0: []uint64{1<<3 | 1<<4}, marks1: []uint64{1<<4 | 1<<9 | 1<<10 | 1<<11},
			here0: 2 * 4096, here1: 4 * 4096, byPeer: 3 * 4096, crash0: 1, crash1: 2},
		{name: "full, new peer", full: "new peer"},
		{name: "full, older generation",
			n0:   Persistent{Disk: UpToDate, Current: 5, History: [2]uint64{4, 3}},
			n1:   Persistent{Disk: UpToDate, Current: 3},
			full: "no bitmap covers"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newCluster(2, nil, nil)
			c.quiet = true
			for i, st := range []Persistent{tt.n0, tt.n1} {
				nd := c.nodes[i]
				nd.persisted = st
				if nd.persisted.Disk == DUnknown {
					nd.persisted.Disk = Inconsistent
				}
				nd.cfg.RecoveredExtents = []int{tt.crash0, tt.crash1}[i]
			}
			if tt.marks0 != nil {
				c.nodes[0].bitmaps[1], c.nodes[1].bitmaps[0] = tt.marks0, tt.marks1
			}
			for _, nd := range c.nodes {
				c.start(nd)
			}
			if err := c.connect(c.nodes[0], c.nodes[1]); err != nil {
				t.Fatal(err)
			}
			if err := c.nodes[0].eng.Promote(c.nodes[0].eng.disk != UpToDate); err != nil {
				t.Fatal(err)
			}
			c.handle(c.nodes[0])
			c.stabilize()
			w0, w1 := c.nodes[0].eng.Status().Peers[0].ResyncWhy, c.nodes[1].eng.Status().Peers[0].ResyncWhy
			if !w0.Source || w1.Source {
				t.Errorf("Source %v on n0, %v on n1; want n0 the source", w0.Source, w1.Source)
			}
			for _, w := range []ResyncWhy{w0, w1} {
				if (tt.full == "") != (w.Full == "") || !strings.Contains(w.Full, tt.full) {
					t.Errorf("Full %q; want it to contain %q", w.Full, tt.full)
				}
			}
			if tt.full != "" {
				return
			}
			if w0.MarkedHere != tt.here0 || w1.MarkedHere != tt.here1 || w0.MarkedByPeer != tt.byPeer ||
				w0.AfterCrash != tt.crash0 || w1.AfterCrash != tt.crash1 {
				t.Errorf("n0 %+v, n1 %+v; want MarkedHere %d on n0 and %d on n1, MarkedByPeer %d on n0, AfterCrash %d and %d",
					w0, w1, tt.here0, tt.here1, tt.byPeer, tt.crash0, tt.crash1)
			}
			if got := c.disks(); got[len(got)-10:] != "all equal\n" {
				t.Fatalf("disks differ after the resync:\n%s", got)
			}
			// The next resync (n1 missed a write while disconnected) owes
			// nothing to the crash any more.
			c.sever(c.nodes[0], c.nodes[1], false)
			c.submit(c.nodes[0], Request{Kind: ReqWrite, Offset: 8192, Length: 4096, Data: make([]byte, 4096)})
			c.stabilize()
			if err := c.connect(c.nodes[0], c.nodes[1]); err != nil {
				t.Fatal(err)
			}
			c.stabilize()
			w0 = c.nodes[0].eng.Status().Peers[0].ResyncWhy
			if want := (ResyncWhy{Source: true, MarkedHere: 4096}); w0 != want {
				t.Errorf("second resync: %+v; want %+v", w0, want)
			}
		})
	}
}

// TestResyncWhyInvalidate: a resync asked for by invalidate names it on the
// node that asked, until it is done.
func TestResyncWhyInvalidate(t *testing.T) {
	c := newCluster(2, nil, nil)
	c.quiet = true
	for _, nd := range c.nodes {
		nd.persisted = Persistent{Disk: UpToDate, Current: 5}
		c.start(nd)
	}
	if err := c.connect(c.nodes[0], c.nodes[1]); err != nil {
		t.Fatal(err)
	}
	if err := c.nodes[0].eng.Promote(false); err != nil {
		t.Fatal(err)
	}
	c.handle(c.nodes[0])
	c.stabilize()
	for _, tc := range []struct {
		invalidate func() error
		nd         int // where the cause is known
		want       string
	}{
		{func() error { return c.nodes[0].eng.InvalidateRemote(1) }, 0, "peer"},
		{func() error { return c.nodes[1].eng.Invalidate(0) }, 1, "here"},
	} {
		if err := tc.invalidate(); err != nil {
			t.Fatal(err)
		}
		for _, nd := range c.nodes {
			c.handle(nd)
		}
		c.stabilize()
		w := c.nodes[tc.nd].eng.Status().Peers[0].ResyncWhy
		if w.Invalidated != tc.want || c.nodes[tc.nd].eng.peers[0].invalidated != "" {
			t.Errorf("after invalidate, n%d: %+v (pending %q); want Invalidated %q, and nothing pending once done",
				tc.nd, w, c.nodes[tc.nd].eng.peers[0].invalidated, tc.want)
		}
	}
}
