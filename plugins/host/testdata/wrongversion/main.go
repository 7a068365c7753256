// Command wrongversion is a test plugin that speaks a control protocol
// version this georepl does not.
package main

import (
	"github.com/hashicorp/go-plugin"

	"github.com/georepl/georepl/plugins/internal/control"
)

func main() {
	handshake := control.Handshake
	handshake.ProtocolVersion = control.ProtocolVersion + 1
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig: handshake,
		Plugins:         plugin.PluginSet{control.PluginName: &control.GRPCPlugin{}},
		GRPCServer:      plugin.DefaultGRPCServer,
	})
}
