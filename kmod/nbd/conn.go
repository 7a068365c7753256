package nbd

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

const (
	// maxInFlight bounds the requests one connection runs at once; the
	// connection stops reading requests while that many are running.
	maxInFlight = 128
	// handshakeTimeout bounds the negotiation phase, so that a client that
	// connects and says nothing does not hold a connection forever.
	handshakeTimeout = 30 * time.Second
	// shutdownWriteGrace bounds how long replies may still be sent once a
	// connection is being shut down, so that a client that stopped reading
	// cannot hold up Close.
	shutdownWriteGrace = 5 * time.Second
	// connReadBufferSize is the size of a connection's read buffer.
	connReadBufferSize = 64 << 10
)

// inlineGrace is how long a request may run on the reader before a new
// reader takes over (see transmitter). A variable for the tests.
var inlineGrace = 2 * time.Millisecond

// errClientAborted ends a negotiation the client aborted with NBD_OPT_ABORT.
var errClientAborted = errors.New("client aborted the negotiation")

// conn is one client connection.
type conn struct {
	srv *Server
	// raw is the accepted socket: deadlines and shutdown act on it. nc is
	// what the connection speaks through: raw, or the TLS session over it
	// once NBD_OPT_STARTTLS succeeded (only negotiate replaces it, before
	// any other goroutine of the connection uses it).
	raw  net.Conn
	nc   net.Conn
	br   *bufio.Reader
	log  *slog.Logger
	done chan struct{} // closed when the connection is finished

	// deadlineMu orders deadline changes with shutdown, so that clearing the
	// handshake deadline cannot undo a shutdown. stopping is closed at
	// shutdown, for a reader waiting for room in queued.
	deadlineMu   sync.Mutex
	shuttingDown bool
	stopping     chan struct{}

	// queued counts what the connection holds: every request is charged
	// (hold) before the reader reads its payload or runs it, and the
	// charge is given back (unhold) as the server lets go of the memory:
	// a write's payload when the Device is done with the request, the
	// reply when it was written to the socket (or dropped).
	queued *budget

	// writeMu guards the replies: queued replies wait to be written by the
	// request goroutine that is writing (writing), which writes everything
	// queued meanwhile in one call before it stops, so that replies that
	// are ready together cost one system call. writeErr is the first failed
	// reply write, after which replies are dropped.
	writeMu  sync.Mutex
	replies  []queuedReply
	spare    []queuedReply // the slice of the previous batch, for reuse
	joined   []byte        // small replies of a batch, joined for one Write
	writing  bool
	writeErr error
}

// queuedReply is a reply to write, with the bytes its request is still
// charged (see conn.queued), given back once it is written or dropped.
type queuedReply struct {
	buf    []byte
	charge int64
}

// export is what a connection serves once negotiation is done.
type export struct {
	name     string
	dev      Device
	size     uint64
	readOnly bool
	flags    uint16
}

// request is one transmission request.
type request struct {
	flags  uint16
	cmd    uint16
	cookie uint64
	off    uint64
	length uint32
	data   []byte // NBD_CMD_WRITE payload: fresh memory or from WriteBuffers
	charge int64  // what the request holds of the connection's queued bytes
}

// chargeFor is what a request holds until its reply is written: its
// payload or its read data, and requestOverhead.
func chargeFor(cmd uint16, length uint32) int64 {
	if (cmd == cmdWrite || cmd == cmdRead) && length <= MaxPayload {
		return requestOverhead + int64(length)
	}
	return requestOverhead
}

func newConn(s *Server, nc net.Conn) *conn {
	return &conn{
		srv:      s,
		raw:      nc,
		nc:       nc,
		br:       bufio.NewReaderSize(nc, connReadBufferSize),
		log:      s.log.With("conn", s.connIDs.Add(1), "peer", peerName(nc)),
		done:     make(chan struct{}),
		stopping: make(chan struct{}),
		queued:   newBudget(s.connLimit),
	}
}

// hold charges n bytes to the connection and to the server's total,
// waiting for room in both; it returns false if the connection is shut
// down meanwhile.
func (c *conn) hold(n int64) bool {
	if !c.queued.take(n, c.stopping) {
		return false
	}
	if !c.srv.total.take(n, c.stopping) {
		c.queued.give(n)
		return false
	}
	return true
}

// unhold gives back n bytes that hold charged.
func (c *conn) unhold(n int64) {
	c.queued.give(n)
	c.srv.total.give(n)
}

