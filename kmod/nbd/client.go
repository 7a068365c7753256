package nbd

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// ErrClientClosed is returned by Client methods called after Close.
var ErrClientClosed = errors.New("nbd: client closed")

// ErrProtocol is wrapped by the errors a Client returns when the server
// breaks the NBD protocol; the connection is then unusable.
var ErrProtocol = errors.New("nbd: protocol violation by the server")

// ExportError is Dial's error when the server refuses the export. Message is
// the server's own explanation (for a georepl server, the Lookup error).
// It Is ErrNoSuchExport when the server says the export does not exist.
type ExportError struct {
	Export  string
	Reply   uint32 // the NBD_REP_ERR_* value
	Message string
}

// optionErrorNames names the option error replies an ExportError may carry.
var optionErrorNames = map[uint32]string{repErrUnsup: "NBD_REP_ERR_UNSUP", repErrPolicy: "NBD_REP_ERR_POLICY",
	repErrInvalid: "NBD_REP_ERR_INVALID", repErrUnknown: "NBD_REP_ERR_UNKNOWN", repErrTooBig: "NBD_REP_ERR_TOO_BIG",
	repErrTLSReqd: "NBD_REP_ERR_TLS_REQD"}

func (e *ExportError) Error() string {
	name, ok := optionErrorNames[e.Reply]
	if !ok {
		name = fmt.Sprintf("reply %#x", e.Reply)
	}
	if e.Message == "" {
		return fmt.Sprintf("nbd: export %q refused by the server (%s)", e.Export, name)
	}
	return fmt.Sprintf("nbd: export %q refused by the server (%s): %s", e.Export, name, e.Message)
}

// TLSRequired reports whether the server refused because the client did
// not start TLS (NBD_REP_ERR_TLS_REQD).
func (e *ExportError) TLSRequired() bool { return e.Reply == repErrTLSReqd }

// Is matches ErrNoSuchExport for NBD_REP_ERR_UNKNOWN.
func (e *ExportError) Is(target error) bool {
	return target == ErrNoSuchExport && e.Reply == repErrUnknown
}

// clientCloseTimeout bounds how long Close waits for the server to finish
// outstanding requests and hang up after NBD_CMD_DISC.
const clientCloseTimeout = 30 * time.Second

// Client is an NBD client connection to one export. Its methods are safe for
// concurrent use and are pipelined: each call sends its request at once and
// waits only for its own reply, so concurrent calls are in flight together.
//
// Requests the server fails return an error wrapping the Errno it sent
// (errors.Is(err, syscall.ENOSPC) works). When the connection fails, every
// waiting and later call returns that failure.
type Client struct {
	nc         net.Conn
	size       int64
	flags      uint16
	maxPayload int

	sendMu sync.Mutex // one request on the wire at a time

	mu      sync.Mutex
	pending map[uint64]*call
	cookie  uint64
	closing bool
	err     error // the connection's failure; set once

	readerDone chan struct{}
}

// call is one request waiting for its reply.
type call struct {
	readInto []byte // where a read's data goes
	done     chan error
}

// Dial connects to the server at spec ("unix:/path" or "tcp:host:port", as
// for Listen) and selects exportName with NBD_OPT_GO. ctx bounds the
// connection and the negotiation only. A refused export fails with an
// *ExportError carrying the server's message.
func Dial(ctx context.Context, spec, exportName string) (*Client, error) {
	return DialTLS(ctx, spec, exportName, nil)
}

