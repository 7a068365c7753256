package nbd

import (
	"context"
	"errors"
	"fmt"
	"syscall"
)

// Device is what an NBD export serves. The server calls its methods from
// several goroutines at once (requests are pipelined and may come over
// several connections); a Device must be safe for that.
//
// Ownership: the server allocates a fresh buffer for every write request
// (or takes it from WriteBuffers) and never touches it after the request,
// so WriteAt MAY keep p after returning (the replication engine sends it
// to peers asynchronously). The p given to ReadAt belongs to the server
// again once ReadAt returns.
//
// Methods return when the operation is complete in the Device's sense (for
// a replicated device: when the write-ordering protocol says so); fua asks
// that the range be durable before returning, as if followed by Flush.
// Flush makes durable every write that completed before Flush was called.
// WriteZeroes must leave the range allocated (the server advertises
// NBD_CMD_FLAG_NO_HOLE support on its behalf); Trim may deallocate, after
// which the range's contents are unspecified.
//
// The server checks every request against Size and the read-only flag
// before calling the Device. ctx is not cancelled when the client
// disconnects: a request the server has received is carried out, only its
// reply is lost.
//
// Errors: ErrReadOnly for a write to a device that does not accept writes
// now (it is mapped to EPERM), ErrOutOfRange (EINVAL), errors wrapping
// syscall.ENOSPC, EDQUOT or EFBIG (ENOSPC); a *ClientError carries a
// specific errno. Anything else is logged and reported to the client as EIO.
type Device interface {
	// Size is the device's size in bytes. It may grow while the server
	// runs (an online resize): a client learns the size when it
	// negotiates, and requests are checked against the current one.
	Size() uint64
	ReadAt(ctx context.Context, p []byte, off uint64) error
	WriteAt(ctx context.Context, p []byte, off uint64, fua bool) error
	Flush(ctx context.Context) error
	Trim(ctx context.Context, off, length uint64) error
	WriteZeroes(ctx context.Context, off, length uint64, fua bool) error
}

// MultiConn is an optional ability of a Device. A Device whose MultiConn
// returns true promises that a completed Flush (or FUA write) on any
// connection covers writes completed on every connection, so the server
// advertises NBD_FLAG_CAN_MULTI_CONN and clients may spread their requests
// over several connections.
type MultiConn interface {
	MultiConn() bool
}

// WriteBuffers is an optional ability of a Device: the server reads the
// payload of each write request into WriteBuffer(n), which must return a
// slice of exactly n bytes that nothing else uses, instead of fresh
// memory. The buffer is then given to WriteAt as p; a Device can recycle
// it once WriteAt and whatever it handed p to are done with it. If the
// connection fails while the payload is read, WriteAt is not called and
// the buffer is dropped (left to the garbage collector).
type WriteBuffers interface {
	WriteBuffer(n int) []byte
}

// AsyncWriter is an optional ability of a Device: writes that complete
// later without a goroutine of the server waiting for them. A request
// that arrives alone (nothing more is buffered from the client) runs on
// the connection's reader; for a write, the server then calls WriteAsync
// instead of WriteAt and goes back to reading as soon as it returns, and
// done sends the reply. That spares the wake-up of a waiting goroutine at
// completion and the start of a new reader at each write: at queue depth
// 1, where the Device waits for a peer's acknowledgement, those are a
// large part of the latency.
//
// WriteAsync does what WriteAt would, with the same ownership of p and
// the same ctx (WillBlock applies to the part it does before it
// returns), and calls done exactly once with WriteAt's result: before
// it returns or later, from any goroutine. done never blocks: it writes
// the reply if the socket takes it at once, and hands it to a goroutine
// otherwise.
type AsyncWriter interface {
	WriteAsync(ctx context.Context, p []byte, off uint64, fua bool, done func(error))
}

