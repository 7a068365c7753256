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
// Connections in set-up, or waiting for Accept, are bounded in all and per
// source address (maxSetUps, transports.Admission): nothing authenticates
// a peer before the daemon's handshake on an accepted connection.
// Streams are independent inside QUIC, with their own flow control, so
// the control channel never waits behind data.
//
// Options.KeepAlive and IdleTimeout become quic-go's KeepAlivePeriod and
// MaxIdleTimeout. Flow-control windows may grow to 16 MiB per stream and
// 24 MiB per connection, enough to fill a long fat WAN link (quic-go
// starts them at 512 KiB and 768 KiB and grows them while the reader
// keeps up); the
// connection window is larger than one stream's so that a full data
// stream never starves the control stream.
//
// # Memory
//
// Flow control bounds what a connection holds on receipt: at most 24 MiB
// of stream data that georepl has not read. A peer that has not
// authenticated yet gets little more than the initial 768 KiB: windows
// grow only as georepl reads, and it reads the data stream only after
// the handshake. quic-go keeps each received STREAM
// frame of 128 bytes or more in a buffer of a whole packet (1452 bytes)
// and a smaller one in an allocation of its own, so a peer that sends
// many small frames makes those bytes take several times their size. On
// the sending side a Write returns once all but the last packet of its
// data are packed, and quic-go keeps what is in flight until it is
// acknowledged: at most its congestion window (10,000 packets, about
// 14 MiB) and never more than the peer's windows.
//
// Close sends CONNECTION_CLOSE with application error code 0: the peer's
// reads return io.EOF, its writes an error. Any other end of the
// connection (idle timeout, stateless reset, error code) surfaces as an
// error from every stream at once: the connection fails as a whole.
//
// # Security
//
// Everything is encrypted by TLS 1.3. With Options.TLS, the dialer and the
// listener use that configuration (with ALPN "georepl/1" added): georepl
// gives them node certificates, verified against the resource's CA, and
// the Conn's transports.PeerCertificates is the peer's chain. A listener
// whose Options.TLS has no certificate of its own, or without Options.TLS,
// presents a self-signed ECDSA P-256 certificate made in memory at Listen,
// which a dialer without Options.TLS does not verify: such a connection
// is encrypted, and authenticated only by georepl's shared-secret
// handshake. To stop a man in the middle from terminating TLS on both
// sides and relaying that proof, the Conn implements
// transports.ChannelBinding: it returns 32 bytes of TLS exported keying
// material (RFC 8446 §7.5, label "EXPORTER-georepl-channel-binding"),
// equal on both ends of one TLS session and different on each side of a
// relay. The handshake mixes them into its proof. A listener learns of a
// dialer refused for its certificate through Options.TLS's own
// verification callbacks; a dialer that refused the listener's
// certificate is seen by the listener as a failed handshake only, which
// quic-go does not report.
package quic