// DialTLS is Dial with TLS: it sends NBD_OPT_STARTTLS before anything
// else and runs the TLS handshake under config (its client certificate,
// the CA it trusts) before it names the export. A server that does not
// start TLS fails the dial: nothing is sent in the clear. Without a
// ServerName in config, the host of a tcp spec is the name the server's
// certificate must carry. A nil config dials without TLS.
func DialTLS(ctx context.Context, spec, exportName string, config *tls.Config) (*Client, error) {
	network, address, err := parseSpec(spec)
	if err != nil {
		return nil, err
	}
	if config != nil && config.ServerName == "" && network == "tcp" {
		config = config.Clone()
		config.ServerName, _, _ = net.SplitHostPort(address)
	}
	var dialer net.Dialer
	raw, err := dialer.DialContext(ctx, network, address)
	if err != nil {
		return nil, fmt.Errorf("nbd: dial %s: %w", spec, err)
	}
	stop := context.AfterFunc(ctx, func() { raw.SetDeadline(time.Now()) })
	br := bufio.NewReaderSize(raw, 64<<10)
	c := &Client{nc: raw, maxPayload: MaxPayload, pending: make(map[uint64]*call), readerDone: make(chan struct{})}
	err = c.negotiate(br, exportName, config)
	if !stop() && err == nil {
		err = ctx.Err()
	}
	if err != nil {
		c.nc.Close()
		var exportErr *ExportError
		if errors.As(err, &exportErr) {
			return nil, err
		}
		return nil, fmt.Errorf("nbd: negotiate with %s: %w", spec, err)
	}
	raw.SetDeadline(time.Time{})
	go c.readReplies(br)
	return c, nil
}

// Export describes a negotiated export, as Negotiate reports it.
type Export struct {
	// Size is the export's size in bytes.
	Size uint64
	// Flags are the transmission flags the server sent (NBD_FLAG_*): the
	// kernel's nbd driver takes them as they are.
	Flags uint16
}

// Transmission flags an Export may carry, for callers that hand a
// negotiated connection to another NBD client (the kernel).
const (
	FlagReadOnly     = flagReadOnly
	FlagSendFlush    = flagSendFlush
	FlagSendFUA      = flagSendFUA
	FlagSendTrim     = flagSendTrim
	FlagCanMultiConn = flagCanMultiConn
)

// Negotiate runs the fixed newstyle handshake on nc and selects exportName
// with NBD_OPT_GO, leaving nc at the start of the transmission phase, so that
// another client (the kernel's nbd driver) can take it over. It reads
// nothing beyond the final acknowledgement. ctx bounds the negotiation; nc's
// deadline is cleared afterwards. A refused export fails with an
// *ExportError.
func Negotiate(ctx context.Context, nc net.Conn, exportName string) (Export, error) {
	stop := context.AfterFunc(ctx, func() { nc.SetDeadline(time.Now()) })
	c := &Client{nc: nc, maxPayload: MaxPayload}
	// The server sends nothing after the NBD_OPT_GO acknowledgement until
	// it gets a request, so a buffered reader cannot swallow
	// transmission-phase bytes here.
	err := c.negotiate(bufio.NewReader(nc), exportName, nil)
	if !stop() && err == nil {
		err = ctx.Err()
	}
	if err != nil {
		return Export{}, err
	}
	nc.SetDeadline(time.Time{})
	return Export{Size: uint64(c.size), Flags: c.flags}, nil
}

