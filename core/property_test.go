package core

import (
	"bytes"
	"errors"
	"fmt"
	"testing"

	"github.com/georepl/georepl/core/wire"
	"github.com/georepl/georepl/protocols"
	"pgregory.net/rapid"
)

// TestRandomHistoriesConverge drives a three-node resource (n0 Primary)
// through random writes, flushes, deliveries in random order, local
// operations finishing (or failing) in random order, disconnects,
// reconnects, crashes of secondaries, failovers, switchovers and site
// losses. Throughout, the harness checks that no secondary
// starts a write of a later epoch before the earlier epochs are done and
// that a write completed under protocol C is on every C peer that was
// replicating. At the end everything reconnects and settles: every request
// completed, every disk is byte-identical to the primary's, and every
// write the application made durable (FUA, or a completed flush) is there
// unless a later write overwrote it.
//
// A run takes milliseconds; before changing the engine, soak it:
//
//	go test ./core -tags invariants -run RandomHistories -rapid.checks=20000
func TestRandomHistoriesConverge(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		protoGen := rapid.SampledFrom([]protocols.Protocol{protocols.A, protocols.B, protocols.C})
		protos := []protocols.Protocol{protoGen.Draw(t, "proto1"), protoGen.Draw(t, "proto2")}
		epochMax := rapid.IntRange(1, 4).Draw(t, "epochMax")
		window := rapid.IntRange(1, 3).Draw(t, "window")
		flushes := rapid.Bool().Draw(t, "diskFlushes")
		maxBuf := rapid.Uint64Range(512, 8192).Draw(t, "maxBuffer")
		csums := rapid.SampledFrom([]wire.Csum{wire.CsumNone, wire.CsumCRC32C, wire.CsumXXH64}).Draw(t, "csums")
		congestion := rapid.SampledFrom([]Congestion{CongestionBlock, CongestionPullAhead, CongestionDisconnect}).Draw(t, "onCongestion")
		c := newCluster(3, protos, func(cfg *Config) {
			cfg.Size, cfg.BlockSize = 16*512, 512
			cfg.EpochMaxWrites, cfg.ResyncChunk, cfg.ResyncWindow, cfg.DiskFlushes = epochMax, 1024, window, flushes
			// Failed disk operations are passed on, so that every
			// disk stays attached and the cluster converges.
			cfg.OnIOError = PassOnIOError
			for i := range cfg.Peers {
				cfg.Peers[i].MaxBuffer = maxBuf
				cfg.Peers[i].Csums = csums
				if cfg.Peers[i].Protocol == protocols.A {
					cfg.Peers[i].OnCongestion = congestion
				}
			}
		})
		c.trace = true
		// The log of the whole history is printed if the test fails.
		t.Cleanup(func() {
			if t.Failed() {
				t.Log(c.out.String())
			}
		})
		for _, pair := range [][2]int{{0, 1}, {0, 2}, {1, 2}} {
			must(t, c.connect(c.nodes[pair[0]], c.nodes[pair[1]]))
		}
		must(t, c.nodes[0].eng.Promote(true))
		c.handle(c.nodes[0])
		if rapid.Bool().Draw(t, "initial sync first") {
			c.stabilize()
		}
		primary := c.nodes[0]
		submitted := map[*node][]RequestID{}
		failovers := 0
		model := newDurabilityModel(c)
		pick := func(n int) int { return rapid.IntRange(0, n-1).Draw(t, "pick") }
		// Links between the secondaries carry almost nothing: favour the
		// primary's.
		links := [][2]int{{0, 1}, {1, 0}, {0, 2}, {2, 0}, {0, 1}, {1, 0}, {0, 2}, {2, 0}, {1, 2}, {2, 1}}
		pair := func() (*node, *node) {
			l := rapid.SampledFrom(links).Draw(t, "link")
			return c.nodes[l[0]], c.nodes[l[1]]
		}
		steps := rapid.IntRange(20, 120).Draw(t, "steps")
		for range steps {
			switch rapid.IntRange(0, 9).Draw(t, "action") {
			case 0, 1, 2:
				off := rapid.Uint64Range(0, c.size-1).Draw(t, "off")
				length := rapid.Uint64Range(1, min(2048, c.size-off)).Draw(t, "len")
				r := Request{Kind: ReqWrite, Offset: off, Length: length, FUA: rapid.IntRange(0, 3).Draw(t, "fua") == 0}
				switch rapid.IntRange(0, 5).Draw(t, "kind") {
				case 0:
					r.Kind = ReqZeroes
				case 1:
					r.Kind = ReqTrim
				default:
					r.Data = bytes.Repeat([]byte{byte('a' + c.nextReq%26)}, int(length))
				}
				model.submitted(primary, c.nextReq+1, r)
				c.submit(primary, r)
				submitted[primary] = append(submitted[primary], c.nextReq)
			case 3:
				model.submitted(primary, c.nextReq+1, Request{Kind: ReqFlush})
				c.submit(primary, Request{Kind: ReqFlush})
				submitted[primary] = append(submitted[primary], c.nextReq)
			case 4, 5:
				a, b := pair()
				var ch *wire.Channel
				if rapid.Bool().Draw(t, "one channel") {
					v := wire.Channel(rapid.IntRange(0, 1).Draw(t, "channel"))
					ch = &v
				}
				c.deliver(a, b, rapid.IntRange(1, 4).Draw(t, "frames"), ch)
			case 6, 7:
				nd := c.nodes[rapid.IntRange(0, 2).Draw(t, "node")]
				// Now and then a disk operation fails, or its store
				// has no room for it.
				fail := rapid.IntRange(0, 30).Draw(t, "disk error?") == 0
				c.noSpace = fail && rapid.Bool().Draw(t, "no space?")
				c.process(nd, rapid.IntRange(1, 4).Draw(t, "ops"), fail, pick)
				c.noSpace = false
			case 8:
				a, b := pair()
				if a.links[b.id].up {
					c.sever(a, b, false)
				} else {
					must(t, c.connect(a, b))
				}
			case 9:
				switch rapid.IntRange(0, 5).Draw(t, "disaster") {
				case 0, 1:
					victim := c.nodes[rapid.IntRange(0, 2).Draw(t, "victim")]
					if victim == primary {
						continue
					}
					c.crash(victim)
				case 2:
					failovers++
					// Failover: the primary crashes (losing its outstanding
					// requests) and a secondary that was in sync with it
					// takes over. A protocol B secondary holds every
					// write it acknowledged once it applied what it
					// received.
					heirs := c.heirs(primary, true)
					c.crash(primary)
					delete(submitted, primary)
					model.crashed(primary)
					primary = c.promoteOne(heirs, primary)
				case 4:
					// Site loss: the Primary and, at the same instant,
					// the heir's volatile cache. Only what flushes made
					// durable on the heir may be relied upon.
					heirs := c.heirs(primary, false)
					if len(heirs) == 0 {
						continue
					}
					failovers++
					c.crash(primary)
					delete(submitted, primary)
					model.crashed(primary)
					c.crash(heirs[0])
					primary = c.promoteOne(heirs[:1], primary)
				case 5:
					// An operator verifies a secondary, or invalidates its
					// data from either end (refused when it makes no
					// sense).
					other := c.nodes[rapid.IntRange(0, 2).Draw(t, "invalidated")]
					if other == primary {
						continue
					}
					if rapid.IntRange(0, 2).Draw(t, "verify instead") == 0 {
						_ = primary.eng.StartVerify(NodeID(other.id))
						c.handle(primary)
					} else if rapid.Bool().Draw(t, "remote") {
						_ = primary.eng.InvalidateRemote(NodeID(other.id))
						c.handle(primary)
					} else {
						_ = other.eng.Invalidate(NodeID(primary.id))
						c.handle(other)
					}
				case 3:
					// Switchover: a clean demotion, then a promotion.
					heirs := c.heirs(primary, false)
					if primary.eng.Demote() == nil {
						c.handle(primary)
						primary = c.promoteOne(heirs, primary)
					}
				}
			}
			checkPromises(t, c)
		}
		// Reconnect everything. After crashes of the Primary, a node that
		// missed more generations than its history holds is refused
		// rather than overwritten: the operator discards its data.
		// A connection may drop while things settle (a StateChange that
		// crossed a switchover): reconnect and settle again.
		for round := 0; ; round++ {
			if round > 5 {
				t.Fatalf("links keep dropping: %v", c.lastDrop)
			}
			for _, a := range c.nodes {
				for _, b := range c.nodes[a.id+1:] {
					if a.links[b.id].standAlone {
						if failovers == 0 {
							t.Fatalf("n%d-n%d stand alone: %v", a.id, b.id, c.lastDrop)
						}
						victim := a
						if a == primary {
							victim = b
						}
						c.discard(victim)
					}
					if !a.links[b.id].up {
						must(t, c.connect(a, b))
					}
				}
			}
			c.stabilize()
			if c.allLinksUp() {
				break
			}
		}
		checkPromises(t, c)
		for nd, ids := range submitted {
			for _, id := range ids {
				if _, ok := nd.done[id]; !ok {
					t.Fatalf("request %d on n%d never completed\n%s", id, nd.id, c.status(nd))
				}
			}
		}
		model.check(t, primary.disk)
		for _, nd := range c.nodes {
			if !bytes.Equal(nd.disk, primary.disk) {
				t.Fatalf("n%d's disk differs from the primary's\n%s%s%s", nd.id, c.disks(), c.status(primary), c.status(nd))
			}
			st := nd.eng.Status()
			if st.Disk != UpToDate {
				t.Fatalf("n%d is %v after settling\n%s", nd.id, st.Disk, c.status(nd))
			}
			for _, p := range st.Peers {
				// Secondaries keep marks for each other (writes of a lost
				// primary) until one of them is promoted.
				marksOK := p.OutOfSync == 0 || (nd != primary && c.nodes[p.ID] != primary)
				if p.Conn != Connected || p.Repl != Established || !marksOK {
					t.Fatalf("n%d towards n%d: %v %v, %d bytes out of sync\n%s", nd.id, p.ID, p.Conn, p.Repl, p.OutOfSync, c.status(nd))
				}
			}
		}
	})
}

