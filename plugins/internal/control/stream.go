package control

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"

	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"

	"github.com/georepl/georepl/transports"
)

// # Data plane: gRPC streams
//
// A connection whose reply says DataPlaneStream gets no hand-off packet:
// the host opens one Data call per channel, a bidirectional gRPC stream on
// the go-plugin connection, naming the connection's hand-off id and the
// channel in its metadata. Each message is a Chunk: 1 to MaxChunk bytes of
// the channel, in order. The host's stream ends (it cancels the call) when
// the connection closes on its side; the plugin ends the call (status OK
// for the peer's clean end of stream, an error otherwise) when the
// channel's stream in the plugin ends.
//
// Flow control is HTTP/2's, per gRPC stream and so per channel and
// direction: a side receives at most the stream window (StreamWindow)
// beyond what its reader took, and gRPC resets a stream whose peer sends
// more. A channel whose reader stalls therefore blocks only its own
// writer. What the host holds of one channel is bounded by bytes: the
// window, one message being received (at most MaxChunk, a per-call limit,
// as go-plugin's default limit is 2 GiB) and one message being read.

// DataPlaneStream: no descriptors; the host opens a Data stream per
// channel.
const DataPlaneStream = "stream"

// DataPlanes lists every data plane, in the order the plugin prefers them
// when the host accepts several.
var DataPlanes = []string{DataPlaneSocket, DataPlaneRing, DataPlaneStream}

// LegacyDataPlanes are what a request without DataPlanes accepts: the
// data planes of hosts that came before the stream data plane.
var LegacyDataPlanes = []string{DataPlaneSocket, DataPlaneRing}

// CheckDataPlanes returns an error naming the first unknown data plane in
// planes.
func CheckDataPlanes(planes []string) error {
	for _, p := range planes {
		if !slices.Contains(DataPlanes, p) {
			return fmt.Errorf("unknown data plane %q (known: %v)", p, DataPlanes)
		}
	}
	return nil
}

// MaxChunk bounds the bytes of one Chunk; StreamWindow and ConnWindow are
// the HTTP/2 flow-control windows both sides set (a fixed window also
// turns off gRPC's estimation, which would grow it to 16 MiB).
const (
	MaxChunk     = 256 << 10
	StreamWindow = 1 << 20
	ConnWindow   = 16 << 20
)

// BytesCodecName is the gRPC content subtype of Data streams: a Chunk's
// bytes are the message, without any encoding.
const BytesCodecName = "georepl-bytes"

// Chunk is one message of a Data stream. SendMsg takes ownership of
// Data's buffers; RecvMsg gives the caller a reference it must Free.
type Chunk struct {
	Data mem.BufferSlice
}

type bytesCodec struct{}

func (bytesCodec) Marshal(v any) (mem.BufferSlice, error) {
	c, ok := v.(*Chunk)
	if !ok {
		return nil, fmt.Errorf("%s codec: cannot send a %T", BytesCodecName, v)
	}
	return c.Data, nil
}

func (bytesCodec) Unmarshal(data mem.BufferSlice, v any) error {
	c, ok := v.(*Chunk)
	if !ok {
		return fmt.Errorf("%s codec: cannot receive into a %T", BytesCodecName, v)
	}
	data.Ref()
	c.Data = data
	return nil
}

func (bytesCodec) Name() string { return BytesCodecName }

func init() { encoding.RegisterCodecV2(bytesCodec{}) }

// ErrEmptyChunk is the error of a Data stream whose peer sent a message
// without bytes: nothing legitimate does, and accepting them would let a
// plugin keep the host busy without moving data.
var ErrEmptyChunk = errors.New("a message without bytes (protocol error)")

// Metadata keys of a Data call.
const (
	mdHandoff = "georepl-handoff"
	mdChannel = "georepl-channel"
)

var dataStreamDesc = grpc.StreamDesc{
	StreamName:    "Data",
	ServerStreams: true,
	ClientStreams: true,
	Handler: func(srv any, stream grpc.ServerStream) error {
		return srv.(Server).Data(stream)
	},
}

