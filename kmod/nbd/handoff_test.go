package nbd

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

// TestNegotiateHandsOff negotiates, then speaks the transmission phase by
// hand on the same connection, as the kernel does after NBD_CMD_CONNECT.
func TestNegotiateHandsOff(t *testing.T) {
	dev := newMemDevice(1 << 20)
	dev.multiConn = true
	srv := startServer(t, map[string]Device{"r0": dev})
	nc, err := net.Dial("unix", srv.path)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	exp, err := Negotiate(ctx, nc, "r0")
	if err != nil {
		t.Fatal(err)
	}
	if exp.Size != 1<<20 {
		t.Errorf("size %d", exp.Size)
	}
	for _, f := range []uint16{FlagSendFlush, FlagSendFUA, FlagSendTrim, FlagCanMultiConn} {
		if exp.Flags&f == 0 {
			t.Errorf("flags %#x lack %#x", exp.Flags, f)
		}
	}
	if exp.Flags&FlagReadOnly != 0 {
		t.Errorf("flags %#x say read-only", exp.Flags)
	}

	payload := bytes.Repeat([]byte{0xa5}, 4096)
	req := binary.BigEndian.AppendUint32(nil, magicRequest)
	req = binary.BigEndian.AppendUint16(req, 0)
	req = binary.BigEndian.AppendUint16(req, cmdWrite)
	req = binary.BigEndian.AppendUint64(req, 42)
	req = binary.BigEndian.AppendUint64(req, 8192)
	req = binary.BigEndian.AppendUint32(req, uint32(len(payload)))
	req = append(req, payload...)
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := nc.Write(req); err != nil {
		t.Fatal(err)
	}
	var reply [16]byte
	if _, err := io.ReadFull(nc, reply[:]); err != nil {
		t.Fatal(err)
	}
	if m, e, c := binary.BigEndian.Uint32(reply[:]), binary.BigEndian.Uint32(reply[4:]), binary.BigEndian.Uint64(reply[8:]); m != magicSimpleReply || e != 0 || c != 42 {
		t.Fatalf("reply magic %#x error %d cookie %d", m, e, c)
	}
	if got := dev.snapshot()[8192 : 8192+4096]; !bytes.Equal(got, payload) {
		t.Error("write through the handed-off connection did not land")
	}
}

func TestNegotiateRefused(t *testing.T) {
	srv := startServer(t, map[string]Device{"r0": newMemDevice(4096)})
	nc, err := net.Dial("unix", srv.path)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	_, err = Negotiate(context.Background(), nc, "nope")
	var exportErr *ExportError
	if !errors.As(err, &exportErr) || !errors.Is(err, ErrNoSuchExport) {
		t.Fatalf("err = %v; want an *ExportError that Is ErrNoSuchExport", err)
	}
}

// TestHandoffAsConnectionEnds passes the reader role from another
// goroutine (WillBlock) just as the reader finishes its request on a
// connection about to end, while transmit already waits for its
// goroutines: the new reader must be counted before the old one can
// see the role gone and end, or transmit's wait group drops to zero in
// between (under -race: Add racing Wait; without, at times the
// runtime's panic "WaitGroup misuse: Add called concurrently with
// Wait", or transmit returning with a reader still to start). The
// window is a few instructions wide: many connections try it.
func TestHandoffAsConnectionEnds(t *testing.T) {
	defer func(g time.Duration) { inlineGrace = g }(inlineGrace)
	inlineGrace = time.Hour // only WillBlock passes the role
	dev := newMemDevice(1 << 20)
	dev.beforeWrite = func(ctx context.Context, off uint64) {
		if off == 0 {
			// The first reader, transmit's own goroutine, hands the role
			// on and ends: transmit waits.
			WillBlock(ctx)
			return
		}
		go WillBlock(ctx)
	}
	s := startServer(t, map[string]Device{"r0": dev})
	for i := range 3000 {
		c := dial(t, s.spec, "r0")
		if err := c.WriteAt([]byte("first"), 0, false); err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		if err := c.WriteAt([]byte("second"), 4096, false); err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		c.Close()
	}
}
