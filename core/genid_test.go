package core

import (
	"errors"
	"testing"

	"github.com/georepl/georepl/core/wire"
)

// TestDecideGenerationTable checks every row of the generation id table in
// the package documentation, from both ends of the connection: the two
// decisions must mirror each other (source/target, same drop reason).
func TestDecideGenerationTable(t *testing.T) {
	const a, b, c, d = 0xa, 0xb, 0xc, 0xd
	primary := func(cur, bm uint64, hist ...uint64) side {
		return side{role: Primary, disk: UpToDate, gen: gen(cur, bm, hist...)}
	}
	secondary := func(disk DiskState, cur, bm uint64, hist ...uint64) side {
		return side{role: Secondary, disk: disk, gen: gen(cur, bm, hist...)}
	}
	tests := []struct {
		name string
		s, p side
		rule int
		repl ReplState // S's replication state
		full bool      // the source resyncs everything
		err  error
	}{
		{"1 both new", secondary(Inconsistent, 0, 0), secondary(Inconsistent, 0, 0), 1, Established, false, nil},
		{"2 self new, peer primary", secondary(Inconsistent, 0, 0), primary(a, 0), 2, SyncTarget, true, nil},
		{"2 peer new, self primary", primary(a, 0), secondary(Inconsistent, 0, 0), 2, SyncSource, true, nil},
		{"2 peer new, no primary: deferred", secondary(UpToDate, a, 0), secondary(Inconsistent, 0, 0), 2, Established, false, nil},
		{"3 in sync", primary(a, 0), secondary(UpToDate, a, 0), 3, Established, false, nil},
		{"3 primary has marks", primary(a, a), secondary(UpToDate, a, 0), 3, SyncSource, false, nil},
		{"3 secondary has marks: merged", primary(a, 0), secondary(UpToDate, a, a), 3, SyncSource, false, nil},
		{"3 marks, no primary: deferred", secondary(UpToDate, a, a), secondary(UpToDate, a, 0), 3, Established, false, nil},
		{"4 self marked since peer's current", primary(b, a, a), secondary(UpToDate, a, 0), 4, SyncSource, false, nil},
		{"5 peer marked since self's current", secondary(Outdated, a, 0), primary(b, a, a), 5, SyncTarget, false, nil},
		{"5 would make the primary a target", primary(a, 0), secondary(UpToDate, b, a, a), 5, 0, false, ErrSplitBrain},
		{"4' peer adopted our newer generation unconfirmed", primary(c, a, b, a), secondary(UpToDate, b, 0, a), 4, SyncSource, false, nil},
		{"4' peer lost its primary, marks at its current", primary(b, 0, a), secondary(UpToDate, a, a), 4, SyncSource, false, nil},
		{"4' peer crashed as primary, activity log marks", primary(c, a, a), secondary(UpToDate, b, b, a), 4, SyncSource, false, nil},
		{"5' we lost our primary, the peer was promoted", secondary(UpToDate, a, a), primary(b, 0, a), 5, SyncTarget, false, nil},
		{"6 both diverged from a", primary(b, a, a), secondary(UpToDate, c, a, a), 6, 0, false, ErrSplitBrain},
		{"6 both diverged, both secondary: judged at promotion", secondary(UpToDate, b, a, a), secondary(UpToDate, c, a, a), 6, Established, false, nil},
		{"7 peer's current in our history", primary(c, 0, b, a), secondary(UpToDate, a, 0), 7, SyncSource, true, nil},
		{"7 our current in the peer's history", secondary(UpToDate, a, 0), primary(c, 0, b, a), 7, SyncTarget, true, nil},
		{"8 unrelated", primary(a, 0, b), secondary(UpToDate, c, 0, d), 8, 0, false, ErrUnrelatedData},
		{"both primary", primary(a, 0), primary(a, 0), 0, 0, false, ErrPeerPrimary},
		{"source not UpToDate", side{role: Primary, disk: Inconsistent, gen: gen(a, 0)}, secondary(Inconsistent, 0, 0), 2, Established, false, nil},
	}
	mirror := map[ReplState]ReplState{Established: Established, SyncSource: SyncTarget, SyncTarget: SyncSource, ReplOff: ReplOff}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ds, dp := decide(tt.s, tt.p), decide(tt.p, tt.s)
			if tt.err != nil {
				if !errors.Is(ds.err, tt.err) || !errors.Is(dp.err, tt.err) {
					t.Fatalf("errors %v / %v, want %v on both sides", ds.err, dp.err, tt.err)
				}
				return
			}
			if ds.err != nil || dp.err != nil {
				t.Fatalf("unexpected drop: %v / %v", ds.err, dp.err)
			}
			if ds.rule != tt.rule {
				t.Errorf("rule %d, want %d", ds.rule, tt.rule)
			}
			if ds.repl != tt.repl || dp.repl != mirror[tt.repl] {
				t.Errorf("S %v, P %v; want S %v, P %v", ds.repl, dp.repl, tt.repl, mirror[tt.repl])
			}
			src := ds
			if tt.repl == SyncTarget {
				src = dp
			}
			if tt.repl != Established && src.full != tt.full {
				t.Errorf("full %v, want %v", src.full, tt.full)
			}
		})
	}
}