// peerName names the client for logs: its TCP address, or for a unix
// socket (whose clients have no address) the socket it came through.
func peerName(nc net.Conn) string {
	if addr := nc.RemoteAddr(); addr != nil && addr.String() != "" && addr.String() != "@" {
		return addr.String()
	}
	return "unix:" + nc.LocalAddr().String()
}

// serve runs the connection to its end.
func (c *conn) serve() {
	defer close(c.done)
	defer c.srv.untrack(c)
	defer func() { c.nc.Close() }() // the TLS session, if any, then raw

	c.setReadDeadline(time.Now().Add(handshakeTimeout))
	exp, err := c.negotiate()
	if err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, errClientAborted) || c.isShuttingDown() {
			c.log.Debug("nbd: negotiation ended", "err", err)
		} else {
			c.log.Info("nbd: negotiation failed", "err", err)
		}
		return
	}
	c.setReadDeadline(time.Time{})
	c.log.Debug("nbd: serving export", "export", exp.name, "size", exp.size, "read_only", exp.readOnly)
	c.transmit(exp)
}

// shutdown stops the connection from reading further requests; requests
// already read still run and reply (for up to shutdownWriteGrace).
func (c *conn) shutdown() {
	c.deadlineMu.Lock()
	defer c.deadlineMu.Unlock()
	if !c.shuttingDown {
		close(c.stopping)
	}
	c.shuttingDown = true
	c.raw.SetReadDeadline(time.Now())
	c.raw.SetWriteDeadline(time.Now().Add(shutdownWriteGrace))
}

func (c *conn) isShuttingDown() bool {
	c.deadlineMu.Lock()
	defer c.deadlineMu.Unlock()
	return c.shuttingDown
}

func (c *conn) setReadDeadline(t time.Time) {
	c.deadlineMu.Lock()
	defer c.deadlineMu.Unlock()
	if !c.shuttingDown {
		c.raw.SetReadDeadline(t)
	}
}

