// Command hostilestream is a test plugin that breaks the stream data
// plane: every connection it dials is on gRPC streams, and what it sends
// on them depends on its configuration {"send": "..."}:
//
//   - "oversize": one message larger than the largest chunk allowed;
//   - "empty": a message without bytes;
//   - "flood": chunks without end, logging after each how many bytes it
//     has sent in all, which georepl's flow control must stop.
package main

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
	"google.golang.org/grpc/mem"

	"github.com/georepl/georepl/plugins/internal/control"
	"github.com/georepl/georepl/plugins/sdk"
)

type hostile struct{ send string }

func (h *hostile) Configure(_ context.Context, req *control.ConfigureRequest) (*control.ConfigureReply, error) {
	var c struct{ Send string }
	if err := json.Unmarshal(req.Config, &c); err != nil {
		return nil, err
	}
	h.send = c.Send
	return &control.ConfigureReply{Version: "hostile"}, nil
}

func (h *hostile) Listen(context.Context, *control.ListenRequest) (*control.ListenReply, error) {
	return nil, fmt.Errorf("hostilestream does not listen")
}

func (h *hostile) Accept(context.Context, *control.AcceptRequest) (*control.ConnReply, error) {
	return nil, fmt.Errorf("hostilestream does not listen")
}

func (h *hostile) CloseListener(context.Context, *control.CloseListenerRequest) (*control.Empty, error) {
	return &control.Empty{}, nil
}

func (h *hostile) Dial(context.Context, *control.DialRequest) (*control.ConnReply, error) {
	addr := control.Addr{Net: "hostile", Str: "hostile"}
	return &control.ConnReply{DataPlane: control.DataPlaneStream, Local: addr, Remote: addr}, nil
}

func chunk(n int) *control.Chunk {
	return &control.Chunk{Data: mem.BufferSlice{mem.SliceBuffer(make([]byte, n))}}
}

func (h *hostile) Data(s grpc.ServerStream) error {
	switch h.send {
	case "oversize":
		s.SendMsg(chunk(control.MaxChunk + 1))
	case "empty":
		s.SendMsg(chunk(0))
	case "flood":
		for sent := 0; ; {
			if err := s.SendMsg(chunk(64 << 10)); err != nil {
				return err
			}
			sent += 64 << 10
			sdk.Logger().Info("flooding", "sent", sent)
		}
	}
	<-s.Context().Done()
	return nil
}

func main() {
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig: control.Handshake,
		Plugins:         plugin.PluginSet{control.PluginName: &control.GRPCPlugin{Impl: &hostile{}}},
		GRPCServer:      plugin.DefaultGRPCServer,
	})
}
