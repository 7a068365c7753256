package protocols

import (
	"testing"

	"pgregory.net/rapid"
)

// naiveMayComplete spells the rule out per protocol, independently of the
// level ordering that MayComplete relies on.
func naiveMayComplete(localDone bool, peers []Peer) bool {
	if !localDone {
		return false
	}
	for _, p := range peers {
		if !p.Connected {
			continue
		}
		switch p.Protocol {
		case A:
			if p.Level != Queued && p.Level != Received && p.Level != Written {
				return false
			}
		case B:
			if p.Level != Received && p.Level != Written {
				return false
			}
		default:
			if p.Level != Written {
				return false
			}
		}
	}
	return true
}

func genPeer() *rapid.Generator[Peer] {
	return rapid.Custom(func(t *rapid.T) Peer {
		return Peer{
			Protocol:  rapid.SampledFrom([]Protocol{A, B, C}).Draw(t, "protocol"),
			Connected: rapid.Bool().Draw(t, "connected"),
			Level:     rapid.SampledFrom([]Level{None, Queued, Received, Written}).Draw(t, "level"),
		}
	})
}

func TestMayCompleteMatchesNaive(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		local := rapid.Bool().Draw(t, "local")
		peers := rapid.SliceOfN(genPeer(), 0, 6).Draw(t, "peers")
		if got, want := MayComplete(local, peers), naiveMayComplete(local, peers); got != want {
			t.Fatalf("MayComplete(%v, %+v) = %v, naive says %v", local, peers, got, want)
		}
	})
}

// Raising any peer's level never turns a completable write into one that
// cannot complete: acks only move writes forward.
func TestMayCompleteMonotonic(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		peers := rapid.SliceOfN(genPeer(), 1, 6).Draw(t, "peers")
		before := MayComplete(true, peers)
		i := rapid.IntRange(0, len(peers)-1).Draw(t, "i")
		if peers[i].Level < Written {
			peers[i].Level++
		}
		if before && !MayComplete(true, peers) {
			t.Fatalf("raising peer %d's level blocked completion: %+v", i, peers)
		}
	})
}

// Disconnecting a peer never blocks a write: a lost peer costs the
// application nothing but the timeout.
func TestDisconnectNeverBlocks(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		peers := rapid.SliceOfN(genPeer(), 1, 6).Draw(t, "peers")
		before := MayComplete(true, peers)
		i := rapid.IntRange(0, len(peers)-1).Draw(t, "i")
		peers[i].Connected = false
		if before && !MayComplete(true, peers) {
			t.Fatalf("disconnecting peer %d blocked completion: %+v", i, peers)
		}
	})
}

func TestRequired(t *testing.T) {
	for _, tc := range []struct {
		p    Protocol
		want Level
	}{{A, Queued}, {B, Received}, {C, Written}, {Protocol(0), Written}} {
		if got := Required(tc.p); got != tc.want {
			t.Errorf("Required(%v) = %v, want %v", tc.p, got, tc.want)
		}
	}
	if !FlushNeedsPeer(C) || FlushNeedsPeer(A) || FlushNeedsPeer(B) {
		t.Error("only protocol C peers hold a flush back")
	}
}

func TestParse(t *testing.T) {
	for _, s := range []string{"A", "B", "C"} {
		p, err := Parse(s)
		if err != nil || p.String() != s {
			t.Errorf("Parse(%q) = %v, %v", s, p, err)
		}
	}
	if _, err := Parse("D"); err == nil {
		t.Error("Parse(\"D\") accepted")
	}
}