// negotiate selects exportName with NBD_OPT_GO, first starting TLS under
// tlsConfig if it is not nil: c.nc is then the TLS session, and br reads
// from it.
func (c *Client) negotiate(br *bufio.Reader, exportName string, tlsConfig *tls.Config) error {
	var hello [18]byte
	if _, err := io.ReadFull(br, hello[:]); err != nil {
		return err
	}
	if binary.BigEndian.Uint64(hello[0:]) != magicInit || binary.BigEndian.Uint64(hello[8:]) != magicOption {
		return fmt.Errorf("%w: not a newstyle NBD server", ErrProtocol)
	}
	serverFlags := binary.BigEndian.Uint16(hello[16:])
	if serverFlags&flagFixedNewstyle == 0 {
		return fmt.Errorf("%w: server does not offer fixed newstyle negotiation", ErrProtocol)
	}
	clientFlags := uint32(clientFixedNewstyle)
	if serverFlags&flagNoZeroes != 0 {
		clientFlags |= clientNoZeroes
	}
	msg := binary.BigEndian.AppendUint32(nil, clientFlags)
	if tlsConfig != nil {
		if err := c.startTLS(br, msg, tlsConfig); err != nil {
			return err
		}
		msg = nil
	}
	msg = binary.BigEndian.AppendUint64(msg, magicOption)
	msg = binary.BigEndian.AppendUint32(msg, optGo)
	msg = binary.BigEndian.AppendUint32(msg, uint32(4+len(exportName)+2+2))
	msg = binary.BigEndian.AppendUint32(msg, uint32(len(exportName)))
	msg = append(msg, exportName...)
	msg = binary.BigEndian.AppendUint16(msg, 1)
	msg = binary.BigEndian.AppendUint16(msg, infoBlockSize)
	if _, err := c.nc.Write(msg); err != nil {
		return err
	}

	haveExport := false
	for {
		replyType, data, err := readOptionReply(br, optGo)
		if err != nil {
			return err
		}
		switch {
		case replyType == repAck:
			if !haveExport {
				return fmt.Errorf("%w: NBD_OPT_GO acknowledged without NBD_INFO_EXPORT", ErrProtocol)
			}
			return nil
		case replyType == repInfo && len(data) >= 2:
			switch binary.BigEndian.Uint16(data) {
			case infoExport:
				if len(data) != 12 {
					return fmt.Errorf("%w: NBD_INFO_EXPORT of %d bytes", ErrProtocol, len(data))
				}
				size := binary.BigEndian.Uint64(data[2:])
				if size > 1<<63-1 {
					return fmt.Errorf("%w: export size %d overflows int64", ErrProtocol, size)
				}
				c.size = int64(size)
				c.flags = binary.BigEndian.Uint16(data[10:])
				haveExport = true
			case infoBlockSize:
				if len(data) != 14 {
					return fmt.Errorf("%w: NBD_INFO_BLOCK_SIZE of %d bytes", ErrProtocol, len(data))
				}
				if maxPayload := binary.BigEndian.Uint32(data[10:]); maxPayload > 0 && maxPayload < MaxPayload {
					c.maxPayload = int(maxPayload)
				}
			}
		case replyType&repFlagError != 0:
			return &ExportError{Export: exportName, Reply: replyType, Message: string(data)}
		}
	}
}

// startTLS sends prefix (what is still to be sent before the options),
// then NBD_OPT_STARTTLS, and on its acknowledgement runs the TLS
// handshake; c.nc and br then speak through the session.
func (c *Client) startTLS(br *bufio.Reader, prefix []byte, config *tls.Config) error {
	msg := binary.BigEndian.AppendUint64(prefix, magicOption)
	msg = binary.BigEndian.AppendUint32(msg, optStartTLS)
	msg = binary.BigEndian.AppendUint32(msg, 0)
	if _, err := c.nc.Write(msg); err != nil {
		return err
	}
	replyType, data, err := readOptionReply(br, optStartTLS)
	if err != nil {
		return err
	}
	if replyType != repAck || len(data) != 0 {
		return fmt.Errorf("nbd: the server does not start TLS (reply %#x: %q): refusing to go on without it", replyType, data)
	}
	if br.Buffered() > 0 {
		return fmt.Errorf("%w: the server sent %d bytes after acknowledging NBD_OPT_STARTTLS", ErrProtocol, br.Buffered())
	}
	tc := tls.Client(c.nc, config)
	if err := tc.Handshake(); err != nil {
		return fmt.Errorf("nbd: TLS handshake: %w", err)
	}
	c.nc = tc
	br.Reset(tc)
	return nil
}

// readOptionReply reads one reply to the option the client sent last,
// checking its magic, that it answers that option, and its length.
func readOptionReply(br *bufio.Reader, option uint32) (replyType uint32, data []byte, err error) {
	var hdr [20]byte
	if _, err := io.ReadFull(br, hdr[:]); err != nil {
		return 0, nil, err
	}
	if magic := binary.BigEndian.Uint64(hdr[0:]); magic != magicOptionReply {
		return 0, nil, fmt.Errorf("%w: option reply magic %#x", ErrProtocol, magic)
	}
	if got := binary.BigEndian.Uint32(hdr[8:]); got != option {
		return 0, nil, fmt.Errorf("%w: a reply to option %d where one to option %d was due", ErrProtocol, got, option)
	}
	replyType = binary.BigEndian.Uint32(hdr[12:])
	length := binary.BigEndian.Uint32(hdr[16:])
	if length > maxOptionLength {
		return 0, nil, fmt.Errorf("%w: option reply of %d bytes", ErrProtocol, length)
	}
	data = make([]byte, length)
	if _, err := io.ReadFull(br, data); err != nil {
		return 0, nil, err
	}
	return replyType, data, nil
}

