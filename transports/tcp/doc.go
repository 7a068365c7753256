// Package tcp is georepl's TCP transport. Each channel of a connection is
// its own TCP connection, so that acknowledgements on the control channel
// never wait behind megabytes of data queued in one socket's send buffer.
//
// Use it through the registry (transports/builtin registers it as "tcp")
// or directly:
//
//	ln, err := tcp.New().Listen("0.0.0.0:7789", transports.Options{})
//	conn, err := tcp.New().Dial(ctx, "10.0.0.2:7789", transports.Options{})
//
// # Set-up
//
// The dialer opens NumChannels TCP connections to the address, all at
// once, and sends on each a 23-byte preamble:
//
//	+---------+---------+--------------------+---------+---------+
//	| "GRPL"  | version | connection id      | channel | mode    |
//	| 4 bytes | 1 byte  | 16 random bytes    | 1 byte  | 1 byte  |
//	+---------+---------+--------------------+---------+---------+
//
// The version is 2; mode is 0 for plaintext, 1 for TLS. With mode 1 both
// ends run a TLS 1.3 handshake on that TCP connection right after the
// preamble (Options.TLS of each side), and everything after it, the
// answer included, goes through TLS. The listener reads each preamble
// (and completes the TLS handshake) within 5 seconds and groups the
// TCP connections by connection id. When every channel of an id has
// arrived, it answers "GRPL", the version and a status byte 0 on each of
// them and queues the connection for Accept; Dial returns once it has read
// that answer, so a successful Dial means a georepl listener took the
// connection. A listener without Options.TLS answers a mode 1 preamble
// with status 1, in plaintext, and closes; Dial then fails with ErrNoTLS.
// A set whose channels do not all use TLS, or whose channels present
// different certificates, is closed. Dial gives
// up after 20 seconds without an answer, unless ctx ends sooner. A TCP
// connection whose preamble is garbage (wrong magic or version, unknown or
// repeated channel) is closed; a set still incomplete after 10 seconds is
// closed whole. The listener holds at most 512 TCP connections that are
// not part of a complete set, at most 128 of them from one address: a
// connection over its address's share is closed at once, and once all
// 512 are held, a new one evicts the oldest connection (with its set) of
// the address holding the most. A flood of half connections thus costs
// bounded memory and descriptors, and cannot keep out a dialer at another
// address.
//
// TCP_NODELAY is set on every channel: the replication protocol writes
// whole frames and waits for acknowledgements, and Nagle's algorithm
// combined with delayed ACKs would add tens of milliseconds to each.
// Options.KeepAlive and IdleTimeout become TCP keep-alive probes: the
// first after KeepAlive of silence, then every KeepAlive, and the
// connection fails after IdleTimeout/KeepAlive unanswered probes. On Linux
// IdleTimeout is also the TCP_USER_TIMEOUT, so that a peer that vanishes
// while data is unacknowledged is given up after IdleTimeout too, rather
// than after the kernel's retransmissions (about 15 minutes).
//
// # Failure
//
// A Conn fails as a whole. The first read or write error on any channel
// (the peer closed or reset it, or keep-alives found it dead) closes every
// TCP connection of the Conn, so that reads and writes on the other
// channel return an error at once instead of waiting for their own TCP
// connection to notice; that error wraps the first one (io.EOF after the
// peer's Close). The failure is seen by the next read or write on the
// failed channel, so a user keeps a reader on every channel (georepl
// does) to learn of it without delay. The peer notices a Close as soon as it reads: pending
// reads end with io.EOF, and a write towards a closed end fails at the
// latest with the write after the peer's kernel answered with a reset.
//
// # Security
//
// Without Options.TLS this transport is plaintext: anyone on the path can
// read and alter the replicated data. With it, every channel runs TLS 1.3
// (crypto/tls); the Conn implements transports.PeerCertificates (the
// control channel's chain: Dial and the listener check that every channel
// presents the same certificate) and transports.ChannelBinding (keying
// material exported from the control channel's TLS session, label
// "EXPORTER-georepl-channel-binding"). A listener with Options.TLS
// still accepts plaintext dialers; their Conns have no certificates, and
// the layer above refuses them where it requires TLS. TLS failures on the
// listener's side are reported to Options.SetupFailed.
package tcp
