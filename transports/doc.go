// Package transports defines how georepl nodes reach each other: the
// Transport interface, a registry of transports by name, and (in
// transporttest) the conformance suite every transport must pass.
//
// A transport moves bytes on ordered channels; it knows nothing about
// replication, frames or nodes. A connection carries NumChannels
// independent, ordered, reliable byte streams, so that acknowledgements on
// the control channel are never stuck behind bulk data on the data channel.
//
// A program registers the built-in transports once, looks one up by the
// name its resource file gives, and dials or listens:
//
//	builtin.Register() // "tcp" and "quic"
//	tr, err := transports.Lookup("quic")
//	conn, err := tr.Dial(ctx, "10.0.0.2:7789", transports.Options{})
//	defer conn.Close()
//	go readAcks(conn.Stream(transports.ChannelControl))
//	_, err = conn.Stream(transports.ChannelData).Write(frame)
//
// The peer listens and accepts:
//
//	ln, err := tr.Listen("0.0.0.0:7789", transports.Options{})
//	conn, err := ln.Accept(ctx)
//
// Built-in transports live in subpackages: tcp and quic, both registered
// by builtin.Register, and mem, an in-memory transport for tests that is
// not registered. Options.TLS secures a connection with TLS 1.3 (see
// transports/nodetls for georepl's node certificates). Optional abilities
// are separate interfaces found by type assertion: a connection over a
// secured channel implements ChannelBinding, which the authentication
// handshake must use, and PeerCertificates, the peer's certificate chain.
//
// Errors are values: Lookup wraps ErrUnknownTransport, invalid Options
// wrap ErrInvalidOptions, a closed listener or connection wraps
// net.ErrClosed, and a Dial cut short by its context wraps ctx.Err().
package transports
