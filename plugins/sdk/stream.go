package sdk

import (
	"io"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"

	"github.com/georepl/georepl/plugins/internal/control"
	"github.com/georepl/georepl/transports"
)

// streamAttachTimeout bounds the wait for georepl's Data calls of a
// connection answered with the stream data plane: georepl opens them right
// after the answer, unless it gave up on the connection in between.
var streamAttachTimeout = 10 * time.Second

// streamConn is a connection carried on gRPC streams, until georepl's Data
// call of every channel came.
type streamConn struct {
	c        transports.Conn
	stop     func() // closes c, once
	attached [transports.NumChannels]bool
	expire   *time.Timer
}

// awaitStreams keeps c under id for georepl's Data calls, and closes it if
// they do not all come within streamAttachTimeout.
func (s *server) awaitStreams(id uint64, c transports.Conn) {
	sc := &streamConn{c: c, stop: sync.OnceFunc(func() { c.Close() })}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.streams[id] = sc
	sc.expire = time.AfterFunc(streamAttachTimeout, func() {
		s.mu.Lock()
		expired := s.streams[id] == sc
		delete(s.streams, id)
		s.mu.Unlock()
		if expired {
			logger.Warn("georepl did not open every data stream of a connection; closing it", "handoff", id)
			sc.stop()
		}
	})
}

// attach returns the connection of a Data call for channel ch of id.
func (s *server) attach(id uint64, ch transports.Channel) (*streamConn, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sc := s.streams[id]
	if sc == nil {
		return nil, status.Errorf(codes.NotFound, "no connection awaits data streams under hand-off id %d", id)
	}
	if sc.attached[ch] {
		return nil, status.Errorf(codes.AlreadyExists, "channel %d of hand-off id %d has its data stream already", ch, id)
	}
	sc.attached[ch] = true
	done := true
	for _, a := range sc.attached {
		done = done && a
	}
	if done {
		delete(s.streams, id)
		sc.expire.Stop()
	}
	return sc, nil
}

// Data carries one channel of a connection on the stream data plane:
// chunks from georepl are written to the channel's stream, and what the
// stream reads is sent to georepl, until either ends. Then the whole
// connection closes, as a connection fails as a whole.
func (s *server) Data(stream grpc.ServerStream) error {
	id, ch, err := control.DataStreamOf(stream.Context())
	if err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	sc, err := s.attach(id, ch)
	if err != nil {
		return err
	}
	defer sc.stop()
	go func() {
		// Returns when sc closes or, once Data returned, when the call
		// ends.
		defer sc.stop()
		control.WriteChunks(sc.c.Stream(ch), stream)
	}()
	return sendStream(stream, sc.c.Stream(ch))
}

// sendStream sends what r reads to georepl, read straight into pooled
// buffers that gRPC frees once they are on the wire. A clean end of r
// (io.EOF) ends the call with status OK, which georepl reads as the end of
// the channel.
func sendStream(stream grpc.ServerStream, r io.Reader) error {
	pool := mem.DefaultBufferPool()
	for {
		buf := pool.Get(control.MaxChunk)
		n, err := r.Read(*buf)
		if n > 0 {
			*buf = (*buf)[:n]
			if serr := stream.SendMsg(&control.Chunk{Data: mem.BufferSlice{mem.NewBuffer(buf, pool)}}); serr != nil {
				return serr
			}
		} else {
			pool.Put(buf)
		}
		switch {
		case err == io.EOF:
			return nil
		case err != nil:
			return status.Error(codes.Unavailable, err.Error())
		}
	}
}
