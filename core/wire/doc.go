// Package wire is georepl's frame format: how every message between two
// nodes is laid out, checksummed, batched and compressed, on every
// transport and plugin alike. It imports no other georepl package.
//
// # Frame format
//
// A frame is a fixed 44-byte header, all integers little-endian, followed
// by the payload:
//
//	 0                   1                   2                   3
//	 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|               magic "GRPL" (47 52 50 4c)                      |  0
//	+---------------+---------------+-------------------------------+
//	|  version (1)  |     type      |             flags             |  4
//	+---------------+---------------+-------------------------------+
//	|                          seq (u64)                            |  8
//	|                                                               |
//	+---------------------------------------------------------------+
//	|                         epoch (u64)                           | 16
//	|                                                               |
//	+---------------------------------------------------------------+
//	|                         offset (u64)                          | 24
//	|                                                               |
//	+---------------------------------------------------------------+
//	|                         length (u32)                          | 32
//	+---------------------------------------------------------------+
//	|                     payload length (u32)                      | 36
//	+---------------------------------------------------------------+
//	|                       CRC32C (u32)                            | 40
//	+---------------------------------------------------------------+
//	|               payload (payload length bytes) ...              | 44
//	+---------------------------------------------------------------+
//
// The CRC32C (Castagnoli) covers header bytes 0 to 39, then the payload.
// length is the size of the device range a frame concerns, which differs
// from the payload length for zeroes, trim and out-of-sync frames. The
// Type constants say which fields each message uses; Intro, Hello and
// State define the payloads of TypeIntro, TypeHello and TypeStateChange
// (MarshalBinary documents their layout). Decoders reject a payload length above
// MaxPayload before allocating anything.
//
// # Buffers
//
// AppendFrame encodes one frame onto a byte slice; DecodeFrame decodes one
// from the start of a buffer (its Payload aliases the buffer) and returns
// ErrTruncated while the buffer holds less than a whole frame.
//
// # Streams
//
// A connection's channel is an ordered byte stream: write to it through a
// Writer, read from it through a Reader.
//
//	w := wire.NewWriter(conn, wire.CompressionLZ4)
//	for _, f := range frames {
//		if err := w.WriteFrame(f); err != nil { ... } // copies f
//	}
//	if err := w.Flush(); err != nil { ... } // one Write call
//
//	r := wire.NewReader(conn)
//	for {
//		f, err := r.ReadFrame() // f is the caller's to keep
//		if err == io.EOF { break } // peer closed between frames
//		if err != nil { ... }      // drop the connection
//	}
//
// The Writer buffers frames until Flush, and flushes by itself when
// MaxBuffered bytes are waiting. With CompressionLZ4, a flush of at least
// MinCompressBatch bytes is LZ4 block-compressed as a whole and sent as one
// TypeBatch frame (FlagCompressed, length = uncompressed size) when that
// saves at least 1/16 of the bytes; otherwise, as always below the
// threshold, the frames go out as they are. The Reader unpacks batches, so its user sees the frames as they
// were written. Single writes are not compressed one by one: LZ4 gains
// little on 4 KiB and the batch amortises the header.
//
// # Errors
//
// Errors wrap the sentinels ErrBadMagic, ErrVersion (*VersionError),
// ErrChecksum, ErrTooLarge, ErrTruncated, ErrUnknownType and ErrMalformed,
// and their messages name the frame and field concerned. Any of them on a
// connection means it lost step with its peer: drop it; the peer
// reconnects and the two resynchronise from their bitmaps.
//
// # Handshake
//
// Each side sends an Intro (resource, node ids, version, features and a
// fresh random nonce) on the control channel, then, having read the
// peer's Intro, a TypeAuth frame carrying AuthMAC over both nonces and
// ids, and checks the peer's with CheckAuthMAC. Only once the peer's proof
// verified does a side send its Hello, which carries its state
// (generation ids, size, role, split-brain inputs): nobody learns a
// node's state without the secret. Until then a side reads with
// NewPreAuthReader, which bounds what an unauthenticated peer can make it
// read. A side that refuses the peer (bad MAC, unknown resource or node,
// incompatible version) sends TypeRefuse with a short UTF-8 reason and
// closes. docs/wire-format.md in the repository describes the whole
// protocol.
package wire
