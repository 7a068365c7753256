package host

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/georepl/georepl/plugins/internal/control"
	"github.com/georepl/georepl/transports"
)

// openStreamConn opens the Data streams of a connection the plugin set up
// under hand-off id and carries on the stream data plane: the fallback,
// whose bytes cross the plugin's gRPC connection. Like a ring
// connection, it fails when the plugin exits.
func openStreamConn(name string, ctl *control.Client, id uint64, reply *control.ConnReply) (transports.Conn, error) {
	c := &conn{name: name, plane: control.DataPlaneStream, local: reply.Local, remote: reply.Remote, done: make(chan struct{})}
	// The streams live as long as the connection: Close cancels them.
	ctx, cancel := context.WithCancel(context.Background())
	closeStreams := cancel
	for ch := range transports.Channel(transports.NumChannels) {
		cs, err := ctl.OpenData(ctx, id, ch)
		if err != nil {
			closeStreams()
			return nil, fmt.Errorf("plugin %q: open the data stream of channel %d: %w", name, ch, err)
		}
		c.streams[ch] = stream{conn: c, ch: ch, sock: &grpcStream{cs: cs, cancel: closeStreams, in: control.ChunkReader{Stream: cs}}}
	}
	go c.failWhenGone(ctl.Done())
	return withBinding(c, reply), nil
}

// grpcStream is a channel over a Data stream. A plugin's bytes are
// hostile: what one holds is bounded by bytes (package control), and a
// message without bytes is a protocol error.
type grpcStream struct {
	cs     grpc.ClientStream
	cancel context.CancelFunc
	in     control.ChunkReader
}

func (g *grpcStream) Read(p []byte) (int, error) {
	n, err := g.in.Read(p)
	if err != nil && err != io.EOF { // io.EOF: the plugin ended the stream cleanly (the peer closed)
		err = streamError(err)
	}
	return n, err
}

func (g *grpcStream) Write(p []byte) (int, error) {
	n, err := control.SendChunks(g.cs, p)
	if err == io.EOF {
		// The call ended; its status is the reader's to receive.
		err = fmt.Errorf("data stream ended: %w", net.ErrClosed)
	} else if err != nil {
		err = streamError(err)
	}
	return n, err
}

// Close ends every stream of the connection: the plugin closes its side.
func (g *grpcStream) Close() error {
	g.cancel()
	return nil
}

// streamError keeps net.ErrClosed for a stream this side cancelled.
func streamError(err error) error {
	if errors.Is(err, context.Canceled) || status.Code(err) == codes.Canceled {
		return fmt.Errorf("data stream: %w", net.ErrClosed)
	}
	return fmt.Errorf("data stream: %w", err)
}