func gen(cur, bm uint64, hist ...uint64) wire.GenIDs {
	g := wire.GenIDs{Current: cur, Bitmap: bm}
	copy(g.History[:], hist)
	return g
}

// TestConnectDecidesBothEnds runs rows of the table through two real
// engines: both ends reach mirrored states, or both drop the connection.
func TestConnectDecidesBothEnds(t *testing.T) {
	tests := []struct {
		name         string
		n0, n1       Persistent
		primary      bool // promote n0 (forced if its disk is not UpToDate)
		want0, want1 ReplState
		drop         error
	}{
		{"1 new resource", Persistent{}, Persistent{}, false, Established, Established, nil},
		{"2 forced primary", Persistent{}, Persistent{}, true, SyncSource, SyncTarget, nil},
		{"3 in sync", Persistent{Disk: UpToDate, Current: 5}, Persistent{Disk: UpToDate, Current: 5}, true, Established, Established, nil},
		{"4 bitmap", Persistent{Disk: UpToDate, Current: 5, History: [2]uint64{4}, BitmapUUID: map[NodeID]uint64{1: 4}},
			Persistent{Disk: UpToDate, Current: 4}, true, SyncSource, SyncTarget, nil},
		{"6 split brain", Persistent{Disk: UpToDate, Current: 5, History: [2]uint64{4}, BitmapUUID: map[NodeID]uint64{1: 4}},
			Persistent{Disk: UpToDate, Current: 6, History: [2]uint64{4}, BitmapUUID: map[NodeID]uint64{0: 4}}, true, ReplOff, ReplOff, ErrSplitBrain},
		{"7 history", Persistent{Disk: UpToDate, Current: 5, History: [2]uint64{4, 3}},
			Persistent{Disk: UpToDate, Current: 3}, true, SyncSource, SyncTarget, nil},
		{"8 unrelated", Persistent{Disk: UpToDate, Current: 5}, Persistent{Disk: UpToDate, Current: 9}, true, ReplOff, ReplOff, ErrUnrelatedData},
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
				c.start(nd)
			}
			// What n0 wrote while n1 was away, marked in its bitmap for n1
			// (row 4) or covered by a full resync (rows 2, 7).
			copy(c.nodes[0].disk[3*4096:], "written while n1 was away")
			c.nodes[0].bitmaps[1] = []uint64{1 << 3}
			c.start(c.nodes[0])
			promote := func() {
				if err := c.nodes[0].eng.Promote(c.nodes[0].eng.disk != UpToDate); err != nil {
					t.Fatal(err)
				}
				c.handle(c.nodes[0])
			}
			// A drop is decided at connect time by both ends, so promote
			// first; otherwise connect two Secondaries and let the
			// promotion's StateChange make the peer decide.
			if tt.primary && tt.drop != nil {
				promote()
			}
			if err := c.connect(c.nodes[0], c.nodes[1]); err != nil {
				t.Fatal(err)
			}
			if tt.primary && tt.drop == nil {
				promote()
				c.deliver(c.nodes[0], c.nodes[1], -1, nil)
			}
			st0, st1 := c.nodes[0].eng.Status().Peers[0], c.nodes[1].eng.Status().Peers[0]
			if tt.drop != nil {
				if st0.Conn != StandAlone || st1.Conn != StandAlone {
					t.Fatalf("conn %v / %v, want StandAlone on both sides", st0.Conn, st1.Conn)
				}
				for _, err := range c.drops {
					if !errors.Is(err, tt.drop) {
						t.Fatalf("drop reason %v, want %v", err, tt.drop)
					}
				}
				return
			}
			if st0.Repl != tt.want0 || st1.Repl != tt.want1 {
				t.Fatalf("repl %v / %v, want %v / %v", st0.Repl, st1.Repl, tt.want0, tt.want1)
			}
			if tt.want0 != SyncSource {
				return
			}
			c.stabilize()
			if got := c.disks(); got[len(got)-10:] != "all equal\n" {
				t.Fatalf("disks differ after the resync:\n%s", got)
			}
		})
	}
}
