package wire

import (
	"fmt"
	"strings"
)

// Type is a frame's message type.
type Type uint8

// Message types. Values are part of the wire format: never renumber.
// ChannelOf says which channel each travels on.
const (
	// TypeHello carries the sender's state for the connection: generation
	// ids, size, role, disk state and split-brain inputs, after the fields
	// of its Intro. Each side sends it only once the peer's Auth verified.
	// Payload: Hello.
	TypeHello Type = 1
	// TypeAuth proves knowledge of the shared secret: HMAC over both
	// intros' nonces and node ids (see AuthMAC). Payload: the MAC.
	TypeAuth Type = 2
	// TypeRefuse tells the peer why the connection is refused before
	// closing it. Payload: a UTF-8 reason.
	TypeRefuse Type = 3
	// TypePing and TypePingAck keep the connection alive (control channel).
	TypePing    Type = 4
	TypePingAck Type = 5
	// TypeData is an application write: Seq, Epoch, Offset, Length and the
	// data as payload. FlagFUA asks the secondary to make it durable before
	// WriteAck; FlagZeroes/FlagTrim carry no payload. FlagWantRecvAck asks
	// for a RecvAck (protocol B).
	TypeData Type = 6
	// TypeRecvAck acknowledges receipt of data Seq into memory.
	TypeRecvAck Type = 7
	// TypeWriteAck acknowledges that data (or resync data) Seq reached the
	// disk. FlagNegative reports a failed write.
	TypeWriteAck Type = 8
	// TypeBarrier closes Epoch on the data channel: writes of later epochs
	// are not started before every write of Epoch is done. FlagFlush asks
	// the secondary to flush its disk before acknowledging. Seq confirms
	// that every data write up to it is on every peer it was sent to, and
	// Offset names the nodes that hold them all (bit i for node id i).
	TypeBarrier Type = 9
	// TypeBarrierAck acknowledges Barrier Epoch (control channel).
	TypeBarrierAck Type = 10
	// TypeOutOfSync tells the peer that [Offset, Offset+Length) differs and
	// is marked in the sender's bitmap for it.
	TypeOutOfSync Type = 11
	// TypeResyncData carries resync blocks from sync source to sync target:
	// Seq, Offset, Length, data. Acknowledged with WriteAck+FlagResync.
	TypeResyncData Type = 12
	// TypeStateChange announces the sender's role, disk state, replication
	// state and generation ids. Payload: State.
	TypeStateChange Type = 13
	// TypeResyncDone tells the sync target that every block of the resync
	// was sent and acknowledged. Offset: the source's holders, as in
	// TypeBarrier. Seq: 0 when every write the source sent is retired,
	// else its latest sequence number (the holders may still lack writes
	// up to it that the resync carried).
	TypeResyncDone Type = 14
	// TypeBatch wraps several frames, optionally LZ4-compressed
	// (FlagCompressed). Writer and Reader produce and unpack it; callers of
	// Reader never see it.
	TypeBatch Type = 15
	// TypeResyncCsum asks the sync target to compare blocks instead of
	// receiving them (checksum-based resync): Seq (from the counter of
	// data and resync data, so it is ordered with them), Offset, Length
	// (whole blocks). Payload: one byte, the Csum algorithm, then the
	// digest of every block of the range as the sync source has it (see
	// Csum.AppendDigests). The target hashes the same range after every
	// write received before this frame and before any received after it,
	// and answers with ResyncCsumReply.
	TypeResyncCsum Type = 16
	// TypeResyncCsumReply answers ResyncCsum Seq on the control channel,
	// echoing Offset and Length. Payload: a bit per block of the range,
	// bit i%8 of byte i/8 set when block i differs (the source then sends
	// it as ResyncData); a range that is all identical may send no
	// payload. FlagNegative: the target could not read the range.
	TypeResyncCsumReply Type = 17
	// TypeVerifyCsum is online verify's request, from the Primary to a
	// peer it replicates to: the same header and payload as ResyncCsum,
	// ordered with the writes the same way; the peer answers with
	// VerifyReply and changes nothing.
	TypeVerifyCsum Type = 18
	// TypeVerifyReply answers VerifyCsum Seq on the control channel: the
	// same fields as ResyncCsumReply.
	TypeVerifyReply Type = 19
	// TypeReadRequest asks a peer for [Offset, Offset+Length) of its disk,
	// on the data channel, so that the peer reads only after applying
	// every write sent before it: a Primary whose own disk is detached
	// serves application reads this way. Seq is the sender's tag for the
	// read, echoed in the reply. No payload.
	TypeReadRequest Type = 20
	// TypeReadReply answers ReadRequest Seq with the data of the requested
	// range as payload (Offset and Length repeated), on the data channel.
	// FlagNegative reports that the read failed or that the peer cannot
	// serve it (its disk is not UpToDate); it carries no payload.
	TypeReadReply Type = 21
	// TypeIntro opens a connection on the control channel: version,
	// features, resource, node ids and a fresh nonce, what the
	// authentication needs and nothing of the sender's state. Payload:
	// Intro.
	TypeIntro Type = 22
	// TypeResume continues a connection on a new transport connection of
	// another path (or the same one), instead of its Hello, once the
	// peer's Auth verified; the other side answers with its own. Payload:
	// the connection's session, the two Intro nonces of the transport
	// connection that started it (dialer's, then acceptor's). Seq and
	// Epoch: how many frames the sender received on the data and control
	// channels since the session started (see TypePathAck); each side
	// re-sends what follows.
	TypeResume Type = 23
	// TypePathAck confirms, on the control channel, the frames received
	// since the session started: Seq on the data channel, Epoch on the
	// control channel, pings, ping-acks and path-acks not counted. The
	// sender may forget what it keeps to re-send up to there. Only on
	// connections whose both ends advertised FeatureResume.
	TypePathAck Type = 24
	// TypeInvalidateRequest asks the Primary to resynchronise the sender
	// fully: the operator declared the sender's data bad (invalidate). No
	// fields, no payload. A node that is no longer Primary ignores it.
	TypeInvalidateRequest Type = 40
)