// Size returns the export's size in bytes.
func (c *Client) Size() int64 { return c.size }

// ReadOnly reports whether the server exports the device read-only.
func (c *Client) ReadOnly() bool { return c.flags&flagReadOnly != 0 }

// MultiConn reports whether the server allows spreading requests over
// several connections (a flush on one covers writes on all).
func (c *Client) MultiConn() bool { return c.flags&flagCanMultiConn != 0 }

// ReadAt reads len(p) bytes at off, with io.ReaderAt semantics: a read that
// reaches past Size returns the bytes up to Size and io.EOF. Reads larger
// than the server's maximum payload are split.
func (c *Client) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("nbd: read at negative offset %d", off)
	}
	if off >= c.size {
		return 0, io.EOF
	}
	var eof error
	if int64(len(p)) > c.size-off {
		p, eof = p[:c.size-off], io.EOF
	}
	for done := 0; done < len(p); {
		chunk := p[done:min(len(p), done+c.maxPayload)]
		if err := c.do(cmdRead, 0, uint64(off)+uint64(done), uint32(len(chunk)), nil, chunk); err != nil {
			return done, err
		}
		done += len(chunk)
	}
	return len(p), eof
}

// WriteAt writes all of p at off; with fua the reply waits until the data
// is durable. Writes larger than the server's maximum payload are split
// into several requests; after an error, an unknown part of p was written.
// p is not kept after WriteAt returns.
func (c *Client) WriteAt(p []byte, off int64, fua bool) error {
	if off < 0 {
		return fmt.Errorf("nbd: write at negative offset %d", off)
	}
	var flags uint16
	if fua {
		flags = cmdFlagFUA
	}
	for done := 0; done < len(p); {
		chunk := p[done:min(len(p), done+c.maxPayload)]
		if err := c.do(cmdWrite, flags, uint64(off)+uint64(done), uint32(len(chunk)), chunk, nil); err != nil {
			return err
		}
		done += len(chunk)
	}
	return nil
}

// Flush returns when every write acknowledged before it was called is
// durable on the server.
func (c *Client) Flush() error {
	return c.do(cmdFlush, 0, 0, 0, nil, nil)
}

// Trim tells the server that [off, off+length) is no longer needed; its
// contents are then unspecified. length must fit in 32 bits.
func (c *Client) Trim(off, length int64) error {
	if err := checkEffectRange(off, length); err != nil {
		return fmt.Errorf("nbd: trim: %w", err)
	}
	return c.do(cmdTrim, 0, uint64(off), uint32(length), nil, nil)
}

// WriteZeroes makes [off, off+length) read as zeroes, leaving it allocated;
// with fua the reply waits until that is durable. length must fit in 32
// bits.
func (c *Client) WriteZeroes(off, length int64, fua bool) error {
	if err := checkEffectRange(off, length); err != nil {
		return fmt.Errorf("nbd: write zeroes: %w", err)
	}
	flags := uint16(cmdFlagNoHole)
	if fua {
		flags |= cmdFlagFUA
	}
	return c.do(cmdWriteZeroes, flags, uint64(off), uint32(length), nil, nil)
}

func checkEffectRange(off, length int64) error {
	if off < 0 || length < 0 || length > 1<<32-1 {
		return fmt.Errorf("offset %d, length %d: want offset ≥ 0 and 0 ≤ length < 4 GiB", off, length)
	}
	return nil
}

