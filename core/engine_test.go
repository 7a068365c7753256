package core

import (
	"errors"
	"strings"
	"testing"

	"github.com/georepl/georepl/core/wire"
	"github.com/georepl/georepl/protocols"
)

// primaryWithPeer returns a Primary in generation 7 with one connected,
// in-sync protocol C peer (node 1), its Ready drained.
func primaryWithPeer(t *testing.T) *Engine {
	t.Helper()
	e, err := New(Config{Self: 0, Name: "r0", Size: 1 << 20, Peers: []PeerConfig{{ID: 1, Protocol: protocols.C}},
		State: Persistent{Disk: UpToDate, Current: 7}, NewUUID: func() uint64 { return 8 }})
	if err != nil {
		t.Fatal(err)
	}
	ours := e.Hello(1)
	e.Connected(1, &ours, &wire.Hello{Resource: "r0", From: 1, To: 0, Size: 1 << 20, Gen: wire.GenIDs{Current: 7},
		Role: uint8(Secondary), Disk: uint8(UpToDate)})
	if err := e.Promote(false); err != nil {
		t.Fatal(err)
	}
	e.Ready()
	return e
}

// TestReceiveRejectsFramesNotAllowed checks that frames a correct peer
// never sends drop the connection with ErrProtocol instead of reaching the
// disk or the bookkeeping.
func TestReceiveRejectsFramesNotAllowed(t *testing.T) {
	tests := []struct {
		name  string
		frame wire.Frame
	}{
		{"data from a secondary to the primary", wire.Frame{Type: wire.TypeData, Seq: 1, Epoch: 1, Length: 4, Payload: []byte("abcd")}},
		{"data beyond the device", wire.Frame{Type: wire.TypeData, Offset: 1 << 20, Length: 4, Payload: []byte("abcd")}},
		{"payload shorter than its length", wire.Frame{Type: wire.TypeData, Length: 8, Payload: []byte("abcd")}},
		{"resync data without a resync", wire.Frame{Type: wire.TypeResyncData, Seq: 1, Length: 4096, Payload: make([]byte, 4096)}},
		{"write-ack for nothing", wire.Frame{Type: wire.TypeWriteAck, Seq: 99}},
		{"resync write-ack for nothing", wire.Frame{Type: wire.TypeWriteAck, Flags: wire.FlagResync, Seq: 99}},
		{"barrier-ack for an open epoch", wire.Frame{Type: wire.TypeBarrierAck, Epoch: 5}},
		{"out-of-sync outside a resync", wire.Frame{Type: wire.TypeOutOfSync, Length: 4096}},
		{"resync done without a resync", wire.Frame{Type: wire.TypeResyncDone}},
		{"a driver's frame", wire.Frame{Type: wire.TypePing}},
		{"garbled state", wire.Frame{Type: wire.TypeStateChange, Payload: []byte{1}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := primaryWithPeer(t)
			f := tt.frame
			e.Receive(1, &f)
			rd := e.Ready()
			if len(rd.Drop) != 1 || !errors.Is(rd.Drop[0].Reason, ErrProtocol) || rd.Drop[0].StandAlone {
				t.Fatalf("drops %v, want one reconnectable ErrProtocol drop", rd.Drop)
			}
			if len(rd.LocalOps) != 0 {
				t.Fatalf("local ops %v for a rejected frame", rd.LocalOps)
			}
			if st := e.Status().Peers[0]; st.Conn != Connecting {
				t.Fatalf("peer is %v after the drop", st.Conn)
			}
		})
	}
}

// TestSettledUntilPeerAcknowledgedBarrier follows one write until the
// activity log may forget its extent.
func TestSettledUntilPeerAcknowledgedBarrier(t *testing.T) {
	e := primaryWithPeer(t)
	e.Submit(Request{ID: 1, Kind: ReqWrite, Offset: 8192, Length: 4096, Data: make([]byte, 4096)})
	rd := e.Ready()
	step := func(what string, want bool) {
		t.Helper()
		if got := e.Settled(8192, 4096); got != want {
			t.Fatalf("%s: Settled = %v, want %v", what, got, want)
		}
		if !e.Settled(0, 8192) {
			t.Fatalf("%s: a range without writes is not settled", what)
		}
	}
	step("submitted", false)
	e.LocalDone(rd.LocalOps[0].ID, nil, nil)
	step("written locally", false)
	e.Receive(1, &wire.Frame{Type: wire.TypeWriteAck, Seq: rd.Messages[0].Frame.Seq})
	if rd := e.Ready(); len(rd.Completed) != 1 {
		t.Fatalf("completions %v after the write-ack", rd.Completed)
	}
	step("completed, written on the peer", false)
	e.Submit(Request{ID: 2, Kind: ReqFlush})
	rd = e.Ready()
	var barrier wire.Frame
	for _, m := range rd.Messages {
		if m.Frame.Type == wire.TypeBarrier {
			barrier = m.Frame
		}
	}
	e.Receive(1, &wire.Frame{Type: wire.TypeBarrierAck, Epoch: barrier.Epoch})
	step("barrier acknowledged", true)
}