// negotiate runs the fixed newstyle handshake and option haggling. It
// returns the export the client chose, or why the connection must end.
func (c *conn) negotiate() (export, error) {
	var hello [18]byte
	binary.BigEndian.PutUint64(hello[0:], magicInit)
	binary.BigEndian.PutUint64(hello[8:], magicOption)
	binary.BigEndian.PutUint16(hello[16:], flagFixedNewstyle|flagNoZeroes)
	if _, err := c.nc.Write(hello[:]); err != nil {
		return export{}, err
	}
	var clientFlagsBuf [4]byte
	if _, err := io.ReadFull(c.br, clientFlagsBuf[:]); err != nil {
		return export{}, err
	}
	clientFlags := binary.BigEndian.Uint32(clientFlagsBuf[:])
	if unknown := clientFlags &^ (clientFixedNewstyle | clientNoZeroes); unknown != 0 {
		return export{}, fmt.Errorf("client sent unknown handshake flags %#x", unknown)
	}
	noZeroes := clientFlags&clientNoZeroes != 0
	// tlsRequired is the protocol's FORCEDTLS mode: until TLS runs, only
	// NBD_OPT_STARTTLS and NBD_OPT_ABORT are served, so that nothing about
	// an export (not even whether it exists) reaches a client before its
	// certificate was checked.
	tlsRequired := c.srv.tlsConfig != nil
	secured := false
	if tlsRequired && clientFlags&clientFixedNewstyle == 0 {
		// The protocol allows TLS only after fixed newstyle negotiation.
		return export{}, errors.New("client does not use fixed newstyle negotiation, without which it cannot start TLS, which this export requires")
	}

	for {
		var hdr [16]byte
		if _, err := io.ReadFull(c.br, hdr[:]); err != nil {
			return export{}, err
		}
		if magic := binary.BigEndian.Uint64(hdr[0:]); magic != magicOption {
			return export{}, fmt.Errorf("option has magic %#x, want %#x", magic, uint64(magicOption))
		}
		opt := binary.BigEndian.Uint32(hdr[8:])
		length := binary.BigEndian.Uint32(hdr[12:])
		if length > maxOptionLength {
			return export{}, fmt.Errorf("%s carries %d bytes of data, more than the %d allowed", optionName(opt), length, maxOptionLength)
		}
		data := make([]byte, length)
		if _, err := io.ReadFull(c.br, data); err != nil {
			return export{}, err
		}

		if tlsRequired && !secured {
			switch opt {
			case optStartTLS, optAbort:
			case optExportName:
				// It cannot carry an error: the protocol says to hang up.
				return export{}, errors.New("NBD_OPT_EXPORT_NAME before TLS, which this export requires")
			default:
				if err := c.optionError(opt, repErrTLSReqd, "this export requires TLS: start it with NBD_OPT_STARTTLS (an nbds:// URI, qemu's tls-creds) and a client certificate"); err != nil {
					return export{}, err
				}
				continue
			}
		}

		switch opt {
		case optExportName:
			exp, err := c.open(string(data))
			if err != nil {
				// NBD_OPT_EXPORT_NAME cannot carry an error: the protocol
				// says to hang up.
				return export{}, err
			}
			reply := make([]byte, 10, 10+exportNameZeroesSz)
			binary.BigEndian.PutUint64(reply[0:], exp.size)
			binary.BigEndian.PutUint16(reply[8:], exp.flags)
			if !noZeroes {
				reply = reply[:10+exportNameZeroesSz]
			}
			_, err = c.nc.Write(reply)
			return exp, err

		case optInfo, optGo:
			name, err := parseInfoRequest(data)
			if err != nil {
				if err := c.optionError(opt, repErrInvalid, err.Error()); err != nil {
					return export{}, err
				}
				continue
			}
			exp, err := c.open(name)
			if err != nil {
				code := uint32(repErrPolicy)
				if errors.Is(err, ErrNoSuchExport) {
					code = repErrUnknown
				}
				if err := c.optionError(opt, code, err.Error()); err != nil {
					return export{}, err
				}
				continue
			}
			// NBD_INFO_BLOCK_SIZE is sent whether or not it was requested:
			// it states the protocol's defaults, which every client obeys.
			var exportInfo [12]byte
			binary.BigEndian.PutUint16(exportInfo[0:], infoExport)
			binary.BigEndian.PutUint64(exportInfo[2:], exp.size)
			binary.BigEndian.PutUint16(exportInfo[10:], exp.flags)
			var infoBlock [14]byte
			binary.BigEndian.PutUint16(infoBlock[0:], infoBlockSize)
			binary.BigEndian.PutUint32(infoBlock[2:], 1)
			binary.BigEndian.PutUint32(infoBlock[6:], preferredBlockSize)
			binary.BigEndian.PutUint32(infoBlock[10:], MaxPayload)
			var replies []byte
			replies = appendOptionReply(replies, opt, repInfo, exportInfo[:])
			replies = appendOptionReply(replies, opt, repInfo, infoBlock[:])
			replies = appendOptionReply(replies, opt, repAck, nil)
			if _, err := c.nc.Write(replies); err != nil {
				return export{}, err
			}
			if opt == optGo {
				return exp, nil
			}

		case optList:
			var err error
			switch {
			case len(data) != 0:
				err = c.optionError(opt, repErrInvalid, "NBD_OPT_LIST carries no data")
			case c.srv.listExports == nil:
				err = c.optionError(opt, repErrPolicy, "this server does not list its exports; ask for one by name")
			default:
				var replies []byte
				for _, name := range c.srv.listExports() {
					entry := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
					replies = appendOptionReply(replies, opt, repServer, append(entry, name...))
				}
				_, err = c.nc.Write(appendOptionReply(replies, opt, repAck, nil))
			}
			if err != nil {
				return export{}, err
			}

		case optAbort:
			c.nc.Write(appendOptionReply(nil, opt, repAck, nil))
			return export{}, errClientAborted

		case optStartTLS:
			var err error
			switch {
			case !tlsRequired:
				err = c.optionError(opt, repErrUnsup, "TLS is not configured on this export")
			case secured:
				err = c.optionError(opt, repErrInvalid, "TLS is already running")
			case len(data) != 0:
				err = c.optionError(opt, repErrInvalid, "NBD_OPT_STARTTLS carries no data")
			default:
				if err := c.startTLS(); err != nil {
					// The acknowledgement may be sent: too late to go on
					// without TLS.
					return export{}, err
				}
				secured = true
			}
			if err != nil {
				return export{}, err
			}

		case optStructuredReply:
			if err := c.optionError(opt, repErrUnsup, "structured replies are not supported: this server sends simple replies"); err != nil {
				return export{}, err
			}

		default:
			if err := c.optionError(opt, repErrUnsup, optionName(opt)+" is not supported"); err != nil {
				return export{}, err
			}
		}
	}
}

