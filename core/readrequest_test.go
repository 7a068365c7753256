package core

import (
	"errors"
	"testing"

	"github.com/georepl/georepl/core/wire"
	"github.com/georepl/georepl/protocols"
)

// TestReadRequestLength: a Primary asks a peer for at most MaxWriteLength
// bytes per read request (ReqRead is bounded so); a longer one, which
// would make the secondary read and hold as much as the device, is a
// protocol violation, refused before any local operation.
func TestReadRequestLength(t *testing.T) {
	const size = 1 << 30
	for _, tc := range []struct {
		length    uint32
		violation bool
	}{
		{MaxWriteLength, false},
		{MaxWriteLength + 4096, true},
		{size - 4096, true},
	} {
		e, err := New(Config{Self: 1, Name: "r0", Size: size, Peers: []PeerConfig{{ID: 0, Protocol: protocols.C}},
			State: Persistent{Disk: UpToDate, Current: 7}, NewUUID: func() uint64 { return 8 }})
		if err != nil {
			t.Fatal(err)
		}
		ours := e.Hello(0)
		e.Connected(0, &ours, &wire.Hello{Resource: "r0", From: 0, To: 1, Size: size, Gen: wire.GenIDs{Current: 7},
			Role: uint8(Primary), Disk: uint8(UpToDate)})
		if st := e.Status().Peers[0]; st.Repl != Established {
			t.Fatalf("the secondary is %v towards its Primary, want Established", st.Repl)
		}
		e.Ready()
		e.Receive(0, &wire.Frame{Type: wire.TypeReadRequest, Seq: 1, Offset: 0, Length: tc.length})
		rd := e.Ready()
		if !tc.violation {
			if len(rd.Drop) != 0 || len(rd.LocalOps) != 1 || rd.LocalOps[0].Kind != OpRead || rd.LocalOps[0].Length != uint64(tc.length) {
				t.Fatalf("read request of %d bytes: drops %v, local ops %v; want one read", tc.length, rd.Drop, rd.LocalOps)
			}
			continue
		}
		if len(rd.Drop) != 1 || !errors.Is(rd.Drop[0].Reason, ErrProtocol) || rd.Drop[0].StandAlone {
			t.Fatalf("read request of %d bytes: drops %v, want one reconnectable ErrProtocol drop", tc.length, rd.Drop)
		}
		if len(rd.LocalOps) != 0 {
			t.Fatalf("read request of %d bytes: local ops %v", tc.length, rd.LocalOps)
		}
	}
}