// String is the type's name as used in logs and error messages ("data",
// "write-ack"), or "Type(N)" for a number this build does not know.
func (t Type) String() string {
	if s, ok := typeNames[t]; ok {
		return s
	}
	return fmt.Sprintf("Type(%d)", uint8(t))
}

var typeNames = map[Type]string{
	TypeHello: "hello", TypeAuth: "auth", TypeRefuse: "refuse",
	TypePing: "ping", TypePingAck: "ping-ack", TypeData: "data",
	TypeRecvAck: "recv-ack", TypeWriteAck: "write-ack",
	TypeBarrier: "barrier", TypeBarrierAck: "barrier-ack",
	TypeOutOfSync: "out-of-sync", TypeResyncData: "resync-data",
	TypeStateChange: "state-change",
	TypeResyncDone:  "resync-done", TypeBatch: "batch",
	TypeResyncCsum: "resync-csum", TypeResyncCsumReply: "resync-csum-reply",
	TypeReadRequest: "read-request", TypeReadReply: "read-reply",
	TypeVerifyCsum: "verify-csum", TypeVerifyReply: "verify-reply",
	TypeIntro:  "intro",
	TypeResume: "resume", TypePathAck: "path-ack",
	TypeInvalidateRequest: "invalidate-request",
}

// known reports whether t is a message type of this wire version.
func (t Type) known() bool {
	_, ok := typeNames[t]
	return ok
}

// Flags qualify a frame.
type Flags uint16

// Flag bits. Values are part of the wire format.
const (
	FlagCompressed  Flags = 1 << 0 // payload is LZ4 block-compressed (batches only)
	FlagFUA         Flags = 1 << 1 // data: durable before WriteAck
	FlagFlush       Flags = 1 << 2 // barrier: flush the disk before BarrierAck
	FlagZeroes      Flags = 1 << 3 // data: write zeroes over Length, no payload
	FlagTrim        Flags = 1 << 4 // data: discard Length, no payload
	FlagWantRecvAck Flags = 1 << 5 // data: send RecvAck on receipt (protocol B)
	FlagNegative    Flags = 1 << 6 // ack: the operation failed
	FlagResync      Flags = 1 << 7 // ack: acknowledges ResyncData
	FlagMove        Flags = 1 << 8 // resume: the sender's transport connection works; it moves to a path it prefers
)

var flagNames = [...]string{
	"compressed", "fua", "flush", "zeroes", "trim", "want-recv-ack", "negative", "resync", "move",
}

// String names the set bits joined by "|" ("fua|want-recv-ack"), "0" when
// none is set, and "0x..." for bits this build does not know.
func (fl Flags) String() string {
	if fl == 0 {
		return "0"
	}
	var names []string
	for i, name := range flagNames {
		if fl&(1<<i) != 0 {
			names = append(names, name)
		}
	}
	if unknown := fl &^ (1<<len(flagNames) - 1); unknown != 0 {
		names = append(names, fmt.Sprintf("%#x", uint16(unknown)))
	}
	return strings.Join(names, "|")
}

// Channel names the ordered stream a frame travels on. Bulk data never
// delays acknowledgements because they travel on separate channels.
type Channel uint8

const (
	// ChannelData carries data, barriers, resync data and checksums,
	// out-of-sync, state-change and read frames, in order: a generation-id
	// change is ordered with the writes around it, and a read request
	// after the writes it must see.
	ChannelData Channel = 0
	// ChannelControl carries the handshake (intro, auth, hello, refuse),
	// pings and every acknowledgement.
	ChannelControl Channel = 1
)

// ChannelOf is the channel a frame of type t travels on. A TypeBatch frame
// travels on the channel of the Writer that made it, whatever ChannelOf
// says: only the frames it holds have a channel of their own.
func ChannelOf(t Type) Channel {
	switch t {
	case TypeData, TypeBarrier, TypeOutOfSync, TypeResyncData, TypeStateChange, TypeResyncDone, TypeResyncCsum,
		TypeVerifyCsum, TypeReadRequest, TypeReadReply, TypeInvalidateRequest:
		return ChannelData
	}
	return ChannelControl
}

