package core

import (
	"errors"
	"slices"
	"testing"

	"github.com/georepl/georepl/protocols"
)

// TestReconfigureProtocolOnlyWhileDisconnected: a protocol C peer with a
// write in flight keeps its protocol (the write was sent without asking
// for a receive-ack, and completes only once written there); once the
// connection is gone the change is taken, and the next connection
// replicates under the new protocol with the disks converging.
func TestReconfigureProtocolOnlyWhileDisconnected(t *testing.T) {
	c := newCluster(2, []protocols.Protocol{protocols.C}, nil)
	n0, n1 := c.nodes[0], c.nodes[1]
	c.primaryInSync(t, n0, n1)
	c.submit(n0, Request{Kind: ReqWrite, Offset: 0, Length: uint64(c.block), Data: slices.Repeat([]byte{7}, int(c.block))})

	pc := n0.cfg.Peers[0]
	pc.Protocol = protocols.A
	if err := n0.eng.Reconfigure(pc); !errors.Is(err, ErrLiveChange) {
		t.Fatalf("protocol C to A with a write in flight: %v, want ErrLiveChange", err)
	}
	if got := n0.eng.Status().Peers[0].Protocol; got != protocols.C {
		t.Fatalf("after the refused change the peer's protocol is %v", got)
	}
	c.stabilize()
	if p := n0.eng.Status().Pending; p != 0 {
		t.Fatalf("%d requests pending after the refused change", p)
	}

	c.sever(n0, n1, false)
	if err := n0.eng.Reconfigure(pc); err != nil {
		t.Fatalf("protocol change while disconnected: %v", err)
	}
	n0.cfg.Peers[0] = pc // a restart of the harness node keeps it
	if got := n0.eng.Status().Peers[0].Protocol; got != protocols.A {
		t.Fatalf("after the change the peer's protocol is %v, want A", got)
	}
	c.submit(n0, Request{Kind: ReqWrite, Offset: uint64(c.block), Length: uint64(c.block), Data: slices.Repeat([]byte{8}, int(c.block))})
	if err := c.connect(n0, n1); err != nil {
		t.Fatal(err)
	}
	c.stabilize()
	c.submit(n0, Request{Kind: ReqWrite, Offset: 2 * uint64(c.block), Length: uint64(c.block), Data: slices.Repeat([]byte{9}, int(c.block))})
	c.stabilize()
	c.checkConverged()
}

// TestReconfigureMaxBufferReleasesHeldWrites: writes held because the
// peer's unacknowledged data would exceed max_buffer (congestion policy
// block) go on as soon as a larger max_buffer is set, without an ack.
func TestReconfigureMaxBufferReleasesHeldWrites(t *testing.T) {
	c := newCluster(2, []protocols.Protocol{protocols.A}, func(cfg *Config) {
		for i := range cfg.Peers {
			cfg.Peers[i].MaxBuffer = 8 << 10
		}
	})
	n0, n1 := c.nodes[0], c.nodes[1]
	c.primaryInSync(t, n0, n1)
	for i := range 6 {
		c.submit(n0, Request{Kind: ReqWrite, Offset: uint64(i) * uint64(c.block), Length: uint64(c.block), Data: slices.Repeat([]byte{byte(i + 1)}, int(c.block))})
	}
	for len(n0.ops) > 0 {
		c.process(n0, -1, false, nil)
	}
	held := n0.eng.Status().Pending
	if held == 0 {
		t.Fatal("no write held by an 8 KiB max_buffer with 24 KiB unacknowledged: the scenario tests nothing")
	}
	pc := n0.cfg.Peers[0]
	pc.MaxBuffer = 1 << 20
	if err := n0.eng.Reconfigure(pc); err != nil {
		t.Fatal(err)
	}
	c.handle(n0)
	if p := n0.eng.Status().Pending; p != 0 {
		t.Fatalf("%d of %d held writes still pending after max_buffer grew to 1 MiB", p, held)
	}
	c.stabilize()
	c.checkConverged()
}