// heirs are the secondaries an operator may promote when the Primary
// fails: protocol C peers in sync with it, in its generation, and with
// withB protocol B peers too (the Primary alone fails: they keep what
// they acknowledged in memory). Promoting anything else loses
// acknowledged writes or splits the brain, which the engine detects but
// cannot undo.
func (c *cluster) heirs(primary *node, withB bool) []*node {
	var out []*node
	for _, p := range primary.eng.Status().Peers {
		nd := c.nodes[p.ID]
		if (p.Protocol == protocols.C || (withB && p.Protocol == protocols.B)) && p.Conn == Connected && p.Repl == Established &&
			p.Disk == UpToDate && nd.eng.current == primary.eng.current {
			out = append(out, nd)
		}
	}
	return out
}

// promoteOne promotes the first heir that accepts, or else old again. A
// node still applying writes it received is promoted once they are done,
// as the driver does.
func (c *cluster) promoteOne(heirs []*node, old *node) *node {
	for _, nd := range append(heirs, old) {
		err := nd.eng.Promote(false)
		for errors.Is(err, ErrBusy) && c.process(nd, -1, false, nil) > 0 {
			err = nd.eng.Promote(false)
		}
		if err == nil {
			c.handle(nd)
			return nd
		}
	}
	panic(fmt.Sprintf("nobody can be promoted after n%d", old.id))
}

