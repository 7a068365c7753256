package node

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/georepl/georepl/core"
	"github.com/georepl/georepl/kmod"
	"github.com/georepl/georepl/kmod/nbd"
)

// device is the resource as the NBD export serves it: writes go through
// the engine (and so to every peer), reads come from the local disk, or
// through the engine from a peer in sync once the disk is detached.
type device struct{ r *resource }

var (
	_ nbd.Device       = device{}
	_ nbd.MultiConn    = device{}
	_ nbd.WriteBuffers = device{}
	_ nbd.AsyncWriter  = device{}
	_ nbd.AsyncFlusher = device{}
)

func (d device) Size() uint64 { return d.r.st.size.Load() }

// MultiConn: a flush goes through the engine, which flushes the whole local
// disk and barriers every peer, so it covers writes from every connection.
func (d device) MultiConn() bool { return true }

func (d device) ReadAt(ctx context.Context, p []byte, off uint64) error {
	st := d.r.st
	if !st.detached.Load() {
		n, err := st.data.ReadAt(p, int64(off))
		d.r.diskRead.Add(uint64(n))
		if err == nil || d.r.cfg.Disk.OnIOError != core.DetachOnIOError || errors.Is(err, kmod.ErrOutOfBounds) {
			return err // a range past the end is the caller's error, not the disk's
		}
		d.r.detachDisk(fmt.Sprintf("read of [%d, +%d) failed: %v", off, len(p), err))
	}
	return d.r.readFromPeers(ctx, p, off)
}

// readFromPeers reads through the engine, which asks a peer in sync.
func (r *resource) readFromPeers(ctx context.Context, p []byte, off uint64) error {
	for len(p) > 0 {
		n := min(len(p), core.MaxWriteLength)
		req := core.Request{Kind: core.ReqRead, Offset: off, Length: uint64(n), Data: p[:n]}
		if err := r.submit(ctx, req); err != nil {
			return err
		}
		p, off = p[n:], off+uint64(n)
	}
	return nil
}

// WriteBuffer gives the NBD server a pooled buffer for a write's payload.
func (d device) WriteBuffer(n int) []byte { return d.r.payloads.get(n) }

// WriteAt replicates p. p comes from WriteBuffer (the server reads every
// payload into one) and goes back to the pool once nothing reads it: see
// payloads.
func (d device) WriteAt(ctx context.Context, p []byte, off uint64, fua bool) error {
	pl := d.r.payloads.hold(p)
	defer d.r.payloads.release(pl)
	return await(ctx, func(done func(error)) { d.beginWrite(ctx, pl, p, off, fua, done) })
}

// WriteAsync is WriteAt for a request that runs on the export's reader:
// the reader goes back to reading once the local write is done, and the
// goroutine that completes the write (the reader of the acknowledging
// peer's link, under protocol C) sends the reply.
func (d device) WriteAsync(ctx context.Context, p []byte, off uint64, fua bool, done func(error)) {
	pl := d.r.payloads.hold(p)
	d.beginWrite(ctx, pl, p, off, fua, func(err error) {
		d.r.payloads.release(pl)
		done(err)
	})
}

// beginWrite starts the write of p, held as pl, at off. The engine takes
// writes of up to core.MaxWriteLength and the export advertises
// nbd.MaxPayload, so a longer write goes to the engine as pieces of that
// length, which behave as the whole write would:
//
//   - They are submitted together (see resource.start), so a later request
//     that overlaps any of them is ordered after all of them.
//   - Each carries the FUA flag: the write is durable everywhere when the
//     last piece is.
//   - done is called once every piece completed, with the first piece's
//     error if any failed: the client learns the write failed (its range
//     then holds old data, new data, or some of each, as after any failed
//     write), and not before nothing of it is in flight any more, so that a
//     retry cannot be overtaken by a piece of the write it retries.
func (d device) beginWrite(ctx context.Context, pl *payload, p []byte, off uint64, fua bool, done func(error)) {
	whole := core.Request{Kind: core.ReqWrite, Offset: off, Length: uint64(len(p)), Data: p, FUA: fua}
	if len(p) <= core.MaxWriteLength {
		d.begin(ctx, whole, done)
		return
	}
	pieces := make([]core.Request, 0, (len(p)+core.MaxWriteLength-1)/core.MaxWriteLength)
	for at := 0; at < len(p); at += core.MaxWriteLength {
		piece := p[at:min(at+core.MaxWriteLength, len(p))]
		if at > 0 {
			d.r.payloads.alias(pl, piece) // the frames and local writes of piece find pl by where piece starts
		}
		pieces = append(pieces, core.Request{Kind: core.ReqWrite, Offset: off + uint64(at), Length: uint64(len(piece)), Data: piece, FUA: fua})
	}
	// One activation for the whole range: activating piece by piece could
	// wait between two pieces, letting another request come between them.
	release, err := d.r.activate(ctx, whole)
	if err != nil {
		done(err)
		return
	}
	d.r.start(ctx, func(err error) {
		release()
		done(d.clientError(err))
	}, pieces...)
}

