package main

import (
	"context"
	"errors"
	"strings"
	"testing"
)

func msg(h header, payload int) ([]byte, int) {
	b := make([]byte, slotSize)
	h.put(b)
	return b, hdrSize + payload
}

// TestParseHeaderRefusesHostileMessages: every field a peer sends is
// checked against the message's real length and the protocol's bounds.
func TestParseHeaderRefusesHostileMessages(t *testing.T) {
	for _, tc := range []struct {
		name string
		h    header
		n    int // bytes the receive completion reported
	}{
		{"short message", header{typ: msgCredit}, hdrSize - 1},
		{"longer than a slot", header{typ: msgData, length: slotSize}, slotSize + 1},
		{"unknown type", header{typ: 7}, hdrSize},
		{"channel out of range", header{typ: msgData, ch: numChans, length: 10}, hdrSize + 10},
		{"length beyond the message", header{typ: msgData, length: 100}, hdrSize + 10},
		{"length short of the message", header{typ: msgData, length: 5}, hdrSize + 10},
		{"empty data message", header{typ: msgData, length: 0}, hdrSize},
		{"credit message with a payload", header{typ: msgCredit, length: 4}, hdrSize + 4},
		{"credit message with a channel", header{typ: msgCredit, ch: 1}, hdrSize},
	} {
		b, _ := msg(tc.h, 0)
		if _, err := parseHeader(b, tc.n); !errors.Is(err, errProtocol) {
			t.Errorf("%s: err = %v, want errProtocol", tc.name, err)
		}
	}
	b, n := msg(header{typ: msgData, ch: 1, slots: 3, length: 100, bytes: [2]uint32{5, 6}}, 100)
	h, err := parseHeader(b, n)
	if err != nil || h.ch != 1 || h.slots != 3 || h.length != 100 || h.bytes != [2]uint32{5, 6} {
		t.Fatalf("a valid data message: %+v, %v", h, err)
	}
}

// TestFlowRefusesCreditsNeverGranted: a peer that sends beyond its
// credits, or returns credits it never had, fails the connection instead
// of growing a buffer.
func TestFlowRefusesCreditsNeverGranted(t *testing.T) {
	f := newFlow()
	if err := f.received(header{typ: msgCredit, slots: 1}); !errors.Is(err, errProtocol) {
		t.Errorf("slot credits beyond recvSlots: %v", err)
	}
	f = newFlow()
	if err := f.received(header{typ: msgCredit, bytes: [2]uint32{0, 1}}); !errors.Is(err, errProtocol) {
		t.Errorf("byte credits beyond the window: %v", err)
	}
	f = newFlow()
	for sent := 0; sent < window; sent += maxPayload {
		n := min(maxPayload, window-sent)
		if err := f.received(header{typ: msgData, length: uint32(n)}); err != nil {
			t.Fatalf("within the window, at %d bytes: %v", sent, err)
		}
		f.owedSlots = 0 // as if reported: only the bytes are at their limit
	}
	if err := f.received(header{typ: msgData, length: 1}); !errors.Is(err, errProtocol) {
		t.Errorf("a byte beyond the window: %v", err)
	}
	if err := f.received(header{typ: msgData, ch: 1, length: 1}); err != nil {
		t.Errorf("the other channel's window is its own: %v", err)
	}
	f = newFlow()
	for i := range recvSlots {
		if err := f.received(header{typ: msgData, ch: 1, length: 1}); err != nil {
			t.Fatalf("data message %d: %v", i, err)
		}
	}
	if err := f.received(header{typ: msgData, ch: 1, length: 1}); !errors.Is(err, errProtocol) {
		t.Errorf("a data message beyond the slot credits: %v", err)
	}
}

// TestFlowCreditRoundTrip: two ends' accounting, driven message by
// message, lets a sender go on forever as long as the reader reads, and
// stops it at the window while the reader does not.
func TestFlowCreditRoundTrip(t *testing.T) {
	a, b := newFlow(), newFlow()
	sent := 0
	for range 1000 {
		n := a.sendable(0, 20000)
		if n == 0 {
			t.Fatalf("sender stalled after %d bytes with a reader that reads everything (credit %d, slots %d)", sent, a.credit[0], a.slotCredits)
		}
		h := header{typ: msgData, length: uint32(n)}
		a.report(&h)
		a.sent(0, n)
		if err := b.received(h); err != nil {
			t.Fatal(err)
		}
		b.consumed(0, n)
		sent += n
		if b.creditDue() {
			c := header{typ: msgCredit}
			b.report(&c)
			if err := a.received(c); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Now the reader stops: the sender stops at the window.
	a, b = newFlow(), newFlow()
	total := 0
	for n := a.sendable(0, maxPayload); n > 0; n = a.sendable(0, maxPayload) {
		h := header{typ: msgData, length: uint32(n)}
		a.report(&h)
		a.sent(0, n)
		if err := b.received(h); err != nil {
			t.Fatal(err)
		}
		total += n
		if b.creditDue() { // slots only: the reader consumed nothing
			c := header{typ: msgCredit}
			b.report(&c)
			if err := a.received(c); err != nil {
				t.Fatal(err)
			}
		}
	}
	if total != window {
		t.Errorf("a sender to a reader that reads nothing sent %d bytes; want the window, %d", total, window)
	}
}

// TestNoDeviceError: where the kernel has no RDMA device, Listen and
// Dial say so and how to add one, instead of failing deep in librdmacm;
// where rdma_rxe is loaded but has no device (the VM rig deletes rxe0 to
// see it), they give the `rdma link add` command.
func TestNoDeviceError(t *testing.T) {
	if n, err := numDevices(); err == nil && n > 0 {
		t.Skipf("this machine has %d RDMA devices: the error cannot be seen here", n)
	}
	tr := &transport{}
	_, err := tr.Listen("127.0.0.1:0", transportsOptions())
	if !errors.Is(err, errNoDevice) {
		t.Fatalf("Listen without an RDMA device: %v; want errNoDevice", err)
	}
	t.Log(err)
	if moduleLoaded(sysRoot, "rdma_rxe") && !strings.Contains(err.Error(), "rdma link add rxe0 type rxe netdev") {
		t.Errorf("rdma_rxe is loaded without a device, and the error does not give the rdma link add command: %v", err)
	}
	if _, err := tr.Dial(context.Background(), "127.0.0.1:1", transportsOptions()); !errors.Is(err, errNoDevice) {
		t.Errorf("Dial without an RDMA device: %v; want errNoDevice", err)
	}
}
