// Package nbd serves Devices over the NBD protocol, so that the kernel's
// nbd driver, qemu, fio, nbdcopy and the other libnbd tools can use a
// georepl resource as a disk, and provides a small client for georepl's own
// demo and tests.
//
// # Serving
//
// A Server asks its Lookup for the Device behind the export name a client
// chooses. Refusing is part of the job: the error's text reaches the client.
//
//	srv := nbd.NewServer(func(name string) (nbd.Device, error) {
//		res, ok := resources[name]
//		if !ok {
//			return nil, fmt.Errorf("%w: %q", nbd.ErrNoSuchExport, name)
//		}
//		if !res.Primary() {
//			return nil, fmt.Errorf("resource %s is Secondary on this node; connect to its Primary", name)
//		}
//		return res, nil
//	}, logger)
//	l, err := nbd.Listen("unix:/run/georepl/r0.sock") // or "tcp:127.0.0.1:10809"
//	if err != nil {
//		return err
//	}
//	go srv.Serve(l) // returns nbd.ErrServerClosed after srv.Close
//	...
//	srv.CloseConnections() // e.g. before demoting: drops clients, waits for their requests
//	srv.Close()            // stops listening too
//
// NewStoreDevice exports local storage (a kmod.Backing or kmod.Region)
// without replication.
//
// # What the server speaks
//
// Fixed newstyle negotiation with NBD_OPT_GO, NBD_OPT_INFO,
// NBD_OPT_EXPORT_NAME, NBD_OPT_LIST (with WithExportList), NBD_OPT_ABORT
// and, with WithTLS, NBD_OPT_STARTTLS; simple replies only.
//
// With WithTLS the server insists on TLS (the protocol's FORCEDTLS mode):
// before the TLS handshake every option but NBD_OPT_STARTTLS and
// NBD_OPT_ABORT gets NBD_REP_ERR_TLS_REQD, NBD_OPT_EXPORT_NAME ends the
// connection, and Lookup is not called, so a client learns nothing of an
// export before its certificate was checked. A second NBD_OPT_STARTTLS is
// NBD_REP_ERR_INVALID; bytes a client sends after NBD_OPT_STARTTLS before
// its acknowledgement end the connection (they came in the clear, and
// must not pass for part of the TLS session). Without WithTLS,
// NBD_OPT_STARTTLS gets NBD_REP_ERR_UNSUP. DialTLS is the client's side.
// Commands: READ, WRITE, FLUSH, TRIM, WRITE_ZEROES (FUA on all of them,
// NO_HOLE on WRITE_ZEROES) and DISC. Block sizes: minimum 1, preferred 4096,
// maximum payload MaxPayload (32 MiB).
//
// Requests are pipelined: one goroutine per connection reads requests, each
// request runs in its own goroutine (at most 128 per connection), and
// replies go back whole, in completion order. What a connection holds in
// memory (write payloads read and not yet carried out, replies not yet
// written to its socket, and a little per request) is bounded:
// DefaultConnQueueLimit per connection, DefaultTotalQueueLimit for the
// connections of all Servers of the process together (WithQueueLimits
// sets others). A connection at its bound reads no further request until
// replies are written, so a client that does not read its replies stalls
// itself, not the others. The protocol's ordering rules
// then rest on the Device: a write's reply is sent only after
// Device.WriteAt returned (or an AsyncWriter completed it), and a flush
// runs Device.Flush (or FlushAsync) after reading the flush request, so it
// covers every write whose reply the client had seen.
//
// A request the server has read is always carried out, even if the client
// disconnects meanwhile or the server is closing; only its reply is lost. A
// write payload above MaxPayload or a request without the request magic
// closes the connection, since the stream can no longer be trusted.
//
// # Errors the client sees
//
// The server refuses, without calling the Device, requests beyond the end of
// the export (EINVAL for reads and trims, ENOSPC for writes and
// write-zeroes, as the protocol asks), writes to a read-only export (EPERM),
// unknown commands and flags (EINVAL). Device errors map as: ErrReadOnly →
// EPERM, ErrOutOfRange → EINVAL, errors wrapping ENOSPC, EDQUOT or EFBIG →
// ENOSPC, *ClientError → its Errno, anything else → EIO (logged at error
// level, since the client only learns "I/O error").
//
// # Client
//
//	c, err := nbd.Dial(ctx, "unix:/run/georepl/r0.sock", "r0")
//	if err != nil {
//		return err // an *ExportError carries the server's refusal text
//	}
//	defer c.Close()
//	if err := c.WriteAt(block, 4096, false); err != nil {
//		return err // errors.Is(err, syscall.ENOSPC) etc.
//	}
//	err = c.Flush()
//
// A Client's methods may be called concurrently; concurrent calls are in
// flight together on the one connection.
package nbd