// Frame is one message. Which fields are meaningful depends on Type (see
// the Type constants); unused fields are zero.
//
// Who owns Payload depends on where the Frame came from: DecodeFrame
// returns a Payload that aliases its input buffer, Reader.ReadFrame returns
// a freshly allocated one that belongs to the caller, and Writer.WriteFrame
// and AppendFrame copy it, so the caller may reuse it as soon as they
// return.
type Frame struct {
	Type   Type
	Flags  Flags
	Seq    uint64 // data/resync sequence number, or the one acknowledged
	Epoch  uint64 // write epoch (data, barrier, barrier-ack)
	Offset uint64 // byte offset on the device (data, resync, out-of-sync)
	Length uint32 // bytes of the device range concerned
	// Payload is the frame's body: data, or a marshalled message.
	Payload []byte
}

// String describes the frame's header for logs and error messages, e.g.
// "data seq 17 epoch 3 offset 8192 length 4096 flags fua payload 4096 bytes".
func (f *Frame) String() string {
	return fmt.Sprintf("%s seq %d epoch %d offset %d length %d flags %s payload %d bytes",
		f.Type, f.Seq, f.Epoch, f.Offset, f.Length, f.Flags, len(f.Payload))
}

// GenIDs are a node's generation identifiers, compared at connect time to
// decide sync direction (see package core).
type GenIDs struct {
	Current uint64
	Bitmap  uint64 // bitmap UUID towards the peer this is sent to; 0 if none
	History [2]uint64
}

// FeatureResume in Intro.Features: the sender keeps the frames it sent
// until TypePathAck confirms them, and can continue a connection on
// another transport connection with TypeResume.
const FeatureResume uint64 = 1 << 0

// Intro is the payload of TypeIntro, the first frame each side sends on
// the control channel: what the handshake's proof needs (see AuthMAC), and
// nothing of the sender's state, which a peer learns only once
// authenticated.
type Intro struct {
	Version  uint16 // the sender's wire version (Version)
	Features uint64 // feature bits the sender supports
	Resource string
	From     uint8    // sender's node id
	To       uint8    // node id the sender believes it is talking to
	Nonce    [32]byte // fresh random bytes, for this connection's proofs
}

// Hello is the payload of TypeHello, which each side sends once it has
// verified the peer's Auth. Its first fields repeat the sender's Intro.
type Hello struct {
	Version  uint16 // the sender's wire version (Version)
	Features uint64 // feature bits the sender supports
	Resource string
	From     uint8 // sender's node id
	To       uint8 // node id the sender believes it is talking to
	Nonce    [32]byte
	Size     uint64 // usable device size in bytes
	Gen      GenIDs // Bitmap is the sender's bitmap UUID towards To
	Role     uint8  // sender's core.Role
	Disk     uint8  // sender's core.DiskState
	// SplitBrain is what the peer needs to resolve a split brain the same
	// way as the sender. A hello from an earlier version has none: all
	// zero, which resolves nothing.
	SplitBrain SplitBrain
	// Term is the failover term the sender acts in: a Primary's is the
	// term it was promoted in, anyone else's the highest it has seen (0
	// without automatic failover, and from an earlier version). A node
	// refuses a Primary whose term is older than one it has seen.
	Term uint64
}

// SplitBrain carries, in a Hello, the inputs of the split-brain recovery
// policies (see package core): both ends apply one pure rule to the two
// hellos, so they agree on the node whose changes are discarded.
type SplitBrain struct {
	// Changes counts the blocks marked in the sender's bitmap towards To:
	// what it changed (or may have) since they were last in sync.
	Changes uint64
	// Promoted is when the sender was last promoted, in Unix nanoseconds
	// of its wall clock; 0 if unknown.
	Promoted uint64
	// Policy is the sender's core.SplitBrainPolicy for this connection,
	// and Victim the node id that its discard-node policy names.
	Policy uint8
	Victim uint8
	// Flags: SplitBrainDiscardMine, HelloFollowsPrimary.
	Flags uint8
}

const (
	// SplitBrainDiscardMine: the operator told the sender to discard its
	// own changes if the two nodes are in split brain (connect
	// --discard-my-data).
	SplitBrainDiscardMine = 1 << 0
	// HelloFollowsPrimary: the sender is a Secondary connected to a
	// Primary other than the receiver. A Primary refuses it: a node never
	// replicates two Primaries.
	HelloFollowsPrimary = 1 << 1
)

// State is the payload of TypeStateChange.
type State struct {
	Role uint8  // core.Role
	Disk uint8  // core.DiskState
	Repl uint8  // core.ReplState as seen by the sender towards the receiver
	Gen  GenIDs // Bitmap is the sender's bitmap UUID towards the receiver
	Size uint64
	Term uint64 // as in Hello
}
