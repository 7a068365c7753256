// Package quic is georepl's QUIC transport (on quic-go): one QUIC
// connection per Conn, one bidirectional stream per channel, encrypted
// with TLS 1.3.
//
// Use it through the registry (transports/builtin registers it as "quic")
// or directly:
//
//	ln, err := quic.New().Listen("0.0.0.0:7789", transports.Options{})
//	conn, err := quic.New().Dial(ctx, "10.0.0.2:7789", transports.Options{})
//
// # Set-up
//
// The dialer opens a QUIC connection with ALPN "georepl/1", then one
// bidirectional stream per channel, on each of which it writes the channel
// index (one byte) at once: a QUIC stream is not announced to the peer
// before data is sent on it. The listener accepts exactly NumChannels
// streams within 5 seconds, reads their index bytes and hands the
// connection to Accept; a connection that opens a stream with a bad or
// repeated index, or too few streams in time, is closed with an error code.
// Streams are independent inside QUIC, with their own flow control, so
// the control channel never waits behind data.
//
// Options.KeepAlive and IdleTimeout become quic-go's KeepAlivePeriod and
// MaxIdleTimeout. Flow-control windows may grow to 16 MiB per stream and
// 64 MiB per connection, enough to fill a long fat WAN link; the
// connection window is larger than one stream's so that a full data
// stream never starves the control stream.
//
// Close sends CONNECTION_CLOSE with application error code 0: the peer's
// reads return io.EOF, its writes an error. Any other end of the
// connection (idle timeout, stateless reset, error code) surfaces as an
// error from every stream at once: the connection fails as a whole.
//
// # Security
//
// Everything is encrypted by TLS 1.3. The listener creates a self-signed
// ECDSA P-256 certificate in memory at Listen, and the dialer does not
// verify it: georepl peers are not identified by a PKI but by a shared
// secret, proven in georepl's own handshake. To stop a man in the middle
// from terminating TLS on both sides and relaying that proof, the Conn
// implements transports.ChannelBinding: it returns 32 bytes of TLS
// exported keying material (RFC 8446 §7.5, label
// "EXPORTER-georepl-channel-binding"), equal on both ends of one TLS
// session and different on each side of a relay. The handshake must mix
// them into its proof; a connection used without that binding is
// encrypted but not authenticated.
package quic
