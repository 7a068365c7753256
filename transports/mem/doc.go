// Package mem is an in-memory transport for tests: connections are
// buffered pipes between endpoints named by strings inside one Network, with
// no sockets, no goroutines and no timing of its own, and a fault injector
// to cut connections.
//
// A test creates a Network, which is itself a transports.Transport, listens
// on a name and dials that name:
//
//	net := mem.NewNetwork()
//	ln, err := net.Listen("secondary", transports.Options{})
//	...
//	conn, err := net.Dial(ctx, "secondary", transports.Options{})
//
// Each channel of a connection is a pair of pipes (one per direction) that
// buffer PipeCapacity bytes; a writer blocks when the pipe is full, exactly
// like a TCP send buffer, so flow-control scenarios behave as on a network.
//
// Network.Break(addr) makes every connection with an end at addr fail at
// once on both ends with ErrBroken, the way a dead peer or a cut link does.
// A dialed connection's LocalAddr is unique ("dial-N"), so breaking it cuts
// exactly that connection; breaking a listener's address cuts every
// connection accepted there. The listener itself keeps listening, so the
// code under test can reconnect.
//
// mem is not registered by transports/builtin: it exists only within one
// process, for tests of the packages above the transport.
package mem
