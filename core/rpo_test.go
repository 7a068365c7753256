package core

import (
	"slices"
	"testing"
	"time"

	"github.com/georepl/georepl/protocols"
)

// TestRPOTracksWhatTheAsyncPeerLacks follows a protocol A peer's RPO
// figures against the writes the test makes: completed writes the peer
// has not acknowledged count from their completion, marks left by a lost
// connection count from the oldest write they stand for, writes made
// while disconnected add their bytes, and both figures fall to zero once
// the peer caught up (acknowledged, then resynchronised).
func TestRPOTracksWhatTheAsyncPeerLacks(t *testing.T) {
	c := newCluster(2, []protocols.Protocol{protocols.A}, func(cfg *Config) { cfg.Size = 1 << 20 })
	c.quiet = true
	n0, n1 := c.nodes[0], c.nodes[1]
	c.primaryInSync(t, n0, n1)
	block := uint64(c.block)
	rpo := func() (time.Duration, uint64) {
		ps := n0.eng.Status().Peers[0]
		return ps.RPOAge, ps.RPOBytes
	}
	want := func(step string, age time.Duration, bytes uint64) {
		t.Helper()
		if a, b := rpo(); a != age || b != bytes {
			t.Fatalf("%s: RPO %v, %d bytes; want %v, %d bytes", step, a, b, age, bytes)
		}
	}
	tick := func(d time.Duration) {
		n0.eng.Tick(d)
		c.handle(n0)
	}
	write := func(b uint64) {
		c.submit(n0, Request{Kind: ReqWrite, Offset: b * block, Length: block, Data: slices.Repeat([]byte{byte(b + 1)}, int(block))})
		c.process(n0, -1, false, nil) // completes under protocol A: the frame is queued
	}
	want("in sync", 0, 0)

	write(1)
	tick(300 * time.Millisecond)
	write(2)
	write(3)
	tick(200 * time.Millisecond)
	if st := n0.eng.Status(); st.Pending != 0 {
		t.Fatalf("%d writes wait for the protocol A peer", st.Pending)
	}
	want("three writes not delivered", 500*time.Millisecond, 3*block)

	// The peer acknowledges the first write only.
	c.deliver(n0, n1, 1, nil)
	c.process(n1, -1, false, nil)
	c.deliver(n1, n0, -1, nil)
	want("first write acknowledged", 200*time.Millisecond, 2*block)

	// The connection is lost with two writes unacknowledged: they are
	// marked, and the marks are as old as they are. The first write is
	// marked too (no barrier acknowledged it, so it may sit in the peer's
	// volatile cache): its bytes count, its age does not, since the peer
	// acknowledged it.
	tick(time.Second)
	c.sever(n0, n1, false)
	want("disconnected", 1200*time.Millisecond, 3*block)
	write(10)
	tick(time.Second)
	want("a write while disconnected", 2200*time.Millisecond, 4*block)

	// Reconnected: the resync catches the peer up and the figures fall
	// to zero.
	if err := c.connect(n0, n1); err != nil {
		t.Fatal(err)
	}
	c.stabilize()
	if ps := n0.eng.Status().Peers[0]; ps.Repl != Established || ps.OutOfSync != 0 {
		t.Fatalf("after the resync: %v, %d bytes out of sync", ps.Repl, ps.OutOfSync)
	}
	want("caught up", 0, 0)
	tick(time.Second)
	write(4)
	want("a new write, not yet delivered", 0, block)
	tick(100 * time.Millisecond)
	want("a new write, 100ms later", 100*time.Millisecond, block)
	c.stabilize()
	want("delivered", 0, 0)

	// A Secondary reports no RPO.
	if ps := n1.eng.Status().Peers[0]; ps.RPOAge != 0 || ps.RPOBytes != 0 {
		t.Fatalf("secondary: RPO %v, %d bytes", ps.RPOAge, ps.RPOBytes)
	}
	// Four writes were sent; two were lost with the connection, and the
	// one made while disconnected went by resync.
	if ps := n0.eng.Status().Peers[0]; ps.WritesSent != 4 || n1.eng.Status().Peers[0].WritesReceived != 2 {
		t.Fatalf("writes sent %d, received %d; want 4 and 2",
			ps.WritesSent, n1.eng.Status().Peers[0].WritesReceived)
	}
	if len(c.failed) > 0 {
		t.Fatalf("promises broken: %v", c.failed)
	}
}

// TestSplitBrainCounted: a split brain met at a handshake is counted for
// the peer on both ends (Status.SplitBrains), as its event is raised.
func TestSplitBrainCounted(t *testing.T) {
	c := newCluster(2, nil, nil)
	c.quiet = true
	n0, n1 := c.nodes[0], c.nodes[1]
	c.primaryInSync(t, n0, n1)
	block := uint64(c.block)
	write := func(nd *node, b uint64) {
		c.submit(nd, Request{Kind: ReqWrite, Offset: b * block, Length: block, Data: slices.Repeat([]byte{byte(b + 1)}, int(block))})
		c.stabilize()
	}
	c.sever(n0, n1, false)
	write(n0, 1)
	if err := n1.eng.Promote(true); err != nil {
		t.Fatal(err)
	}
	c.handle(n1)
	write(n1, 2)
	if err := n1.eng.Demote(); err != nil {
		t.Fatal(err)
	}
	c.handle(n1)
	if err := c.connect(n0, n1); err != nil {
		t.Fatal(err)
	}
	for _, nd := range []*node{n0, n1} {
		if ps := nd.eng.Status().Peers[0]; ps.SplitBrains != 1 || ps.Conn != StandAlone {
			t.Errorf("n%d: %d split brains counted, connection %v; want 1, StandAlone", nd.id, ps.SplitBrains, ps.Conn)
		}
	}
}