// startTLS acknowledges NBD_OPT_STARTTLS and runs the TLS handshake as
// its server; from then on the connection speaks through the session.
func (c *conn) startTLS() error {
	if n := c.br.Buffered(); n > 0 {
		// The client sent more before it had the reply: those bytes were
		// sent in the clear, and reading them as if they came through TLS
		// would let whoever is on the path inject options.
		return fmt.Errorf("client sent %d bytes after NBD_OPT_STARTTLS before its reply; refusing to start TLS on them", n)
	}
	if _, err := c.nc.Write(appendOptionReply(nil, optStartTLS, repAck, nil)); err != nil {
		return err
	}
	tc := tls.Server(c.raw, c.srv.tlsConfig)
	if err := tc.Handshake(); err != nil {
		return fmt.Errorf("TLS handshake: %w", err)
	}
	c.nc = tc
	c.br.Reset(tc)
	st := tc.ConnectionState()
	if len(st.PeerCertificates) > 0 {
		c.log = c.log.With("client", st.PeerCertificates[0].Subject.String())
	}
	c.log.Debug("nbd: TLS established", "version", tls.VersionName(st.Version))
	return nil
}

// open resolves an export name and computes what the client is told.
func (c *conn) open(name string) (export, error) {
	dev, err := c.srv.lookup(name)
	if err != nil {
		c.log.Info("nbd: export refused", "export", name, "err", err)
		return export{}, err
	}
	exp := export{name: name, dev: dev, size: dev.Size(),
		flags: flagHasFlags | flagSendFlush | flagSendFUA | flagSendTrim | flagSendWriteZeroes}
	if ro, ok := dev.(ReadOnlyDevice); ok && ro.ReadOnly() {
		exp.readOnly = true
		exp.flags |= flagReadOnly
	}
	if mc, ok := dev.(MultiConn); ok && mc.MultiConn() {
		exp.flags |= flagCanMultiConn
	}
	return exp, nil
}

// parseInfoRequest decodes the data of NBD_OPT_INFO and NBD_OPT_GO. The
// information requests are not needed: every reply carries all the
// information this server has.
func parseInfoRequest(data []byte) (string, error) {
	if len(data) < 6 {
		return "", fmt.Errorf("option data of %d bytes is shorter than the 6-byte minimum", len(data))
	}
	nameLen := binary.BigEndian.Uint32(data)
	if uint64(nameLen) > uint64(len(data)-6) {
		return "", fmt.Errorf("export name length %d overruns the %d bytes of option data", nameLen, len(data))
	}
	name := string(data[4 : 4+nameLen])
	rest := data[4+nameLen:]
	count := binary.BigEndian.Uint16(rest)
	if want := 2 + 2*int(count); len(rest) != want {
		return "", fmt.Errorf("%d information requests need %d bytes after the name, got %d", count, want, len(rest))
	}
	return name, nil
}

// optionError sends an error reply to an option, with a message for the
// user.
func (c *conn) optionError(opt, code uint32, message string) error {
	_, err := c.nc.Write(appendOptionReply(nil, opt, code, []byte(message)))
	return err
}

func appendOptionReply(b []byte, opt, replyType uint32, data []byte) []byte {
	b = binary.BigEndian.AppendUint64(b, magicOptionReply)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, replyType)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

// transmit reads requests and runs each in its own goroutine, at most
// maxInFlight at once, until the client disconnects, breaks the protocol,
// or the connection is shut down. It returns when every request it read
// has been carried out.
func (c *conn) transmit(exp export) {
	t := &transmitter{c: c, exp: exp, slots: make(chan struct{}, maxInFlight),
		tick: inlineGrace / 2, kick: make(chan struct{}, 1), stop: make(chan struct{})}
	t.buffers, _ = exp.dev.(WriteBuffers)
	t.async, _ = exp.dev.(AsyncWriter)
	t.flusher, _ = exp.dev.(AsyncFlusher)
	go t.watch()
	t.running.Add(1)
	t.read()
	t.running.Wait()
	close(t.stop)
}

// watch is the watchdog. Every inlineGrace/2 it looks at the request
// running on the reader (inline); one it saw the time before too has run
// for at least that long, and the reader role passes on: within
// inlineGrace of the request's start. It sleeps while no request runs on
// the reader, and the next one wakes it (kick).
//
// A timer per request would be more exact, but its Reset costs a wake-up
// of another thread at every request (the runtime's poller must learn
// the new deadline), which at queue depth 1 shows in the latency.
func (t *transmitter) watch() {
	tick := time.NewTicker(t.tick)
	defer tick.Stop()
	var last *handoff
	var started uint64
	for {
		select {
		case <-tick.C:
		case <-t.stop:
			return
		}
		h := t.inline.Load()
		if h != nil && h == last {
			h.start()
		}
		last = h
		if n := t.started.Load(); n != started || h != nil {
			started = n
			continue
		}
		// Nothing ran on the reader since the last look: sleep. The
		// reader stores inline before it looks at sleeping, and this
		// stores sleeping before it looks at inline, so one of the two
		// sees the other.
		tick.Stop()
		t.sleeping.Store(true)
		if t.inline.Load() == nil {
			select {
			case <-t.kick:
			case <-t.stop:
				return
			}
		}
		t.sleeping.Store(false)
		started = t.started.Load()
		last = nil
		tick.Reset(t.tick)
	}
}

