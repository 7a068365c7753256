// Command streamonly is a test plugin: the built-in tcp transport, whose
// connections the plugin carries on gRPC streams only (the fallback data
// plane), although its streams are sockets it could hand over.
package main

import (
	"github.com/georepl/georepl/plugins/sdk"
	"github.com/georepl/georepl/transports/tcp"
)

func main() { sdk.Serve(tcp.New(), sdk.DataPlanes(sdk.DataPlaneStream)) }
