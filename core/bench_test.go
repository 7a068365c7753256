package core

import (
	"testing"

	"github.com/georepl/georepl/core/wire"
	"github.com/georepl/georepl/protocols"
)

// BenchmarkWriteRoundTrip measures the engine's share of one replicated
// 4 KiB write on a primary with two protocol C peers: Submit, Ready, the
// local write's LocalDone, both peers' WriteAcks (and BarrierAcks for the
// barriers that open each epoch), Ready with the completion.
func BenchmarkWriteRoundTrip(b *testing.B) {
	e, err := New(Config{Self: 0, Name: "r0", Size: 1 << 30,
		Peers: []PeerConfig{{ID: 1, Protocol: protocols.C}, {ID: 2, Protocol: protocols.C}},
		State: Persistent{Disk: UpToDate, Current: 7}, NewUUID: func() uint64 { return 8 }})
	if err != nil {
		b.Fatal(err)
	}
	for _, id := range []NodeID{1, 2} {
		ours := e.Hello(id)
		e.Connected(id, &ours, &wire.Hello{Resource: "r0", From: uint8(id), To: 0, Size: 1 << 30,
			Gen: wire.GenIDs{Current: 7}, Role: uint8(Secondary), Disk: uint8(UpToDate)})
	}
	if err := e.Promote(false); err != nil {
		b.Fatal(err)
	}
	e.Ready()
	data := make([]byte, 4096)
	ack := wire.Frame{Type: wire.TypeWriteAck}
	barrierAck := wire.Frame{Type: wire.TypeBarrierAck}
	b.ReportAllocs()
	b.SetBytes(4096)
	for i := 0; b.Loop(); i++ {
		e.Submit(Request{ID: RequestID(i), Kind: ReqWrite, Offset: uint64(i%1024) * 4096, Length: 4096, Data: data})
		rd := e.Ready()
		for _, m := range rd.Messages {
			switch m.Frame.Type {
			case wire.TypeBarrier:
				barrierAck.Epoch = m.Frame.Epoch
				e.Receive(m.To, &barrierAck)
			case wire.TypeData:
				ack.Seq = m.Frame.Seq
				e.Receive(m.To, &ack)
			}
		}
		e.LocalDone(rd.LocalOps[0].ID, nil, nil)
		if rd = e.Ready(); len(rd.Completed) != 1 || rd.Completed[0].Err != nil {
			b.Fatalf("write %d: completions %v", i, rd.Completed)
		}
	}
}

// BenchmarkWritesInFlightProtocolA keeps 1024 writes unacknowledged by a
// protocol A peer (a WAN link) while the application goes on writing: the
// cost per write must not grow with the writes in flight.
func BenchmarkWritesInFlightProtocolA(b *testing.B) {
	e, err := New(Config{Self: 0, Name: "r0", Size: 1 << 30,
		Peers: []PeerConfig{{ID: 1, Protocol: protocols.A}},
		State: Persistent{Disk: UpToDate, Current: 7}, NewUUID: func() uint64 { return 8 }})
	if err != nil {
		b.Fatal(err)
	}
	ours := e.Hello(1)
	e.Connected(1, &ours, &wire.Hello{Resource: "r0", From: 1, To: 0, Size: 1 << 30,
		Gen: wire.GenIDs{Current: 7}, Role: uint8(Secondary), Disk: uint8(UpToDate)})
	if err := e.Promote(false); err != nil {
		b.Fatal(err)
	}
	e.Ready()
	data := make([]byte, 4096)
	var unacked []uint64 // data seqs the peer has not acknowledged, oldest first
	var barriers []uint64
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		e.Submit(Request{ID: RequestID(i), Kind: ReqWrite, Offset: uint64(i%(1<<18)) * 4096, Length: 4096, Data: data})
		rd := e.Ready()
		for _, m := range rd.Messages {
			switch m.Frame.Type {
			case wire.TypeData:
				unacked = append(unacked, m.Frame.Seq)
			case wire.TypeBarrier:
				barriers = append(barriers, m.Frame.Epoch)
			}
		}
		e.LocalDone(rd.LocalOps[0].ID, nil, nil)
		if len(unacked) > 1024 {
			e.Receive(1, &wire.Frame{Type: wire.TypeWriteAck, Seq: unacked[0]})
			unacked = unacked[1:]
			if len(barriers) > 1 {
				e.Receive(1, &wire.Frame{Type: wire.TypeBarrierAck, Epoch: barriers[0]})
				barriers = barriers[1:]
			}
		}
		if rd := e.Ready(); len(rd.Completed) != 1 {
			b.Fatalf("write %d: completions %v", i, rd.Completed)
		}
	}
}