// transmitter reads a connection's requests and runs them.
//
// One goroutine at a time reads requests (the reader). A request that
// arrives while more are already buffered runs on a goroutine of its own,
// so that pipelined requests run concurrently. A request that arrives
// alone runs on the reader itself: at queue depth 1 that saves handing it
// to another goroutine, which costs a wake-up of another thread and a
// cache-cold start there, both on the request's latency. If the Device
// then has to wait (WillBlock), the reader role passes to a new goroutine
// before it waits, so that requests sent meanwhile are still read; the
// old reader finishes its request and ends. A request that runs longer
// than inlineGrace hands the role on too, so that a Device that waits
// without saying so (perhaps for a later request) cannot stall the
// connection.
//
// A write to an AsyncWriter, or a flush of an AsyncFlusher, that arrives
// alone is only started on the reader (start): the reader reads on once
// WriteAsync or FlushAsync returns, and the Device's completion sends the
// reply (sendNoWait), so such a request needs neither a new reader nor a
// goroutine waiting for it.
type transmitter struct {
	c       *conn
	exp     export
	buffers WriteBuffers
	async   AsyncWriter   // nil if the Device has no WriteAsync
	flusher AsyncFlusher  // nil if the Device has no FlushAsync
	slots   chan struct{} // one per request running, at most maxInFlight
	running sync.WaitGroup

	// The watchdog (watch) looks at inline, the request that runs on the
	// reader, if any, every tick; started counts such requests. While it
	// sleeps (sleeping), the reader wakes it with kick.
	tick     time.Duration
	inline   atomic.Pointer[handoff]
	started  atomic.Uint64
	sleeping atomic.Bool
	kick     chan struct{}
	stop     chan struct{}
}

// read is the reader: it reads requests until the connection ends, or
// until it hands the reader role to another goroutine and finished the
// request it ran itself.
func (t *transmitter) read() {
	defer t.running.Done()
	for {
		req, ok := t.next()
		if !ok {
			return
		}
		if t.c.br.Buffered() > 0 {
			t.running.Go(func() { t.run(req, nil) })
			continue
		}
		h := &handoff{t: t}
		// A Device that waits without WillBlock, perhaps for a later
		// request of this very connection, gets a reader all the same.
		t.inline.Store(h)
		t.started.Add(1)
		if t.sleeping.Load() {
			select {
			case t.kick <- struct{}{}:
			default: // a kick is pending already
			}
		}
		if t.async != nil && req.cmd == cmdWrite || t.flusher != nil && req.cmd == cmdFlush {
			t.start(req, h)
		} else {
			t.run(req, h)
		}
		// Claim the role back, unless it passed on: the watchdog may act
		// even now, and then must find it taken.
		if !h.keep() {
			return
		}
		t.inline.CompareAndSwap(h, nil)
	}
}

// next reads the next request, with its payload, and takes a slot for
// it; ok is false when the connection ends.
func (t *transmitter) next() (req request, ok bool) {
	c := t.c
	var hdr [requestHeaderSize]byte
	if _, err := io.ReadFull(c.br, hdr[:]); err != nil {
		if !errors.Is(err, io.EOF) && !isShutdownRead(err) {
			c.log.Debug("nbd: connection lost", "err", err)
		}
		return req, false
	}
	if magic := binary.BigEndian.Uint32(hdr[0:]); magic != magicRequest {
		c.log.Warn("nbd: request with bad magic; closing the connection", "magic", magic)
		return req, false
	}
	req = request{
		flags:  binary.BigEndian.Uint16(hdr[4:]),
		cmd:    binary.BigEndian.Uint16(hdr[6:]),
		cookie: binary.BigEndian.Uint64(hdr[8:]),
		off:    binary.BigEndian.Uint64(hdr[16:]),
		length: binary.BigEndian.Uint32(hdr[24:]),
	}
	switch req.cmd {
	case cmdDisc:
		c.log.Debug("nbd: client disconnected")
		return req, false
	case cmdWrite:
		if req.length > MaxPayload {
			// Reading the payload would take unbounded memory and
			// skipping it is no better: the stream cannot be trusted.
			c.log.Warn("nbd: write payload exceeds the maximum; closing the connection",
				"length", req.length, "max", MaxPayload)
			return req, false
		}
	}
	// A client that does not read its replies fills the connection's
	// budget, and the reader then waits here: its requests stay in its
	// socket, and it stalls, alone.
	req.charge = chargeFor(req.cmd, req.length)
	if !c.hold(req.charge) {
		return req, false
	}
	t.slots <- struct{}{}
	if req.cmd == cmdWrite {
		if t.buffers != nil {
			req.data = t.buffers.WriteBuffer(int(req.length))
		} else {
			req.data = make([]byte, req.length)
		}
		if _, err := io.ReadFull(c.br, req.data); err != nil {
			<-t.slots
			c.unhold(req.charge)
			c.log.Debug("nbd: connection lost inside a write payload", "err", err)
			return req, false
		}
	}
	return req, true
}

