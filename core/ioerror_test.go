package core

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	"github.com/georepl/georepl/core/wire"
	"github.com/georepl/georepl/protocols"
	"pgregory.net/rapid"
)

// TestDetachedReadsSeeCompletedWrites drives a Primary whose disk fails
// at random moments (on_io_error detach) through random writes, reads,
// deliveries, failures, disconnects and reconnects, and checks:
//
//   - every read that succeeds returns, for each byte that no write in
//     flight could have changed, the data of the last write submitted
//     before it that completed (successfully) before the read was
//     submitted: through the local disk while it is attached, through a
//     peer in sync after, whatever the protocols;
//   - once every link is up again and the cluster settles, every request
//     has completed (none waits forever for a peer).
//
// Soak it with
//
//	go test ./core -tags invariants -run DetachedReads -rapid.checks=20000
func TestDetachedReadsSeeCompletedWrites(t *testing.T) {
	checkedRemote := 0 // bytes checked of reads a peer served
	rapid.Check(t, func(t *rapid.T) {
		protoGen := rapid.SampledFrom([]protocols.Protocol{protocols.A, protocols.B, protocols.C})
		protos := []protocols.Protocol{protoGen.Draw(t, "proto1"), protoGen.Draw(t, "proto2")}
		c := newCluster(3, protos, func(cfg *Config) {
			cfg.Size, cfg.BlockSize = 16*512, 512
			cfg.EpochMaxWrites = rapid.IntRange(1, 4).Draw(t, "epochMax")
			cfg.ResyncChunk = 1024
		})
		c.trace = true
		t.Cleanup(func() {
			if t.Failed() {
				t.Log(c.out.String())
			}
		})
		for _, pair := range [][2]int{{0, 1}, {0, 2}, {1, 2}} {
			must(t, c.connect(c.nodes[pair[0]], c.nodes[pair[1]]))
		}
		primary := c.nodes[0]
		must(t, primary.eng.Promote(true))
		c.handle(primary)
		c.stabilize()

		type writeRec struct {
			order       int // submission order
			off, length uint64
			data        []byte
			done        bool
			err         error
		}
		type readRec struct {
			off, length uint64
			buf         []byte
			order       int    // writes submitted before it
			unstable    []bool // bytes a write in flight may have changed
			remote      bool   // submitted while Diskless: a peer serves it
		}
		var writes []*writeRec
		byID := map[RequestID]*writeRec{}
		reads := map[RequestID]*readRec{}
		submitted := map[RequestID]bool{}
		markUnstable := func(off, length uint64) {
			for _, r := range reads {
				for b := max(off, r.off); b < min(off+length, r.off+r.length); b++ {
					r.unstable[b-r.off] = true
				}
			}
		}
		c.onDone = func(nd *node, id RequestID, err error) {
			if nd != primary {
				return
			}
			delete(submitted, id)
			if w := byID[id]; w != nil {
				w.done, w.err = true, err
				return
			}
			r := reads[id]
			if r == nil {
				return
			}
			delete(reads, id)
			if err != nil {
				return // no peer in sync: allowed
			}
			for i := range r.length {
				if r.unstable[i] {
					continue
				}
				b := r.off + i
				want, known := byte(0), true
				for _, w := range writes[:r.order] {
					if w.off <= b && b < w.off+w.length {
						want, known = w.data[b-w.off], w.err == nil
					}
				}
				if known && r.buf[i] != want {
					t.Fatalf("read req %d of [%d, +%d): byte %d is %q, want %q\n%s", id, r.off, r.length, b, r.buf[i], want, c.status(primary))
				}
				if known && r.remote {
					checkedRemote++
				}
			}
		}

		steps := rapid.IntRange(20, 100).Draw(t, "steps")
		for range steps {
			switch rapid.IntRange(0, 10).Draw(t, "action") {
			case 0, 1:
				off := rapid.Uint64Range(0, c.size-1).Draw(t, "off")
				length := rapid.Uint64Range(1, min(2048, c.size-off)).Draw(t, "len")
				w := &writeRec{order: len(writes), off: off, length: length,
					data: bytes.Repeat([]byte{byte('a' + len(writes)%26)}, int(length))}
				writes = append(writes, w)
				markUnstable(off, length)
				byID[c.nextReq+1] = w
				submitted[c.nextReq+1] = true
				c.submit(primary, Request{Kind: ReqWrite, Offset: off, Length: length, Data: w.data})
			case 2, 3:
				off := rapid.Uint64Range(0, c.size-1).Draw(t, "off")
				length := rapid.Uint64Range(1, min(2048, c.size-off)).Draw(t, "len")
				r := &readRec{off: off, length: length, buf: make([]byte, length), order: len(writes), unstable: make([]bool, length),
					remote: primary.eng.disk == Diskless}
				for _, w := range writes {
					if !w.done {
						for b := max(off, w.off); b < min(off+length, w.off+w.length); b++ {
							r.unstable[b-off] = true
						}
					}
				}
				reads[c.nextReq+1] = r
				submitted[c.nextReq+1] = true
				c.submit(primary, Request{Kind: ReqRead, Offset: off, Length: length, Data: r.buf})
			case 4, 5, 6:
				l := rapid.SampledFrom([][2]int{{0, 1}, {1, 0}, {0, 2}, {2, 0}}).Draw(t, "link")
				var ch *wire.Channel
				if rapid.Bool().Draw(t, "one channel") {
					v := wire.Channel(rapid.IntRange(0, 1).Draw(t, "channel"))
					ch = &v
				}
				c.deliver(c.nodes[l[0]], c.nodes[l[1]], rapid.IntRange(1, 4).Draw(t, "frames"), ch)
			case 7, 8:
				nd := c.nodes[rapid.IntRange(0, 2).Draw(t, "node")]
				odds := 20 // a secondary's failure leaves fewer peers in sync
				if nd == primary {
					odds = 5
				}
				fail := rapid.IntRange(0, odds).Draw(t, "disk error?") == 0
				c.process(nd, rapid.IntRange(1, 4).Draw(t, "ops"), fail, func(n int) int { return rapid.IntRange(0, n-1).Draw(t, "pick") })
			case 9:
				primary.eng.Detach("detached by the test")
				c.handle(primary)
			case 10:
				peer := c.nodes[rapid.IntRange(1, 2).Draw(t, "peer")]
				if primary.links[peer.id].up {
					c.sever(primary, peer, false)
				} else {
					must(t, c.connect(primary, peer))
				}
			}
		}
		for _, peer := range c.nodes[1:] {
			if !primary.links[peer.id].up {
				must(t, c.connect(primary, peer))
			}
		}
		c.stabilize()
		if len(submitted) > 0 {
			t.Fatalf("requests never completed: %v\n%s", submitted, c.status(primary))
		}
		if len(c.failed) > 0 {
			t.Fatalf("%s", fmt.Sprint(c.failed))
		}
	})
	if checkedRemote == 0 {
		t.Fatal("no byte of a read served by a peer was checked: the test checks nothing of the detached path")
	}
	t.Logf("%d bytes of reads served by peers checked", checkedRemote)
}

