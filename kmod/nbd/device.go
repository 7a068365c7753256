package nbd

import (
	"context"
	"errors"
)

// Device is what an NBD export serves. The server calls its methods from
// several goroutines at once (requests are pipelined and may come over
// several connections); a Device must be safe for that.
//
// Write, WriteZeroes and Trim take ownership of nothing: p is valid only
// during the call unless the Device copies it. Methods return when the
// operation is complete in the Device's sense (for a replicated device: when
// the write-ordering protocol says so); fua asks that the range be durable
// before returning, as if followed by Flush.
//
// Errors: ErrReadOnly for a write to a device that does not accept writes
// now (it is mapped to EPERM), ErrOutOfRange (EINVAL), anything else is
// reported to the client as EIO. A *ClientError carries a specific errno.
type Device interface {
	Size() uint64
	ReadAt(ctx context.Context, p []byte, off uint64) error
	WriteAt(ctx context.Context, p []byte, off uint64, fua bool) error
	Flush(ctx context.Context) error
	Trim(ctx context.Context, off, length uint64) error
	WriteZeroes(ctx context.Context, off, length uint64, fua bool) error
}

// Errors a Device may return.
var (
	ErrReadOnly   = errors.New("device is read-only")
	ErrOutOfRange = errors.New("request beyond the end of the device")
)
