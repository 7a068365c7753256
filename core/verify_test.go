package core

import (
	"bytes"
	"slices"
	"testing"

	"github.com/georepl/georepl/protocols"
	"pgregory.net/rapid"
)

// TestVerifyUnderWritesReportsExactlyTheCorruption: blocks of a secondary
// are corrupted behind the engine's back, then a verify runs while the
// application keeps writing to other blocks, with frames and local
// operations interleaved at random. The verify must report exactly the
// corrupted blocks (a hash racing a write would report others too, or
// miss some), change no data, and a reconnect must repair them.
func TestVerifyUnderWritesReportsExactlyTheCorruption(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		proto := rapid.SampledFrom([]protocols.Protocol{protocols.A, protocols.B, protocols.C}).Draw(t, "proto")
		window := rapid.IntRange(1, 3).Draw(t, "window")
		epochMax := rapid.IntRange(1, 4).Draw(t, "epochMax")
		const blocks = 32
		c := newCluster(2, []protocols.Protocol{proto}, func(cfg *Config) {
			cfg.Size, cfg.BlockSize = blocks*512, 512
			cfg.ResyncChunk, cfg.ResyncWindow, cfg.EpochMaxWrites = 2048, window, epochMax
		})
		c.trace = true
		t.Cleanup(func() {
			if t.Failed() {
				t.Log(c.out.String())
			}
		})
		p, s := c.nodes[0], c.nodes[1]
		must(t, c.connect(p, s))
		must(t, p.eng.Promote(true))
		c.handle(p)
		c.stabilize()

		corrupt := map[uint64]bool{}
		for range rapid.IntRange(0, 6).Draw(t, "corruptions") {
			b := rapid.Uint64Range(0, blocks-1).Draw(t, "corrupt block")
			corrupt[b] = true
			copy(s.disk[b*512:(b+1)*512], bytes.Repeat([]byte{'!'}, 512))
		}
		writable := []uint64{}
		for b := range uint64(blocks) {
			if !corrupt[b] {
				writable = append(writable, b)
			}
		}
		must(t, p.eng.StartVerify(1))
		c.handle(p)
		for range rapid.IntRange(0, 80).Draw(t, "steps") {
			switch rapid.IntRange(0, 3).Draw(t, "action") {
			case 0:
				b := rapid.SampledFrom(writable).Draw(t, "write block")
				n := uint64(1)
				if b+1 < blocks && !corrupt[b+1] && rapid.Bool().Draw(t, "two blocks") {
					n = 2
				}
				c.submit(p, Request{Kind: ReqWrite, Offset: b * 512, Length: n * 512,
					Data: bytes.Repeat([]byte{byte('a' + c.nextReq%26)}, int(n*512))})
			case 1:
				c.deliver(p, s, rapid.IntRange(1, 3).Draw(t, "frames"), nil)
			case 2:
				c.deliver(s, p, rapid.IntRange(1, 3).Draw(t, "acks"), nil)
			case 3:
				nd := c.nodes[rapid.IntRange(0, 1).Draw(t, "node")]
				c.process(nd, rapid.IntRange(1, 3).Draw(t, "ops"), false, func(n int) int {
					return rapid.IntRange(0, n-1).Draw(t, "pick")
				})
			}
		}
		c.stabilize()
		st := p.eng.Status().Peers[0]
		v := st.Verify
		if v == nil || v.Running || v.Stopped != "" || v.Done != v.Total {
			t.Fatalf("verify did not complete: %+v", v)
		}
		var got []uint64
		for _, r := range v.Ranges {
			for off := r.Offset; off < r.Offset+r.Length; off += 512 {
				got = append(got, off/512)
			}
		}
		want := []uint64{}
		for b := range corrupt {
			want = append(want, b)
		}
		slices.Sort(want)
		if !slices.Equal(got, want) || v.OutOfSync != uint64(len(want))*512 {
			t.Fatalf("verify found blocks %v (%d bytes), corrupted were %v", got, v.OutOfSync, want)
		}
		for b := range corrupt {
			if !bytes.Equal(s.disk[b*512:(b+1)*512], bytes.Repeat([]byte{'!'}, 512)) {
				t.Fatalf("verify changed corrupted block %d", b)
			}
		}
		c.sever(p, s, false)
		must(t, c.connect(p, s))
		c.stabilize()
		if !bytes.Equal(p.disk, s.disk) {
			t.Fatalf("disks differ after reconnect\n%s", c.disks())
		}
	})
}