// durabilityModel knows which writes the application may rely on: those
// completed with FUA, or completed before a flush that completed, with no
// flush or FUA write failing in between. After
// any history (crashes and failovers to in-sync protocol C peers
// included), every byte must hold the value of the last such write
// covering it or of a write submitted after that one.
type durabilityModel struct {
	writes     map[RequestID]modelWrite
	completed  map[*node][]RequestID // writes completed, per Primary
	flushCover map[RequestID][]RequestID
	durable    map[RequestID]bool
}

type modelWrite struct {
	off, length uint64
	value       byte
	fua         bool
}

func newDurabilityModel(c *cluster) *durabilityModel {
	m := &durabilityModel{writes: map[RequestID]modelWrite{}, completed: map[*node][]RequestID{},
		flushCover: map[RequestID][]RequestID{}, durable: map[RequestID]bool{}}
	c.onDone = m.done
	return m
}

func (m *durabilityModel) submitted(nd *node, id RequestID, r Request) {
	if r.Kind == ReqFlush {
		m.flushCover[id] = append([]RequestID(nil), m.completed[nd]...)
		return
	}
	w := modelWrite{off: r.Offset, length: r.Length, fua: r.FUA}
	if r.Kind == ReqWrite {
		w.value = r.Data[0]
	}
	m.writes[id] = w
}

// crashed forgets what nd completed: a flush after its restart does not
// cover writes its volatile cache lost.
func (m *durabilityModel) crashed(nd *node) { delete(m.completed, nd) }

func (m *durabilityModel) done(nd *node, id RequestID, err error) {
	_, flush := m.flushCover[id]
	if err != nil && (flush || m.writes[id].fua) {
		// A failed flush may have lost what nd's volatile cache held,
		// and a later flush that succeeds does not bring it back: as
		// after a crash.
		m.crashed(nd)
	}
	if err != nil {
		return
	}
	if cover, ok := m.flushCover[id]; ok {
		for _, w := range cover {
			m.durable[w] = true
		}
		return
	}
	if w, ok := m.writes[id]; ok {
		m.completed[nd] = append(m.completed[nd], id)
		if w.fua {
			m.durable[id] = true
		}
	}
}

func (m *durabilityModel) check(t *rapid.T, disk []byte) {
	t.Helper()
	for b := range uint64(len(disk)) {
		var last RequestID
		for id := range m.durable {
			if w := m.writes[id]; w.off <= b && b < w.off+w.length && id > last {
				last = id
			}
		}
		if last == 0 {
			continue
		}
		ok := false
		for id, w := range m.writes {
			if id >= last && w.off <= b && b < w.off+w.length && w.value == disk[b] {
				ok = true
				break
			}
		}
		if !ok {
			t.Fatalf("byte %d is %q: write %d (%q) was durable, and no later write wrote that", b, disk[b], last, m.writes[last].value)
		}
	}
}

func (c *cluster) allLinksUp() bool {
	for _, a := range c.nodes {
		for _, l := range a.links {
			if l != nil && !l.up {
				return false
			}
		}
	}
	return true
}

func must(t *rapid.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func checkPromises(t *rapid.T, c *cluster) {
	t.Helper()
	if len(c.failed) > 0 {
		t.Fatalf("%s", fmt.Sprint(c.failed))
	}
}
