package core

import (
	"bytes"
	"strings"
	"testing"

	"github.com/georepl/georepl/core/wire"
	"github.com/georepl/georepl/protocols"
)

// TestSecondaryAppliesWhatItReceivedWhenPrimaryLost: a protocol B
// secondary acknowledges a write as soon as it arrives (RecvAck), so the
// write may complete on the Primary while it still waits on the secondary
// behind an earlier epoch or an overlapping write. If the Primary then
// fails, the secondary must still apply, in order, everything it received:
// promoted, it holds every write the Primary completed, and the old
// Primary, when it returns, gets them from it.
func TestSecondaryAppliesWhatItReceivedWhenPrimaryLost(t *testing.T) {
	for _, tt := range []struct {
		name string
		// second is where W2 goes: elsewhere, it lands in the next
		// epoch and waits for W1's epoch; on W1's block, in the same
		// epoch, it waits for W1 itself.
		second  uint64
		overlap bool
	}{
		{name: "behind an earlier epoch", second: 4096},
		{name: "behind an overlapping write", second: 0, overlap: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := threeInSync(t, protocols.B, protocols.A)
			p, s1, s2 := c.nodes[0], c.nodes[1], c.nodes[2]

			w1 := bytes.Repeat([]byte("a"), 4096)
			w2 := bytes.Repeat([]byte("b"), 4096)
			data := wire.ChannelData
			c.submit(p, Request{Kind: ReqWrite, Offset: 0, Length: 4096, Data: w1})
			id1 := c.nextReq
			c.process(p, -1, false, nil) // W1 is on the Primary's disk
			if !tt.overlap {
				// W1 completes (n1's RecvAck) and closes its epoch.
				c.deliver(p, s1, -1, &data)
				c.deliver(s1, p, -1, nil)
			}
			c.submit(p, Request{Kind: ReqWrite, Offset: tt.second, Length: 4096, Data: w2})
			id2 := c.nextReq
			c.process(p, -1, false, nil)
			// n1 receives what it has not yet and acknowledges its
			// receipt; W1 is on n1's disk queue, W2 waits.
			c.deliver(p, s1, -1, &data)
			c.deliver(s1, p, -1, nil)
			for _, id := range []RequestID{id1, id2} {
				if err, ok := p.done[id]; !ok || err != nil {
					t.Fatalf("request %d: done=%v err=%v; want completed on n1's receipt", id, ok, err)
				}
			}
			if len(s1.ops) != 1 {
				t.Fatalf("n1 has %d operations pending, want W1's alone (W2 waits for it)", len(s1.ops))
			}

			c.crash(p)
			for c.process(s1, -1, false, nil) > 0 {
			}
			if err := s1.eng.Promote(false); err != nil {
				t.Fatalf("promoting n1: %v", err)
			}
			c.handle(s1)
			want := map[uint64][]byte{0: w1, tt.second: w2}
			if tt.overlap {
				want = map[uint64][]byte{0: w2}
			}
			check := func(when string, nd *node) {
				t.Helper()
				for off, b := range want {
					if got := nd.disk[off : off+4096]; !bytes.Equal(got, b) {
						t.Fatalf("%s: n%d has %s at %d, want %s (a write completed under protocol B)", when, nd.id, runs(got), off, runs(b))
					}
				}
			}
			check("promoted", s1)

			// The old Primary returns and is resynchronised from n1.
			for _, other := range []*node{p, s2} {
				if !s1.links[other.id].up {
					if err := c.connect(s1, other); err != nil {
						t.Fatal(err)
					}
				}
			}
			if err := c.connect(p, s2); err != nil {
				t.Fatal(err)
			}
			c.stabilize()
			for _, nd := range c.nodes {
				check("after resync", nd)
			}
			if d := c.disks(); !strings.Contains(d, "all equal") {
				t.Fatalf("disks differ after resync:\n%s", d)
			}
			if len(c.failed) > 0 {
				t.Fatalf("promises broken: %v", c.failed)
			}
		})
	}
}

// TestSwitchoverAppliesTheOldPrimarysWritesFirst: in a planned switchover
// a protocol B (or A) peer may still hold writes of the old Primary, behind
// an earlier epoch, when the new Primary's writes arrive: the old writes
// were all received (the old Primary's demotion follows them on the data
// channel) but not applied. They must land first, or an old write
// overwrites a newer one on that peer alone, while everyone reports
// UpToDate with nothing out of sync.
func TestSwitchoverAppliesTheOldPrimarysWritesFirst(t *testing.T) {
	c := threeInSync(t, protocols.C, protocols.B)
	p, s1, s2 := c.nodes[0], c.nodes[1], c.nodes[2]

	data := wire.ChannelData
	// Two writes in two epochs; n2 (protocol B) receives both and applies
	// neither: the second waits for the first's epoch.
	for i, off := range []uint64{4096, 0} {
		c.submit(p, Request{Kind: ReqWrite, Offset: off, Length: 4096, Data: bytes.Repeat([]byte{"ab"[i]}, 4096)})
		c.deliver(p, s1, -1, nil)
		c.deliver(p, s2, -1, &data)
		c.process(s1, -1, false, nil)
		c.process(p, -1, false, nil)
		c.deliver(s1, p, -1, nil)
		c.deliver(s2, p, -1, nil)
	}
	if err := p.eng.Demote(); err != nil {
		t.Fatal(err)
	}
	c.handle(p)
	c.deliver(p, s1, -1, &data)
	c.deliver(p, s2, -1, &data)
	c.process(s1, -1, false, nil)
	if err := s1.eng.Promote(false); err != nil {
		t.Fatal(err)
	}
	c.handle(s1)
	c.submit(s1, Request{Kind: ReqWrite, Offset: 0, Length: 4096, Data: bytes.Repeat([]byte("c"), 4096)})
	c.deliver(s1, s2, -1, &data) // before n2 applied the old Primary's writes
	c.stabilize()

	for _, nd := range []*node{s1, s2} {
		if got := runs(nd.disk[:4096]); got != "c*4096" {
			t.Errorf("n%d has %s at 0, want the new Primary's c*4096", nd.id, got)
		}
	}
	if len(c.failed) > 0 {
		t.Errorf("promises broken: %v", c.failed)
	}
}

// threeInSync is a three-node cluster, every pair connected, n0 Primary by
// force and the initial syncs done; proto1 and proto2 are n0's protocols
// towards n1 and n2. The harness's log is printed if the test fails.
func threeInSync(t *testing.T, proto1, proto2 protocols.Protocol) *cluster {
	t.Helper()
	c := newCluster(3, []protocols.Protocol{proto1, proto2}, nil)
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(c.out.String())
		}
	})
	p, s1, s2 := c.nodes[0], c.nodes[1], c.nodes[2]
	for _, pair := range [][2]*node{{p, s1}, {p, s2}, {s1, s2}} {
		if err := c.connect(pair[0], pair[1]); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.eng.Promote(true); err != nil {
		t.Fatal(err)
	}
	c.handle(p)
	c.stabilize()
	return c
}