func TestNewRejectsInvalidConfig(t *testing.T) {
	valid := func() Config {
		return Config{Self: 0, Name: "r0", Size: 1 << 20, Peers: []PeerConfig{{ID: 1, Protocol: protocols.C}},
			NewUUID: func() uint64 { return 1 }}
	}
	tests := []struct {
		name   string
		change func(*Config)
		want   string
	}{
		{"size not a multiple of the block", func(c *Config) { c.Size = 5000 }, "size"},
		{"block size not a power of two", func(c *Config) { c.BlockSize = 3000 }, "block size"},
		{"duplicate peer", func(c *Config) { c.Peers = append(c.Peers, c.Peers[0]) }, "duplicate"},
		{"peer is self", func(c *Config) { c.Peers[0].ID = 0 }, "duplicate"},
		{"unknown protocol", func(c *Config) { c.Peers[0].Protocol = 'D' }, "protocol"},
		{"no uuid source", func(c *Config) { c.NewUUID = nil }, "NewUUID"},
		{"resync chunk too large", func(c *Config) { c.ResyncChunk = 16 << 20 }, "resync chunk"},
		{"bitmap of the wrong size", func(c *Config) { c.Bitmaps = map[NodeID]*Bitmap{1: NewBitmap(3)} }, "bitmap"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := valid()
			tt.change(&cfg)
			if _, err := New(cfg); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("New: %v, want an error about %q", err, tt.want)
			}
		})
	}
	if _, err := New(valid()); err != nil {
		t.Fatalf("valid config: %v", err)
	}
}

// TestUncoveredMarksPersistBitmapsFirst: marks that no activity-log extent
// covers come with Ready.PersistBitmaps, in the Ready whose Persist ties
// them to a bitmap id, so that the driver writes them first.
func TestUncoveredMarksPersistBitmapsFirst(t *testing.T) {
	diskless, err := (&wire.State{Role: uint8(Secondary), Disk: uint8(Diskless), Repl: uint8(Established),
		Size: 1 << 20, Gen: wire.GenIDs{Current: 7}}).MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		// peer's current id at the handshake (primaryWithPeer's 7: in sync)
		peerCurrent uint64
		then        func(e *Engine)
	}{
		{"invalidate-remote", 7, func(e *Engine) {
			if err := e.InvalidateRemote(1); err != nil {
				t.Fatal(err)
			}
		}},
		{"the peer invalidates its data", 7, func(e *Engine) { e.Receive(1, &wire.Frame{Type: wire.TypeInvalidateRequest}) }},
		{"the peer announces Diskless", 7, func(e *Engine) { e.Receive(1, &wire.Frame{Type: wire.TypeStateChange, Payload: diskless}) }},
		{"a new peer gets a full sync", 0, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, err := New(Config{Self: 0, Name: "r0", Size: 1 << 20, Peers: []PeerConfig{{ID: 1, Protocol: protocols.C}},
				State: Persistent{Disk: UpToDate, Current: 7}, NewUUID: func() uint64 { return 8 }})
			if err != nil {
				t.Fatal(err)
			}
			if err := e.Promote(false); err != nil {
				t.Fatal(err)
			}
			e.Ready()
			ours := e.Hello(1)
			e.Connected(1, &ours, &wire.Hello{Resource: "r0", From: 1, To: 0, Size: 1 << 20, Gen: wire.GenIDs{Current: tt.peerCurrent},
				Role: uint8(Secondary), Disk: uint8(UpToDate)})
			if tt.then != nil {
				if rd := e.Ready(); rd.PersistBitmaps {
					t.Fatalf("PersistBitmaps asked at the handshake of a peer in sync")
				}
				tt.then(e)
			}
			rd := e.Ready()
			if got, want := e.Bitmap(1).Count(), e.Bitmap(1).Len(); got != want {
				t.Fatalf("%d of %d blocks marked", got, want)
			}
			if rd.Persist == nil || rd.Persist.BitmapUUID[1] == 0 {
				t.Fatalf("persist %+v: want the new bitmap id", rd.Persist)
			}
			if !rd.PersistBitmaps {
				t.Fatalf("the Ready that persists bitmap id %x does not ask for the marks to be written first", rd.Persist.BitmapUUID[1])
			}
		})
	}
}