// AsyncFlusher is an optional ability of a Device: flushes that complete
// later without a goroutine of the server waiting for them, as an
// AsyncWriter's writes do. A flush that arrives alone runs FlushAsync on
// the connection's reader, which reads on once it returns; done sends the
// reply. FlushAsync does what Flush would, with the same ctx, and calls
// done exactly once with Flush's result, before it returns or later, from
// any goroutine; done never blocks. The flush covers what Flush would:
// every write completed before the server called FlushAsync.
type AsyncFlusher interface {
	FlushAsync(ctx context.Context, done func(error))
}

// ReadOnlyDevice is an optional ability of a Device. A Device whose
// ReadOnly returns true (checked once per connection, when the client
// selects the export) is exported with NBD_FLAG_READ_ONLY, and the server
// refuses writes, trims and write-zeroes with EPERM without calling it.
type ReadOnlyDevice interface {
	ReadOnly() bool
}

// Errors a Device may return.
var (
	ErrReadOnly   = errors.New("device is read-only")
	ErrOutOfRange = errors.New("request beyond the end of the device")
)

// ErrNoSuchExport is what a Lookup returns (possibly wrapped) for an export
// name it does not know; the client is told NBD_REP_ERR_UNKNOWN.
var ErrNoSuchExport = errors.New("no such export")

// Errno is an NBD error value, as carried in a reply. It is an error whose
// Is matches the syscall.Errno of the same name, so a Client's caller can
// test errors.Is(err, syscall.ENOSPC).
type Errno uint32

// The error values the NBD protocol defines.
const (
	EPERM     Errno = 1
	EIO       Errno = 5
	ENOMEM    Errno = 12
	EINVAL    Errno = 22
	ENOSPC    Errno = 28
	EOVERFLOW Errno = 75
	ENOTSUP   Errno = 95
	ESHUTDOWN Errno = 108
)

// errnoInfo gives each NBD errno its name and the syscall.Errno it stands for.
var errnoInfo = map[Errno]struct {
	name string
	sys  syscall.Errno
}{
	EPERM:     {"EPERM", syscall.EPERM},
	EIO:       {"EIO", syscall.EIO},
	ENOMEM:    {"ENOMEM", syscall.ENOMEM},
	EINVAL:    {"EINVAL", syscall.EINVAL},
	ENOSPC:    {"ENOSPC", syscall.ENOSPC},
	EOVERFLOW: {"EOVERFLOW", syscall.EOVERFLOW},
	ENOTSUP:   {"ENOTSUP", syscall.ENOTSUP},
	ESHUTDOWN: {"ESHUTDOWN", syscall.ESHUTDOWN},
}

// Error returns the errno's description, e.g. "NBD_ENOSPC (no space left
// on device)".
func (e Errno) Error() string {
	if info, ok := errnoInfo[e]; ok {
		return fmt.Sprintf("NBD_%s (%v)", info.name, info.sys)
	}
	return fmt.Sprintf("NBD error %d", uint32(e))
}

// Is reports whether target is the syscall.Errno this errno stands for.
func (e Errno) Is(target error) bool {
	se, ok := target.(syscall.Errno)
	info, known := errnoInfo[e]
	return ok && known && info.sys == se
}

// ClientError lets a Device choose the errno the client sees. Err is what
// happened, for logs and errors.Is; Errno is what the client is told. A zero
// Errno is treated as any other error (EIO), never as success.
type ClientError struct {
	Errno Errno
	Err   error
}

func (e *ClientError) Error() string { return fmt.Sprintf("%v (sent to client as %v)", e.Err, e.Errno) }

// Unwrap returns Err.
func (e *ClientError) Unwrap() error { return e.Err }

// errnoFor maps a Device's error to the errno sent to the client. The
// second result is false for errors the server must log (mapped to EIO).
func errnoFor(err error) (Errno, bool) {
	var ce *ClientError
	switch {
	case errors.As(err, &ce) && ce.Errno != 0:
		// A zero Errno would tell the client that the request succeeded;
		// it falls through to EIO.
		return ce.Errno, true
	case errors.Is(err, ErrReadOnly):
		return EPERM, true
	case errors.Is(err, ErrOutOfRange):
		return EINVAL, true
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT), errors.Is(err, syscall.EFBIG):
		return ENOSPC, true
	}
	return EIO, false
}