// OpenData opens the Data stream of channel ch of the connection handed
// over under handoff. The stream lives as long as ctx.
func (c *Client) OpenData(ctx context.Context, handoff uint64, ch transports.Channel) (grpc.ClientStream, error) {
	ctx = metadata.AppendToOutgoingContext(ctx, mdHandoff, strconv.FormatUint(handoff, 10), mdChannel, strconv.Itoa(int(ch)))
	return c.conn.NewStream(ctx, &dataStreamDesc, "/"+serviceName+"/Data",
		grpc.CallContentSubtype(BytesCodecName), grpc.MaxCallRecvMsgSize(MaxChunk), grpc.MaxCallSendMsgSize(MaxChunk))
}

// DataStreamOf returns the hand-off id and channel a Data call names.
func DataStreamOf(ctx context.Context) (handoff uint64, ch transports.Channel, err error) {
	md, _ := metadata.FromIncomingContext(ctx)
	ids, chs := md.Get(mdHandoff), md.Get(mdChannel)
	if len(ids) != 1 || len(chs) != 1 {
		return 0, 0, fmt.Errorf("data stream without one %s and one %s", mdHandoff, mdChannel)
	}
	if handoff, err = strconv.ParseUint(ids[0], 10, 64); err != nil {
		return 0, 0, fmt.Errorf("data stream: %s %q: %w", mdHandoff, ids[0], err)
	}
	n, err := strconv.Atoi(chs[0])
	if err != nil || n < 0 || n >= transports.NumChannels {
		return 0, 0, fmt.Errorf("data stream: %s %q is no channel", mdChannel, chs[0])
	}
	return handoff, transports.Channel(n), nil
}

// MsgStream is what the chunk helpers need of a gRPC stream; a
// grpc.ClientStream and a grpc.ServerStream both are one.
type MsgStream interface {
	SendMsg(m any) error
	RecvMsg(m any) error
}

// SendChunks sends p on s as chunks of at most MaxChunk bytes, copied
// into pooled buffers (gRPC may still hold a message after SendMsg
// returned, and the caller may reuse p at once).
func SendChunks(s MsgStream, p []byte) (int, error) {
	sent := 0
	for len(p) > 0 {
		n := min(len(p), MaxChunk)
		if err := s.SendMsg(&Chunk{Data: mem.BufferSlice{mem.Copy(p[:n], mem.DefaultBufferPool())}}); err != nil {
			return sent, err
		}
		p, sent = p[n:], sent+n
	}
	return sent, nil
}

// ChunkReader reads the bytes of a Data stream's chunks. One goroutine
// reads at a time.
type ChunkReader struct {
	Stream MsgStream
	r      mem.Reader
}

// Read returns bytes of the current chunk, receiving the next one when it
// is used up. It returns RecvMsg's errors as they are (io.EOF when the
// peer ended the stream cleanly).
func (cr *ChunkReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if cr.r.Remaining() == 0 {
		var c Chunk
		if err := cr.Stream.RecvMsg(&c); err != nil {
			return 0, err
		}
		empty := c.Data.Len() == 0
		cr.r.Reset(c.Data)
		c.Data.Free()
		if empty {
			return 0, ErrEmptyChunk
		}
	}
	return cr.r.Read(p)
}

// WriteChunks receives chunks from s and writes their bytes to w until
// either fails; it returns nil when the peer ended the stream cleanly.
func WriteChunks(w io.Writer, s MsgStream) error {
	for {
		var c Chunk
		if err := s.RecvMsg(&c); err != nil {
			if err == io.EOF {
				return nil
			}
			return err
		}
		if c.Data.Len() == 0 {
			c.Data.Free()
			return ErrEmptyChunk
		}
		for _, b := range c.Data {
			if _, err := w.Write(b.ReadOnlyData()); err != nil {
				c.Data.Free()
				return err
			}
		}
		c.Data.Free()
	}
}