// run carries out req and replies; h is set when it runs on the reader.
func (t *transmitter) run(req request, h *handoff) {
	defer func() { <-t.slots }()
	ctx := context.Background()
	if h != nil {
		ctx = context.WithValue(ctx, handoffKey{}, h)
	}
	t.c.reply(ctx, req, t.exp)
}

// start starts req, a write on an AsyncWriter or a flush on an
// AsyncFlusher, and returns; the reply goes out when the Device completes
// it. h is the reader's handoff, for the part of the request done before
// WriteAsync or FlushAsync returns.
func (t *transmitter) start(req request, h *handoff) {
	t.running.Add(1)
	finish := func(errno Errno) {
		buf := make([]byte, replyHeaderSize)
		putReplyHeader(buf, errno, req.cookie)
		t.c.unhold(req.charge - requestOverhead) // the payload is the Device's business now
		t.c.sendNoWait(queuedReply{buf, requestOverhead}, &t.running)
		<-t.slots
		t.running.Done()
	}
	if errno, ok := t.c.check(req, t.exp); !ok || req.cmd == cmdWrite && req.length == 0 {
		finish(errno)
		return
	}
	ctx := context.WithValue(context.Background(), handoffKey{}, h)
	done := func(err error) { finish(t.c.result(req, t.exp, err)) }
	if req.cmd == cmdFlush {
		t.flusher.FlushAsync(ctx, done)
		return
	}
	t.async.WriteAsync(ctx, req.data, req.off, req.flags&cmdFlagFUA != 0, done)
}

// handoff lets a request that runs on the reader pass the reader role on.
// done is set once, by whoever comes first: start, which passes the role
// to a new goroutine, or the reader, which keeps it once the request is
// finished (keep).
//
// start counts the new reader in running before the old one can learn
// that the role is gone, and so end: otherwise transmit's count could
// drop to zero in between, and transmit stop waiting (or the runtime
// panic, Add racing Wait) with a reader still to start. Hence a mutex,
// not a compare-and-swap: start sets done and counts in one step.
type handoff struct {
	t    *transmitter
	mu   sync.Mutex
	done bool
}

type handoffKey struct{}

// start passes the reader role to a new goroutine, once.
func (h *handoff) start() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.done {
		return
	}
	h.done = true
	h.t.running.Add(1)
	h.t.inline.CompareAndSwap(h, nil) // the watchdog has nothing to watch until the new reader runs a request
	go h.t.read()
}

// keep claims the role back for the reader whose request is finished; it
// reports false if start passed it on.
func (h *handoff) keep() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	kept := !h.done
	h.done = true
	return kept
}

// WillBlock tells the server that the request ctx belongs to is about to
// wait for something other than the CPU, such as a peer's acknowledgement.
// If the request runs on the goroutine that reads the connection's
// requests, a new goroutine takes over reading, so that requests the
// client sends meanwhile are read and run. A Device calls it before such
// a wait, not before work that is done at once: a request that never
// blocks costs no goroutine. Calling it more than once, or with a context
// that did not come from the server, does nothing.
func WillBlock(ctx context.Context) {
	if h, _ := ctx.Value(handoffKey{}).(*handoff); h != nil {
		h.start()
	}
}

// reply carries out one request and sends its reply.
func (c *conn) reply(ctx context.Context, req request, exp export) {
	var buf []byte
	if req.cmd == cmdRead && req.length <= MaxPayload {
		buf = make([]byte, replyHeaderSize+int(req.length))
	} else {
		buf = make([]byte, replyHeaderSize)
	}
	errno := c.execute(ctx, req, exp, buf[replyHeaderSize:])
	if errno != 0 {
		buf = buf[:replyHeaderSize]
	}
	putReplyHeader(buf, errno, req.cookie)
	// What the request holds from now on is its reply: a write's payload
	// is the Device's business, a failed read carries no data.
	charge := requestOverhead + int64(len(buf)-replyHeaderSize)
	c.unhold(req.charge - charge)
	c.send(queuedReply{buf, charge})
}