func (d device) Flush(ctx context.Context) error {
	return d.do(ctx, core.Request{Kind: core.ReqFlush})
}

// FlushAsync is Flush for a request that runs on the export's reader: the
// reader goes back to reading once the flush is started (no new reader
// while it waits for the peers' barrier acknowledgements), and whoever
// completes the flush sends the reply.
func (d device) FlushAsync(ctx context.Context, done func(error)) {
	d.begin(ctx, core.Request{Kind: core.ReqFlush}, done)
}

func (d device) Trim(ctx context.Context, off, length uint64) error {
	return d.do(ctx, core.Request{Kind: core.ReqTrim, Offset: off, Length: length})
}

func (d device) WriteZeroes(ctx context.Context, off, length uint64, fua bool) error {
	return d.do(ctx, core.Request{Kind: core.ReqZeroes, Offset: off, Length: length, FUA: fua})
}

func (d device) do(ctx context.Context, req core.Request) error {
	return await(ctx, func(done func(error)) { d.begin(ctx, req, done) })
}

// begin activates req's activity-log extents, then starts it (see
// resource.start); done gets its result as the NBD server should see it.
func (d device) begin(ctx context.Context, req core.Request, done func(error)) {
	release, err := d.r.activate(ctx, req)
	if err != nil {
		done(err) // an I/O error to the client: the metadata disk is failing or the resource going down
		return
	}
	d.r.start(ctx, func(err error) {
		release()
		done(d.clientError(err))
	}, req)
}

// joinedResults completes requests submitted together (the pieces of a
// split write) once the last of them completed, with the first error in
// their order.
type joinedResults struct {
	mu       sync.Mutex
	errs     []error
	left     int
	complete func(error)
}

func joinResults(n int, complete func(error)) *joinedResults {
	return &joinedResults{errs: make([]error, n), left: n, complete: complete}
}

// done returns the completion of the i-th request.
func (j *joinedResults) done(i int) func(error) {
	return func(err error) {
		j.mu.Lock()
		j.errs[i] = err
		j.left--
		last := j.left == 0
		j.mu.Unlock()
		if !last {
			return
		}
		for _, err := range j.errs {
			if err != nil {
				j.complete(err)
				return
			}
		}
		j.complete(nil)
	}
}

// clientError gives a request's error the meaning the NBD server maps to
// the client's errno.
func (d device) clientError(err error) error {
	switch {
	case errors.Is(err, core.ErrNotPrimary):
		return fmt.Errorf("%w: %w", nbd.ErrReadOnly, d.r.notPrimaryError())
	case errors.Is(err, core.ErrOutOfRange):
		return fmt.Errorf("%w: %w", nbd.ErrOutOfRange, err)
	}
	return err
}

func (r *resource) notPrimaryError() error {
	return fmt.Errorf("resource %s is Secondary on node %s: writes are accepted only on the Primary (run `georepl primary %s` on the node that should take writes)", r.cfg.Name, r.self.Name, r.cfg.Name)
}

// startExport listens on the node's export address. The export stays up
// while the resource is up; it serves the device only while Primary, and
// refuses clients with a clear reason otherwise.
func (r *resource) startExport() error {
	lis, err := nbd.Listen(r.self.Export)
	if err != nil {
		return fmt.Errorf("export %s: %w", r.self.Export, err)
	}
	var opts []nbd.ServerOption
	if r.self.ExportTLS != nil {
		opts = append(opts, nbd.WithTLS(r.d.exportTLS(r.cfg.Name)))
	}
	srv := nbd.NewServer(func(name string) (nbd.Device, error) {
		if name != "" && name != r.cfg.Name {
			return nil, fmt.Errorf("%w: this socket exports resource %q, not %q", nbd.ErrNoSuchExport, r.cfg.Name, name)
		}
		if !r.isPrimary() {
			return nil, r.notPrimaryError()
		}
		return device{r}, nil
	}, r.log.With("export", r.self.Export), opts...)
	r.export, r.exportLis = srv, lis
	go func() {
		if err := srv.Serve(lis); err != nil {
			r.log.Debug("export stopped", "err", err)
		}
	}()
	return nil
}

// stopExport stops listening, drops the export's clients and returns at
// once; the channel it returns is closed once their requests ended.
func (r *resource) stopExport() <-chan struct{} {
	closed := make(chan struct{})
	srv := r.export
	r.export, r.exportLis = nil, nil
	go func() {
		defer close(closed)
		if srv != nil {
			srv.Close()
		}
	}()
	return closed
}

func (r *resource) isPrimary() bool {
	st := r.status.Load()
	return st != nil && st.Role == core.Primary.String()
}
