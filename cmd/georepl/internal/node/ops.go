package node

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"
	"unsafe"

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
)

func (d device) Size() uint64 { return d.r.st.dataSize }

// MultiConn: a flush goes through the engine, which flushes the whole local
// disk and barriers every peer, so it covers writes from every connection.
func (d device) MultiConn() bool { return true }

func (d device) ReadAt(ctx context.Context, p []byte, off uint64) error {
	st := d.r.st
	if !st.detached.Load() {
		n, err := st.data.ReadAt(p, int64(off))
		d.r.diskRead.Add(uint64(n))
		if err == nil || d.r.onIOError != core.DetachOnIOError || errors.Is(err, kmod.ErrOutOfBounds) {
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
	srv := nbd.NewServer(func(name string) (nbd.Device, error) {
		if name != "" && name != r.cfg.Name {
			return nil, fmt.Errorf("%w: this socket exports resource %q, not %q", nbd.ErrNoSuchExport, r.cfg.Name, name)
		}
		if !r.isPrimary() {
			return nil, r.notPrimaryError()
		}
		return device{r}, nil
	}, r.log.With("export", r.self.Export))
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

// Primary promotes the resource on this node and attaches the kernel
// device the configuration names, if any.
//
// With force, a sync target whose resync was interrupted and whose undo
// log holds the image from before the resync is first rolled back to that
// image (the resource goes down and up again; see undo.go), then promoted:
// the operator gets a consistent, older image rather than a mix.
//
// Writes this node received from the Primary it lost (or that demoted
// itself since) are applied first: Promote is refused (core.ErrBusy) until
// they are on the disk, which takes a few local writes, so it is retried.
func (r *resource) Primary(force bool) error {
	rollBack := false
	promote := func() error {
		if force && r.canRollBack() {
			rollBack = true
			return nil
		}
		if err := r.engine.Promote(force); err != nil {
			if errors.Is(err, core.ErrNoQuorum) {
				return fmt.Errorf("cannot make %s Primary on %s: %w (--force promotes anyway: only if the nodes it cannot reach are down, or two Primaries may write)", r.cfg.Name, r.self.Name, err)
			}
			return fmt.Errorf("cannot make %s Primary on %s: %w%s", r.cfg.Name, r.self.Name, err, r.undoHint())
		}
		r.process()
		r.publishStatus()
		return r.failed
	}
	deadline := time.Now().Add(30 * time.Second)
	err := r.call(promote)
	for errors.Is(err, core.ErrBusy) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
		err = r.call(promote)
	}
	if err == nil && rollBack {
		err = r.rollBackAndPromote()
	}
	if err != nil {
		return err
	}
	if err := r.attachKernelDevice(); err != nil {
		return fmt.Errorf("%s is Primary on %s and its export serves, but the kernel device is not attached: %w", r.cfg.Name, r.self.Name, err)
	}
	return nil
}

// Secondary demotes the resource: clients of the export are disconnected
// first, the engine is demoted once their outstanding requests ended or
// are held for quorum (the demotion fails those with EIO), and then the
// connections are waited for.
func (r *resource) Secondary() error {
	if err := r.call(func() error {
		if r.engine.Status().Role != core.Primary {
			return fmt.Errorf("resource %s is already Secondary on %s", r.cfg.Name, r.self.Name)
		}
		return nil
	}); err != nil {
		return err
	}
	// The kernel device goes first: it refuses, naming the holder, while
	// it is mounted or open, and then nothing else has changed.
	if err := r.detachKernelDevice(); err != nil {
		return err
	}
	// Waiting for the connections before demoting would wait for ever on
	// a request held for quorum, which only the demotion ends.
	var stopped <-chan struct{}
	if r.export != nil {
		stopped = r.export.StopConnections()
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := r.call(func() error {
			err := r.engine.Demote()
			if err == nil {
				r.process()
				r.publishStatus()
				err = r.failed
			}
			return err
		})
		if err == nil {
			break
		}
		if !errors.Is(err, core.ErrBusy) || time.Now().After(deadline) {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
	if stopped != nil {
		<-stopped // the last replies; a request that was not submitted yet fails, as on a Secondary
	}
	return nil
}

// Connect lets this node connect to peerName again (all peers when
// empty). discardMyData makes this node the victim if the next handshake
// finds a split brain (core.Engine.DiscardMyData); a Primary refuses it.
func (r *resource) Connect(peerName string, discardMyData bool) error {
	if discardMyData {
		targets, err := r.peersNamed(peerName)
		if err != nil {
			return err
		}
		if err := r.call(func() error {
			if r.engine.Status().Role == core.Primary {
				return fmt.Errorf("resource %s is Primary on %s, and a Primary's data is never discarded: run `georepl secondary %s` first", r.cfg.Name, r.self.Name, r.cfg.Name)
			}
			for _, p := range targets {
				r.mu.Lock()
				connected := p.conn != nil
				r.mu.Unlock()
				if connected && peerName != "" {
					return fmt.Errorf("resource %s on %s is connected to %s: there is no split brain to resolve, and --discard-my-data would discard nothing", r.cfg.Name, r.self.Name, p.node.Name)
				}
				r.engine.DiscardMyData(p.id)
			}
			return nil
		}); err != nil {
			return err
		}
	}
	return r.setWanted(peerName, true)
}

// Disconnect closes the connection to peerName (all peers when empty) and
// keeps it closed (StandAlone) until Connect.
func (r *resource) Disconnect(peerName string) error {
	return r.setWanted(peerName, false)
}

func (r *resource) setWanted(peerName string, wanted bool) error {
	targets, err := r.peersNamed(peerName)
	if err != nil {
		return err
	}
	return r.call(func() error {
		for _, p := range targets {
			r.mu.Lock()
			p.wanted = wanted
			if wanted {
				p.lastErr = ""
			}
			r.mu.Unlock()
			if !wanted && p.conn != nil {
				p.conn.close(errors.New("disconnected by the administrator"))
				r.setConn(p, nil)
				r.engine.Disconnected(p.id)
			}
		}
		r.process()
		// Now, not at the next tick: a wait-sync right after connect
		// must not see the connection as it was before the disconnect.
		r.publishStatus()
		return nil
	})
}

// PauseSync pauses (paused true) or resumes the resync from this node to
// peerName (every peer when empty): no new resync block is read for it
// until resumed; the pause lasts until resume-sync or the resource goes
// down, across reconnections.
func (r *resource) PauseSync(peerName string, paused bool) error {
	targets, err := r.peersNamed(peerName)
	if err != nil {
		return err
	}
	return r.call(func() error {
		for _, p := range targets {
			if err := r.engine.PauseResync(p.id, paused); err != nil {
				return err
			}
		}
		r.process()
		r.publishStatus()
		return nil
	})
}

func (r *resource) peersNamed(name string) ([]*peer, error) {
	if name == "" {
		return sortedPeers(r.peers), nil
	}
	for _, p := range r.peers {
		if p.node.Name == name {
			return []*peer{p}, nil
		}
	}
	names := []string{}
	for _, p := range sortedPeers(r.peers) {
		names = append(names, p.node.Name)
	}
	return nil, fmt.Errorf("resource %s has no peer %q on node %s (peers: %v)", r.cfg.Name, name, r.self.Name, names)
}

// forceDown takes the resource down even when Primary (daemon shutdown).
// It is idempotent: a resource that failed takes itself down, and the
// daemon's shutdown may try again.
func (r *resource) forceDown() error {
	r.mu.Lock()
	if !r.up {
		r.mu.Unlock()
		return nil
	}
	r.up = false
	r.mu.Unlock()
	// The export's requests are carried out before the loop stops, except
	// those held for quorum: they end only when the loop stops (failing
	// them), so the wait ends when quorum is lost too.
	exportClosed := r.stopExport()
	r.awaitRequests(exportClosed)
	close(r.stop)
	<-r.loopDone
	<-exportClosed // before the storage closes: a read may still be on the disk
	for _, p := range r.peers {
		if p.dialDone != nil {
			<-p.dialDone
			p.dialDone = nil
		}
	}
	err := r.st.Close()
	r.publishStatus()
	return err
}

// awaitRequests waits until ended is closed, or until this node is a
// Primary without quorum: then the requests it holds end only when it goes
// down or is demoted.
func (r *resource) awaitRequests(ended <-chan struct{}) {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ended:
			return
		case <-tick.C:
		}
		r.emu.Lock()
		held := false
		if r.engine != nil {
			st := r.engine.Status()
			held = st.Role == core.Primary && !st.Quorate
		}
		r.unlockEngine()
		if held {
			return
		}
	}
}

// DumpMD prints the metadata of a resource that is up.
func (r *resource) DumpMD(w io.Writer, asJSON bool) error {
	return r.call(func() error {
		r.persistBitmaps()
		return dumpStore(w, r.st.store, asJSON)
	})
}

// Buffers for write payloads: the NBD server reads each write's payload
// into a buffer from payloads.get (device.WriteBuffer), and the buffer goes
// back to the pool when nothing can read it any more. Without the pool,
// every write allocates its payload afresh, which the kernel then faults
// in page by page and the garbage collector frees again.
//
// The ownership chain of a payload p that WriteAt receives:
//
//  1. WriteAt holds p (one reference) until the write completed (every
//     piece of it, for a split write). The engine completes a write (or
//     fails it) only after every local write and data frame carrying p
//     was handed to the driver: the engine emits them in the Ready that
//     starts the write, and completes it at the earliest on the local
//     write's LocalDone.
//  2. process takes one reference per local write of p it collects
//     (localOp), dropped when that write is done or dropped, and one per
//     data frame it queues on a link, dropped once the link's writer has
//     flushed the frame (or the link closed); it finds p by where the
//     write's data starts, which for the pieces of a split write after
//     the first is an alias. process runs with emu held
//     and while WriteAt's reference is held, so the count never climbs
//     back from zero. A request failed early (the resource going down)
//     so cannot release p while its local write still reads it.
//  3. Nothing else keeps p: the engine forgets Request.Data once the write
//     is started (core.Request.Data, core.Message), and resync reads the
//     disk, never a payload.
//
// When the last reference is dropped, p returns to the pool.
type payloads struct {
	mu    sync.Mutex
	inUse map[*byte]*payload
	free  [payloadClasses]sync.Pool // []byte of capacity minPayloadClass<<i
}

// payload counts the references to one buffer in use.
type payload struct {
	buf []byte // the whole buffer, its capacity a class size
	// aliases are where the pieces of a split write start, after the
	// first (device.beginWrite): ref finds the buffer by them too.
	aliases []*byte
	refs    int // guarded by payloads.mu
}

const (
	minPayloadClass = 4 << 10
	payloadClasses  = 14 // up to 32 MiB, nbd.MaxPayload
)

// payloadClass is the index of the smallest class holding n bytes, or -1
// if n is larger than any class.
func payloadClass(n int) int {
	for c := range payloadClasses {
		if n <= minPayloadClass<<c {
			return c
		}
	}
	return -1
}

// get returns a buffer of n bytes; its content is undefined.
func (ps *payloads) get(n int) []byte {
	c := payloadClass(n)
	if c < 0 {
		return make([]byte, n)
	}
	if b, ok := ps.free[c].Get().([]byte); ok {
		return b[:n]
	}
	return make([]byte, n, minPayloadClass<<c)
}

// hold records p as in use, with one reference, and returns its handle.
// p must come from get and not be in use.
func (ps *payloads) hold(p []byte) *payload {
	pl := &payload{buf: p[:cap(p)], refs: 1}
	ps.mu.Lock()
	if ps.inUse == nil {
		ps.inUse = map[*byte]*payload{}
	}
	ps.inUse[unsafe.SliceData(pl.buf)] = pl
	ps.mu.Unlock()
	return pl
}

// alias makes ref find pl by piece too: piece is a part of pl's buffer
// that a request of its own carries (a piece of a split write). Called
// while pl is held.
func (ps *payloads) alias(pl *payload, piece []byte) {
	key := unsafe.SliceData(piece)
	ps.mu.Lock()
	ps.inUse[key] = pl
	pl.aliases = append(pl.aliases, key)
	ps.mu.Unlock()
}

// ref takes one more reference to the buffer that p starts (or a piece of
// it that alias named), if it is in use, and returns its handle; nil
// otherwise (p is not pooled).
func (ps *payloads) ref(p []byte) *payload {
	if cap(p) == 0 {
		return nil
	}
	ps.mu.Lock()
	defer ps.mu.Unlock()
	pl := ps.inUse[unsafe.SliceData(p)]
	if pl != nil {
		pl.refs++
	}
	return pl
}

// release drops one reference; the last one returns the buffer to the
// pool. A nil handle is ignored.
func (ps *payloads) release(pl *payload) {
	if pl == nil {
		return
	}
	ps.mu.Lock()
	pl.refs--
	last := pl.refs == 0
	if last {
		delete(ps.inUse, unsafe.SliceData(pl.buf))
		for _, key := range pl.aliases {
			delete(ps.inUse, key)
		}
	}
	ps.mu.Unlock()
	if last {
		ps.put(pl.buf)
	}
}

// put returns p, which nothing may use any more, to the pool, if it has a
// class's capacity.
func (ps *payloads) put(p []byte) {
	if c := payloadClass(cap(p)); c >= 0 && minPayloadClass<<c == cap(p) {
		//lint:ignore SA6002 a slice header per write costs nothing next to its payload
		ps.free[c].Put(p[:cap(p)])
	}
}