// putReplyHeader writes a simple reply's header into buf.
func putReplyHeader(buf []byte, errno Errno, cookie uint64) {
	binary.BigEndian.PutUint32(buf[0:], magicSimpleReply)
	binary.BigEndian.PutUint32(buf[4:], uint32(errno))
	binary.BigEndian.PutUint64(buf[8:], cookie)
}

// send queues a reply and, unless another request goroutine is writing
// (which then writes this reply too before it stops), writes the queue
// until it is empty. transmit waits for every request goroutine, so every
// queued reply is written (or the connection failed) by the time it
// returns.
func (c *conn) send(reply queuedReply) {
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	if c.writeErr != nil {
		c.unhold(reply.charge)
		return
	}
	c.replies = append(c.replies, reply)
	if c.writing {
		return
	}
	c.writing = true
	c.writeQueued()
}

// writeQueued writes the queued replies until none is left, then clears
// writing. Called with writeMu held and writing set, by the goroutine
// that set it; it unlocks writeMu while it writes.
func (c *conn) writeQueued() {
	for len(c.replies) > 0 && c.writeErr == nil {
		batch := c.replies
		c.replies = c.spare[:0]
		c.writeMu.Unlock()
		err := c.writeReplies(batch)
		var written int64 // or lost, if err
		for _, r := range batch {
			written += r.charge
		}
		c.unhold(written)
		c.writeMu.Lock()
		clear(batch)
		c.spare = batch[:0]
		c.noteWriteErr(err)
	}
	c.writing = false
}

// noteWriteErr records a failed reply write, after which the connection
// ends. Called with writeMu held.
func (c *conn) noteWriteErr(err error) {
	if err == nil || c.writeErr != nil {
		return
	}
	c.writeErr = err
	var dropped int64
	for _, r := range c.replies {
		dropped += r.charge
	}
	c.unhold(dropped)
	c.replies = nil
	c.log.Debug("nbd: reply lost; closing the connection", "err", err)
	c.shutdown()
}

// sendNoWait is send for a caller that must not wait on this client: an
// AsyncWriter's completion, which may run on a goroutine that serves
// other clients or peers. It writes what the socket takes at once; the
// rest, if any, goes to a new goroutine (counted in running), which
// writes it and whatever is queued meanwhile.
func (c *conn) sendNoWait(reply queuedReply, running *sync.WaitGroup) {
	c.writeMu.Lock()
	if c.writeErr != nil {
		c.writeMu.Unlock()
		c.unhold(reply.charge)
		return
	}
	c.replies = append(c.replies, reply)
	if c.writing {
		c.writeMu.Unlock()
		return
	}
	c.writing = true
	if len(c.replies) == 1 && len(reply.buf) <= joinLimit {
		c.replies = c.replies[:0]
		c.writeMu.Unlock()
		n, err := c.writeNow(reply.buf)
		c.writeMu.Lock()
		c.noteWriteErr(err)
		if n < len(reply.buf) && c.writeErr == nil {
			c.replies = append([]queuedReply{{reply.buf[n:], reply.charge}}, c.replies...)
		} else {
			c.unhold(reply.charge) // written, or lost with the connection
		}
		if len(c.replies) == 0 || c.writeErr != nil {
			c.writing = false
			c.writeMu.Unlock()
			return
		}
	}
	c.writeMu.Unlock()
	running.Go(func() {
		c.writeMu.Lock()
		defer c.writeMu.Unlock()
		c.writeQueued()
	})
}

// writeNow writes as much of b as the socket takes without waiting, and
// reports how much that was: all of it, usually. A connection that offers
// no raw access writes nothing here (its writes go to a goroutine).
func (c *conn) writeNow(b []byte) (int, error) {
	sc, ok := c.nc.(syscall.Conn)
	if !ok {
		return 0, nil
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return 0, nil
	}
	var n int
	var werr error
	err = raw.Write(func(fd uintptr) bool {
		for n < len(b) {
			m, err := syscall.Write(int(fd), b[n:])
			if err == syscall.EINTR {
				continue
			}
			if err == syscall.EAGAIN {
				break
			}
			if err != nil {
				werr = os.NewSyscallError("write", err)
				break
			}
			n += m
		}
		return true // never wait here
	})
	if werr == nil {
		werr = err
	}
	return n, werr
}

