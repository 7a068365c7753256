package node

import (
	"testing"

	"github.com/georepl/georepl/core"
)

func TestResyncReason(t *testing.T) {
	for _, tc := range []struct {
		why  core.ResyncWhy
		want string
	}{
		{core.ResyncWhy{Source: true, Full: "new peer: one side has no data generation yet"},
			"full: new peer: one side has no data generation yet"},
		{core.ResyncWhy{Source: true, MarkedHere: 2 << 20},
			"bitmap: 2.0MiB marked here (writes the peer missed while disconnected)"},
		{core.ResyncWhy{Source: true, MarkedHere: 64 << 20, MarkedByPeer: 8 << 20, AfterCrash: 16},
			"bitmap: 64.0MiB marked here (after crash: activity log 16 extents, and writes the peer missed while disconnected); 8.0MiB marked by the peer (its activity log after a crash, or writes it missed or got from a lost primary)"},
		{core.ResyncWhy{MarkedHere: 4 << 20, AfterCrash: 1},
			"bitmap: 4.0MiB marked here (after crash: activity log 1 extent); the source's own marks"},
		{core.ResyncWhy{MarkedHere: 4096},
			"bitmap: 4.0KiB marked here (writes of a lost primary that not every node confirmed, or made here while disconnected); the source's own marks"},
		{core.ResyncWhy{}, "bitmap: the source's own marks"},
		{core.ResyncWhy{Source: true, MarkedHere: 1 << 20, Ahead: true},
			"bitmap: 1.0MiB marked here (writes the peer missed while congestion left it behind (pull-ahead))"},
		{core.ResyncWhy{Invalidated: "here", MarkedHere: 1 << 30},
			"invalidate: this node's data was declared bad (georepl invalidate): every block"},
		{core.ResyncWhy{Source: true, Invalidated: "peer", MarkedHere: 1 << 30},
			"invalidate: the peer's data was declared bad (georepl invalidate-remote): every block"},
		{core.ResyncWhy{Source: true}, "bitmap: nothing marked"},
	} {
		if got := resyncReason(tc.why); got != tc.want {
			t.Errorf("resyncReason(%+v) =\n%q; want\n%q", tc.why, got, tc.want)
		}
	}
}
