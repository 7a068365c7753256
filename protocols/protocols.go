// Package protocols holds georepl's write-ordering protocols A, B and C as
// pure functions.
//
// Every connection between the primary and a secondary runs one protocol. A
// write submitted by the application completes when the primary's own disk
// has it and every connected peer has reached the acknowledgement level its
// protocol requires:
//
//	A (async)      the frame is in the peer's bounded send queue
//	B (memory-ack) the peer acknowledged receipt into memory (RecvAck)
//	C (sync)       the peer acknowledged that its disk has the write (WriteAck)
//
// The package knows nothing about frames, connections or time: the engine in
// package core tracks each peer's acknowledgement level per write and asks
// MayComplete. Keeping the rule here, a few lines long, lets it be checked
// against a naive version by property tests.
package protocols

import "fmt"

// Protocol is a connection's write-ordering protocol.
type Protocol uint8

const (
	// A completes a write once it is queued for the peer. A crash of the
	// primary loses what was queued but not yet on the peer; the peer stays
	// write-order consistent because of epochs.
	A Protocol = 'A'
	// B completes a write once the peer has it in memory. Only the loss of
	// both nodes at once loses an acknowledged write.
	B Protocol = 'B'
	// C completes a write once the peer's disk has it. No single-node failure
	// loses an acknowledged write.
	C Protocol = 'C'
)

// All lists the protocols in order: A, B, C.
func All() []Protocol { return []Protocol{A, B, C} }

// Parse reads "A", "B" or "C".
func Parse(s string) (Protocol, error) {
	switch s {
	case "A", "a":
		return A, nil
	case "B", "b":
		return B, nil
	case "C", "c":
		return C, nil
	}
	return 0, fmt.Errorf("unknown protocol %q: want \"A\", \"B\" or \"C\"", s)
}

// String returns "A", "B" or "C".
func (p Protocol) String() string {
	switch p {
	case A, B, C:
		return string(rune(p))
	}
	return fmt.Sprintf("Protocol(%d)", uint8(p))
}

// Level is how far a write has progressed towards one peer. Levels are
// ordered: a peer that reached Written has also reached Received and Queued.
type Level uint8

const (
	// None: the write has not been handed to the peer's send queue.
	None Level = iota
	// Queued: the write's frame is in the peer's bounded send queue.
	Queued
	// Received: the peer acknowledged receipt (RecvAck).
	Received
	// Written: the peer acknowledged that its disk has the write (WriteAck).
	Written
)

func (l Level) String() string {
	switch l {
	case None:
		return "none"
	case Queued:
		return "queued"
	case Received:
		return "received"
	case Written:
		return "written"
	}
	return fmt.Sprintf("Level(%d)", uint8(l))
}

// Required is the level a peer under protocol p must reach before a write may
// complete to the application.
func Required(p Protocol) Level {
	switch p {
	case A:
		return Queued
	case B:
		return Received
	default:
		// Unknown protocols are treated as the strictest one: waiting too
		// long is a performance bug, completing too early loses data.
		return Written
	}
}

// Satisfied reports whether a peer under protocol p that reached level got
// lets the write complete.
func Satisfied(p Protocol, got Level) bool { return got >= Required(p) }

// Peer is one peer's view of one write.
type Peer struct {
	Protocol Protocol
	// Connected is false for a peer that is not replicating right now
	// (disconnected, or not yet established). Such a peer never holds a
	// write back: its blocks are marked in its out-of-sync bitmap instead.
	Connected bool
	Level     Level
}

// MayComplete reports whether a write may complete to the application: the
// local write is done and every connected peer reached its protocol's level.
func MayComplete(localDone bool, peers []Peer) bool {
	if !localDone {
		return false
	}
	for _, p := range peers {
		if p.Connected && !Satisfied(p.Protocol, p.Level) {
			return false
		}
	}
	return true
}

// FlushNeedsPeer reports whether a flush (barrier) must wait for a peer's
// BarrierAck before completing. Only protocol C promises durability on the
// peer, so only C peers hold a flush back.
func FlushNeedsPeer(p Protocol) bool { return p == C }