// joinLimit is the largest reply writeReplies copies to join it with
// others; a larger one (read data) is written from where it is.
const joinLimit = 64 << 10

// writeReplies writes a batch of replies with as few Write calls as it
// can without copying read data. Only the goroutine that set c.writing
// calls it.
func (c *conn) writeReplies(batch []queuedReply) error {
	buf := c.joined[:0]
	for _, r := range batch {
		if len(r.buf) <= joinLimit {
			buf = append(buf, r.buf...)
			continue
		}
		if len(buf) > 0 {
			if _, err := c.nc.Write(buf); err != nil {
				return err
			}
			buf = buf[:0]
		}
		if _, err := c.nc.Write(r.buf); err != nil {
			return err
		}
	}
	if cap(buf) <= 1<<20 {
		c.joined = buf[:0] // kept for the next batch, unless outsized
	}
	if len(buf) > 0 {
		_, err := c.nc.Write(buf)
		return err
	}
	return nil
}

// execute validates a request and runs it on the Device. readInto is where
// a read's data goes. It returns the errno for the reply.
func (c *conn) execute(ctx context.Context, req request, exp export, readInto []byte) Errno {
	if errno, ok := c.check(req, exp); !ok {
		return errno
	}
	fua := req.flags&cmdFlagFUA != 0
	var err error
	switch req.cmd {
	case cmdRead:
		if req.length > 0 {
			err = exp.dev.ReadAt(ctx, readInto, req.off)
		}
	case cmdWrite:
		if req.length > 0 {
			err = exp.dev.WriteAt(ctx, req.data, req.off, fua)
		}
	case cmdFlush:
		err = exp.dev.Flush(ctx)
	case cmdTrim:
		if req.length > 0 {
			err = exp.dev.Trim(ctx, req.off, uint64(req.length))
		}
		if err == nil && fua {
			err = exp.dev.Flush(ctx)
		}
	case cmdWriteZeroes:
		if req.length > 0 {
			err = exp.dev.WriteZeroes(ctx, req.off, uint64(req.length), fua)
		}
	}
	return c.result(req, exp, err)
}

// check validates a request before it runs: ok is false, with the errno
// for the reply, if it must not.
func (c *conn) check(req request, exp export) (errno Errno, ok bool) {
	allowed := uint16(cmdFlagFUA)
	if req.cmd == cmdWriteZeroes {
		allowed |= cmdFlagNoHole
	}
	if req.flags&^allowed != 0 {
		c.log.Debug("nbd: request with flags not valid for it", "command", commandName(req.cmd), "flags", req.flags)
		return EINVAL, false
	}
	switch req.cmd {
	case cmdRead, cmdWrite, cmdFlush, cmdTrim, cmdWriteZeroes:
	default:
		c.log.Debug("nbd: unknown command", "command", req.cmd)
		return EINVAL, false
	}
	writes := req.cmd == cmdWrite || req.cmd == cmdTrim || req.cmd == cmdWriteZeroes
	if writes && exp.readOnly {
		return EPERM, false
	}
	end := req.off + uint64(req.length)
	// The device's size, not the one negotiated: a device that grew (an
	// online resize) serves its new space to a client told of it later,
	// such as the kernel's after a resize of /dev/nbdX.
	if size := exp.dev.Size(); req.cmd != cmdFlush && (end < req.off || end > size) {
		c.log.Debug("nbd: request beyond the end of the export", "command", commandName(req.cmd),
			"offset", req.off, "length", req.length, "size", size)
		if req.cmd == cmdWrite || req.cmd == cmdWriteZeroes {
			return ENOSPC, false // as the protocol asks for writes past the end
		}
		return EINVAL, false
	}
	if req.cmd == cmdRead && req.length > MaxPayload {
		return EINVAL, false
	}
	return 0, true
}

// result maps a Device's answer to req to the errno for the reply, and
// logs a failure.
func (c *conn) result(req request, exp export, err error) Errno {
	if err == nil {
		return 0
	}
	errno, expected := errnoFor(err)
	if expected {
		c.log.Debug("nbd: request failed", "command", commandName(req.cmd), "offset", req.off,
			"length", req.length, "errno", errno, "err", err)
	} else {
		c.log.Error("nbd: device error; the client sees EIO", "export", exp.name,
			"command", commandName(req.cmd), "offset", req.off, "length", req.length, "err", err)
	}
	return errno
}

// isShutdownRead reports the read error that shutdown causes on purpose.
func isShutdownRead(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrDeadlineExceeded)
}