// TestFailedFlushMarksWhatItMayHaveLost: under pass-on, a failed flush
// (or FUA write) of a disk with a volatile cache may have lost every write
// not yet durable, and the next flush succeeds (Linux reports a writeback
// error once). The node marks what it wrote since its last successful
// flush for every peer, so that the resync makes the nodes equal again;
// a secondary also stops acknowledging (it drops its Primary).
func TestFailedFlushMarksWhatItMayHaveLost(t *testing.T) {
	for _, tt := range []struct {
		name string
		run  func(t *testing.T, c *cluster)
	}{
		{"the primary's flush fails", func(t *testing.T, c *cluster) {
			p := c.nodes[0]
			c.submit(p, Request{Kind: ReqWrite, Offset: 0, Length: 4096, Data: bytes.Repeat([]byte("a"), 4096)})
			c.stabilize()
			c.submit(p, Request{Kind: ReqFlush})
			flush := c.nextReq
			c.process(p, 1, true, nil)
			c.stabilize()
			if err, ok := p.done[flush]; !ok || err == nil {
				t.Fatalf("the failed flush completed: %v %v", ok, err)
			}
		}},
		{"a secondary's FUA write fails", func(t *testing.T, c *cluster) {
			p, s := c.nodes[0], c.nodes[1]
			c.submit(p, Request{Kind: ReqWrite, Offset: 0, Length: 4096, Data: bytes.Repeat([]byte("a"), 4096)})
			c.submit(p, Request{Kind: ReqWrite, Offset: 8192, Length: 4096, Data: bytes.Repeat([]byte("b"), 4096), FUA: true})
			c.deliver(p, s, -1, nil)
			c.process(s, 1, false, nil) // the first write: acknowledged, in the cache
			c.process(s, 1, true, nil)  // the FUA write: its flush fails
			c.stabilize()
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := newCluster(2, []protocols.Protocol{protocols.C}, func(cfg *Config) {
				cfg.OnIOError, cfg.DiskFlushes, cfg.EpochMaxWrites = PassOnIOError, true, 8
			})
			defer func() {
				if t.Failed() {
					t.Log(c.out.String())
				}
			}()
			if err := c.connect(c.nodes[0], c.nodes[1]); err != nil {
				t.Fatal(err)
			}
			if err := c.nodes[0].eng.Promote(true); err != nil {
				t.Fatal(err)
			}
			c.handle(c.nodes[0])
			c.stabilize()
			tt.run(t, c)
			for _, nd := range c.nodes {
				for _, l := range nd.links {
					if l != nil && !l.up {
						if err := c.connect(nd, c.nodes[1-nd.id]); err != nil {
							t.Fatal(err)
						}
					}
				}
			}
			c.stabilize()
			if d := c.disks(); !strings.Contains(d, "all equal") {
				t.Fatalf("the disks differ after the resync:\n%s%s%s", d, c.status(c.nodes[0]), c.status(c.nodes[1]))
			}
			for _, nd := range c.nodes {
				if st := nd.eng.Status(); st.Disk != UpToDate || st.Peers[0].Repl != Established {
					t.Fatalf("n%d: %v %v after the resync", nd.id, st.Disk, st.Peers[0].Repl)
				}
			}
		})
	}
}