// Close sends NBD_CMD_DISC, lets the server finish the requests in flight
// (their calls still get their replies) and closes the connection.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		return nil
	}
	c.closing = true
	failed := c.err != nil
	c.mu.Unlock()

	if !failed {
		var disc [requestHeaderSize]byte
		putRequestHeader(disc[:], 0, cmdDisc, 0, 0, 0)
		c.sendMu.Lock()
		c.nc.Write(disc[:])
		c.sendMu.Unlock()
		c.nc.SetReadDeadline(time.Now().Add(clientCloseTimeout))
	}
	<-c.readerDone
	if err := c.nc.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("nbd: close: %w", err)
	}
	return nil
}

// do sends one request and waits for its reply.
func (c *Client) do(cmd, flags uint16, off uint64, length uint32, payload, readInto []byte) error {
	cl := &call{readInto: readInto, done: make(chan error, 1)}
	c.mu.Lock()
	switch {
	case c.err != nil:
		c.mu.Unlock()
		return c.err
	case c.closing:
		c.mu.Unlock()
		return ErrClientClosed
	}
	cookie := c.cookie
	c.cookie++
	c.pending[cookie] = cl
	c.mu.Unlock()

	var hdr [requestHeaderSize]byte
	putRequestHeader(hdr[:], flags, cmd, cookie, off, length)
	bufs := net.Buffers{hdr[:]}
	if len(payload) > 0 {
		bufs = append(bufs, payload)
	}
	c.sendMu.Lock()
	_, err := bufs.WriteTo(c.nc)
	c.sendMu.Unlock()
	if err != nil {
		c.fail(fmt.Errorf("nbd: sending %s request: %w", commandName(cmd), err))
	}
	if err := <-cl.done; err != nil {
		var errno Errno
		if errors.As(err, &errno) {
			return fmt.Errorf("nbd: %s [%d, +%d): %w", commandName(cmd), off, length, err)
		}
		return err
	}
	return nil
}

func putRequestHeader(b []byte, flags, cmd uint16, cookie, off uint64, length uint32) {
	binary.BigEndian.PutUint32(b[0:], magicRequest)
	binary.BigEndian.PutUint16(b[4:], flags)
	binary.BigEndian.PutUint16(b[6:], cmd)
	binary.BigEndian.PutUint64(b[8:], cookie)
	binary.BigEndian.PutUint64(b[16:], off)
	binary.BigEndian.PutUint32(b[24:], length)
}

// readReplies delivers replies to their calls until the connection ends.
func (c *Client) readReplies(br *bufio.Reader) {
	defer close(c.readerDone)
	var hdr [replyHeaderSize]byte
	for {
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			c.mu.Lock()
			closing := c.closing
			c.mu.Unlock()
			if closing && errors.Is(err, io.EOF) {
				err = ErrClientClosed
			} else {
				err = fmt.Errorf("nbd: connection lost: %w", err)
			}
			c.fail(err)
			return
		}
		if magic := binary.BigEndian.Uint32(hdr[0:]); magic != magicSimpleReply {
			c.fail(fmt.Errorf("%w: reply magic %#x", ErrProtocol, magic))
			return
		}
		errno := Errno(binary.BigEndian.Uint32(hdr[4:]))
		cookie := binary.BigEndian.Uint64(hdr[8:])
		c.mu.Lock()
		cl := c.pending[cookie]
		delete(c.pending, cookie)
		c.mu.Unlock()
		if cl == nil {
			c.fail(fmt.Errorf("%w: reply to unknown cookie %d", ErrProtocol, cookie))
			return
		}
		if errno != 0 {
			cl.done <- errno
			continue
		}
		if _, err := io.ReadFull(br, cl.readInto); err != nil {
			err = fmt.Errorf("nbd: connection lost inside read data: %w", err)
			cl.done <- err
			c.fail(err)
			return
		}
		cl.done <- nil
	}
}

// fail records the connection's failure, closes it, and fails every call
// still waiting.
func (c *Client) fail(err error) {
	c.mu.Lock()
	if c.err == nil {
		c.err = err
	}
	waiting := c.pending
	c.pending = make(map[uint64]*call)
	c.mu.Unlock()
	c.nc.Close()
	for _, cl := range waiting {
		cl.done <- err
	}
}
