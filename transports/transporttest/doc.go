// Package transporttest is the conformance suite every georepl transport
// must pass, built-ins and plugins alike, and a pair of benchmarks to
// compare transports side by side.
//
// A transport's test calls Run with a function that returns a fresh
// transport and an address to listen on:
//
//	func TestConformance(t *testing.T) {
//		transporttest.Run(t, func(t *testing.T) (transports.Transport, string) {
//			return tcp.New(), "127.0.0.1:0"
//		})
//	}
//
// Run calls newTransport once per subtest. The listen address may ask for
// an ephemeral port: the suite dials what Listener.Addr reports. The
// subtests check what the transports package promises:
//
//   - RoundTrip: bytes go both ways on every channel; addresses are set.
//   - Ordering: many writes of varying sizes arrive complete and in order
//     on every channel in both directions at once.
//   - LargeTransfer: 64 MiB on the data channel arrive intact (SHA-256).
//   - ChannelIndependence: while the data channel's writer is blocked on a
//     peer that does not read, the control channel still round-trips.
//   - FullDuplex: on one stream, both ends write and read at once.
//   - CloseUnblocksPeer, CloseUnblocksLocal: Close on either end ends the
//     other end's and its own blocked reads and writes with an error within
//     a bounded time.
//   - DialClosedAddress: dialing an address nobody listens on fails.
//   - DialCancelledContext: Dial returns ctx's error for a cancelled context.
//   - DialDeadlineSilentPeer: for "host:port" addresses, Dial returns ctx's
//     error when its deadline passes while the peer never answers (a silent
//     TCP and UDP port on the same number); skipped for other addresses.
//   - AcceptContext: Accept honours ctx and returns net.ErrClosed once the
//     listener is closed, also to a blocked Accept.
//   - NoGoroutineLeak: many sequential connections leave no goroutine
//     behind (checked with goleak).
//
// Bench measures one-connection throughput on the data channel (1 MiB
// writes) and a 4 KiB ping-pong on the control channel.
package transporttest
