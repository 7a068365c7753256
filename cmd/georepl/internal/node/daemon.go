package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"sort"
	"sync"
	"time"

	"github.com/georepl/georepl/configs"
	"github.com/georepl/georepl/core"
	"github.com/georepl/georepl/core/wire"
	"github.com/georepl/georepl/kmod"
	"github.com/georepl/georepl/protocols"
	"github.com/georepl/georepl/transports"
	"github.com/georepl/georepl/transports/nodetls"
)

// Daemon runs one node.
type Daemon struct {
	cfg      *configs.Config
	nodeName string
	log      *slog.Logger
	events   *broadcaster

	// resources are this node's resources by name, under resMu: Adjust
	// adds, replaces (while down) and removes them.
	resMu     sync.RWMutex
	resources map[string]*resource
	// adjustMu serialises Adjust with itself and with Up, so that a
	// resource does not come up on settings Adjust is replacing.
	adjustMu sync.Mutex

	mu        sync.Mutex
	listeners map[string]transports.Listener // by "transport address"
	closed    bool

	handshakes *transports.Admission // accepted, not yet authenticated
	preAuthLog *preAuthLog

	// identities are this node's TLS identities, by resource; resources
	// without TLS files have none. exportIDs are the TLS set-ups of its
	// exports with export_tls. ReloadTLS replaces both, under idMu.
	idMu       sync.RWMutex
	identities map[string]*nodetls.Identity
	exportIDs  map[string]*nodetls.ExportIdentity

	opts   Options
	faults *kmod.Faults // test facility: see InjectIOFaults
	// noResume makes this daemon offer no resume feature, as a version
	// before it did over tcp with TLS: a test facility.
	noResume bool

	// witnesses are this node's voters of resources it holds no data of
	// (automatic failover); started by UpAll, closed by Close.
	witnesses []*witness
}

// InjectIOFaults arms kmod.Faults, triggered by the file at trigger, on
// the backing disk of every resource this daemon brings up from now on.
// It is a test facility (the daemon's --test-io-faults flag), for tests
// of the I/O error paths with real processes; call it before UpAll.
func (d *Daemon) InjectIOFaults(trigger string) {
	d.faults = kmod.NewFaults(trigger)
	d.log.Warn("TEST FACILITY: I/O faults armed on every backing disk; they fail once the trigger file exists", "trigger", trigger)
}

// NewDaemon prepares node nodeName of cfg, in the world opts describes
// (the zero Options: the real one). Resources start down.
func NewDaemon(cfg *configs.Config, nodeName string, log *slog.Logger, opts Options) (*Daemon, error) {
	d := &Daemon{
		cfg: cfg, nodeName: nodeName, log: log.With("node", nodeName), opts: opts,
		events:     newBroadcaster(),
		resources:  map[string]*resource{},
		listeners:  map[string]transports.Listener{},
		handshakes: transports.NewAdmission(maxHandshakes, maxHandshakesPerSource),
	}
	d.preAuthLog = &preAuthLog{log: d.log}
	ids, err := loadIdentities(cfg, nodeName)
	if err != nil {
		return nil, err
	}
	exportIDs, err := loadExportIdentities(cfg, nodeName)
	if err != nil {
		return nil, err
	}
	d.identities, d.exportIDs = ids, exportIDs
	for name, id := range ids {
		d.warnExpiry(name, "this node's TLS certificate", id.Leaf)
	}
	for name, id := range exportIDs {
		d.warnExpiry(name, "the export's TLS certificate", id.Leaf)
	}
	for _, rc := range cfg.Resources {
		if rc.Failover.Mode == configs.FailoverAuto {
			for _, w := range rc.Failover.Witnesses {
				if w.Name == nodeName {
					d.witnesses = append(d.witnesses, &witness{rc: rc, w: w})
				}
			}
		}
		self, err := rc.Node(nodeName)
		if err != nil {
			continue // this node takes no part in the resource
		}
		r, err := newResource(d, rc, self)
		if err != nil {
			return nil, err
		}
		d.resources[rc.Name] = r
	}
	if len(d.resources) == 0 && len(d.witnesses) == 0 {
		return nil, fmt.Errorf("node %q takes part in no resource of the configuration", nodeName)
	}
	d.noteBufferBudget()
	return d, nil
}

// bufferBudget is the sum of max_buffer over this node's connections:
// what they may hold together of write data sent and not acknowledged
// (a Primary's) or received and not yet written (a Secondary's), the
// bulk of what a busy daemon keeps in memory.
func (d *Daemon) bufferBudget() int64 {
	var sum int64
	for _, name := range d.resourceNames() {
		r := d.lookup(name)
		if r == nil {
			continue
		}
		r.mu.Lock()
		for _, p := range r.peers {
			sum += int64(p.link().Net.MaxBuffer)
		}
		r.mu.Unlock()
	}
	return sum
}

// noteBufferBudget tells Options.BufferBudget the current budget.
func (d *Daemon) noteBufferBudget() {
	if d.opts.BufferBudget != nil {
		d.opts.BufferBudget(d.bufferBudget())
	}
}

// Resource finds a resource this node takes part in.
func (d *Daemon) resource(name string) (*resource, error) {
	if r := d.lookup(name); r != nil {
		return r, nil
	}
	return nil, fmt.Errorf("node %s has no resource %q (it has: %v)", d.nodeName, name, d.resourceNames())
}

// lookup is the resource called name, or nil.
func (d *Daemon) lookup(name string) *resource {
	d.resMu.RLock()
	defer d.resMu.RUnlock()
	return d.resources[name]
}

func (d *Daemon) resourceNames() []string {
	d.resMu.RLock()
	defer d.resMu.RUnlock()
	names := make([]string, 0, len(d.resources))
	for n := range d.resources {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// UpAll brings every resource of this node up.
func (d *Daemon) UpAll() error {
	if err := d.StartWitnesses(); err != nil {
		return err
	}
	for _, name := range d.resourceNames() {
		if err := d.lookup(name).Up(); err != nil {
			return fmt.Errorf("up %s: %w", name, err)
		}
	}
	return nil
}

// Close takes every resource down (demoting nothing: a Primary resource
// keeps its role in metadata) and closes the listeners.
func (d *Daemon) Close() error {
	var errs []error
	for _, name := range d.resourceNames() {
		r := d.lookup(name)
		if r != nil && r.isUp() {
			errs = append(errs, r.forceDown())
		}
	}
	for _, wt := range d.witnesses {
		if wt.loop != nil {
			errs = append(errs, wt.loop.Close())
			wt.loop = nil
		}
	}
	d.mu.Lock()
	d.closed = true
	for k, l := range d.listeners {
		l.Close()
		delete(d.listeners, k)
	}
	d.mu.Unlock()
	return errors.Join(errs...)
}

// ensureListener listens on addr with the named transport unless already.
func (d *Daemon) ensureListener(transport, addr string) error {
	key := transport + " " + addr
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.listeners[key]; ok {
		return nil
	}
	tr, err := d.opts.transport(transport)
	if err != nil {
		return err
	}
	l, err := tr.Listen(addr, transports.Options{TLS: d.listenerTLS(transport), SetupFailed: d.setupFailed(transport)})
	if err != nil {
		return fmt.Errorf("listening on %s (%s): %w", addr, transport, err)
	}
	d.listeners[key] = l
	go d.acceptLoop(transport, l)
	d.log.Info("listening", "transport", transport, "address", l.Addr())
	return nil
}

func (d *Daemon) acceptLoop(transport string, l transports.Listener) {
	for {
		conn, err := l.Accept(context.Background())
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				d.log.Error("accept failed", "transport", transport, "err", err)
			}
			return
		}
		slot := d.handshakes.Admit(transports.Source(conn.RemoteAddr()), func() { conn.Close() })
		if slot == nil {
			d.preAuthLog.Warn("refusing connection: too many handshakes in progress from its address", "remote", conn.RemoteAddr(), "limit", maxHandshakesPerSource)
			conn.Close()
			continue
		}
		go d.accept(transport, conn, slot)
	}
}

// accept runs the acceptor's side of the handshake and hands the link to
// its resource. slot is the handshake's place among those in progress,
// given back once the peer is authenticated or the handshake failed.
func (d *Daemon) accept(transport string, conn transports.Conn, slot *transports.Admitted) {
	defer slot.Release()
	hs := newHandshake(conn)
	ctx, cancel := context.WithTimeout(context.Background(), handshakeTimeout)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()

	theirs, err := hs.readIntro()
	if err != nil {
		d.preAuthLog.Warn("handshake failed", "remote", conn.RemoteAddr(), "err", err)
		hs.refuse(err)
		return
	}
	r, p, err := d.identify(theirs, transport)
	if err == nil {
		err = r.checkPeerIdentity(conn, p, false)
	}
	if err != nil {
		d.preAuthLog.Warn("refusing connection", "remote", conn.RemoteAddr(), "err", err)
		hs.refuse(err)
		return
	}
	ours, err := r.intro(p)
	if err != nil {
		hs.refuse(err)
		return
	}
	if err := hs.sendMessage(wire.TypeIntro, &ours); err != nil {
		d.preAuthLog.Warn("handshake failed", "resource", r.cfg.Name, "peer", p.node.Name, "remote", conn.RemoteAddr(), "err", err)
		return
	}
	if err := hs.authenticate(p.link().Net.SharedSecret, &ours, theirs, false); err != nil {
		d.preAuthLog.Warn("refusing connection", "resource", r.cfg.Name, "peer", p.node.Name, "remote", conn.RemoteAddr(), "err", err)
		hs.refuse(err)
		return
	}
	slot.Release()
	err = r.admits(p)
	var f *wire.Frame
	if err == nil {
		// The dialer says what it wants first: a new connection (its
		// hello), to continue one on this path (resume), or a probe of
		// the path (ping).
		f, err = hs.reader.ReadFrame()
		if err != nil {
			err = fmt.Errorf("handshake: %w", err)
		}
	}
	var sent, got *wire.Hello
	if err == nil {
		switch f.Type {
		case wire.TypePing:
			if hs.send(&wire.Frame{Type: wire.TypePingAck, Seq: f.Seq}) == nil {
				hs.awaitClose()
			}
			conn.Close()
			return
		case wire.TypeResume:
			if err = r.acceptResume(p, hs, f); err == nil {
				return
			}
		default:
			sent, got, err = r.acceptHello(p, hs, f, &ours, theirs)
		}
	}
	if err != nil {
		r.log.Warn("refusing connection", "peer", p.node.Name, "remote", conn.RemoteAddr(), "err", err)
		hs.refuse(err)
		return
	}
	r.handOver(p, transport, conn, hs, sent, got, false, p.pathOfConn(conn))
}

// identify finds the resource and peer an intro speaks for, from the
// configuration alone: its peer is not authenticated yet.
func (d *Daemon) identify(in *wire.Intro, transport string) (*resource, *peer, error) {
	r := d.lookup(in.Resource)
	if r == nil {
		return nil, nil, fmt.Errorf("unknown resource %q on node %s", in.Resource, d.nodeName)
	}
	if int(in.To) != r.self.ID {
		return nil, nil, fmt.Errorf("resource %s: peer believes it is talking to node id %d, but this is %s (id %d): check the configuration", in.Resource, in.To, r.self.Name, r.self.ID)
	}
	p, ok := r.peers[core.NodeID(in.From)]
	if !ok {
		return nil, nil, fmt.Errorf("resource %s: node id %d is not configured", in.Resource, in.From)
	}
	if p.link().Net.Transport != transport {
		return nil, nil, fmt.Errorf("resource %s: node %s connected over %s but the configuration says %s", in.Resource, p.node.Name, transport, p.link().Net.Transport)
	}
	return r, p, nil
}

// admits reports why r does not take a connection from p now, once p is
// authenticated: only p may learn r's state.
func (r *resource) admits(p *peer) error {
	if !r.isUp() {
		return fmt.Errorf("resource %s is down on node %s", r.cfg.Name, r.self.Name)
	}
	r.mu.Lock()
	wanted := p.wanted
	r.mu.Unlock()
	if !wanted {
		return fmt.Errorf("resource %s: node %s is disconnected by the administrator (StandAlone)", r.cfg.Name, r.self.Name)
	}
	return nil
}

// hello asks the loop for the engine's current hello towards p.
func (r *resource) hello(p *peer) (wire.Hello, error) {
	var h wire.Hello
	err := r.call(func() error {
		h = r.engine.Hello(p.id)
		return nil
	})
	if err != nil {
		return h, err
	}
	h.Version = wire.Version
	h.Resource = r.cfg.Name
	h.From = uint8(r.self.ID)
	h.To = uint8(p.id)
	return h, nil
}

// handOver turns an authenticated connection into a link owned by r.
// dialer says which side ours is, path which path conn is on.
func (r *resource) handOver(p *peer, transport string, conn transports.Conn, hs *handshake, ours, theirs *wire.Hello, dialer bool, path int) {
	readers := [2]*wire.Reader{
		wire.NewReader(hs.stream(transports.ChannelData)),
		hs.reader,
	}
	// Protocols B and C wait for the peer's answer anyway: their frames
	// may be written by the goroutine that queues them (link.flush).
	inline := p.link().Protocol != protocols.A
	l := newLink(r, p.id, p.node.Name, transport, conn, readers, p.link().Net.Compression, p.link().Net.PingInterval, p.link().Net.Timeout, inline)
	l.hello, l.ourHello = theirs, ours
	l.resumeWithin = l.timeout
	if !p.multi {
		l.resumeWithin = min(l.timeout, singlePathGrace)
	}
	// The link's transport connection, its records counted (rekey.go).
	l.cur = l.newPathConn(conn, readers, path, hs.records)
	if ours.Features&theirs.Features&wire.FeatureResume == 0 && r.rekeys(p) && dialer {
		r.log.Warn("the peer cannot continue a connection on a new TLS session (an older version?): its keys are renewed by closing the connection and making it anew, which resynchronizes what changed meanwhile",
			"peer", p.node.Name, "every_records", r.rekeyBudget(p))
	}
	if ours.Features&theirs.Features&wire.FeatureResume != 0 {
		l.rt = &retransmit{}
		first, second := ours.Nonce, theirs.Nonce
		if !dialer {
			first, second = second, first
		}
		copy(l.rt.session[:32], first[:])
		copy(l.rt.session[32:], second[:])
	}
	// The connection clears the last error before the loop attaches it:
	// attaching may record a new one at once (a split brain), which a
	// clear after the hand-over could erase.
	r.mu.Lock()
	p.lastErr = ""
	r.mu.Unlock()
	select {
	case r.linkUp <- l:
	case <-r.loopDone:
		conn.Close()
	}
}

// dialLoop keeps a connection to p while the resource is up and p wanted:
// it dials the paths in turn, continues a suspended connection on one,
// and probes the paths not in use every ping_interval.
func (r *resource) dialLoop(p *peer) {
	defer close(p.dialDone)
	tr, err := r.d.opts.transport(p.link().Net.Transport)
	if err != nil {
		r.log.Error("cannot connect", "peer", p.node.Name, "err", err)
		return
	}
	var lastLogged string
	var upSince time.Time // when the connection being waited on was seen up
	var lastProbe time.Time
	answered := make([]int, len(p.paths)) // probes in a row each path answered
	next := 0                             // the path to dial next
	var rekeyFailed time.Time             // when renewing the TLS keys last failed
	for {
		rekeyWait := time.Duration(math.MaxInt64)
		r.mu.Lock()
		conn, wanted := p.conn, p.wanted
		r.mu.Unlock()
		var wait, suspended <-chan struct{}
		var rekey chan struct{}
		retry := p.link().Net.ConnectRetry
		switch {
		case conn != nil && conn.rt != nil && conn.isSuspended():
			if r.resumeOver(tr, p, conn) {
				continue
			}
			wait = conn.closed
		case conn != nil:
			wait, suspended = conn.closed, conn.suspendSignal()
			upSince = time.Now()
			rekey = conn.current().records.dueSignal()
			if isClosed(rekey) {
				// Renewing failed last time: again after connect_retry.
				wait := p.link().Net.ConnectRetry - time.Since(rekeyFailed)
				if wait <= 0 {
					if !r.renewKeys(tr, p, conn) {
						rekeyFailed = time.Now()
					}
					continue
				}
				rekey, rekeyWait = nil, wait
			}
			if len(p.paths) > 1 {
				if time.Since(lastProbe) >= p.link().Net.PingInterval {
					back := r.probePaths(tr, p, conn, answered)
					lastProbe = time.Now()
					if back >= 0 {
						clear(answered)
						if err := r.dialOnce(tr, p, back, conn, resumeMove); err != nil {
							r.setPath(p, back, "failed", err.Error())
							r.log.Warn("moving back to the preferred path failed", "peer", p.node.Name, "path", describePath(p, back), "err", err)
						}
						continue
					}
				}
				retry = p.link().Net.PingInterval - time.Since(lastProbe)
			}
		case !upSince.IsZero():
			// A connection that ended soon after it came up (the
			// handshake's decision refused it, or the peer dropped it at
			// once) is tried again after the retry interval, not at once:
			// two nodes would otherwise reconnect in a tight loop.
			retry -= time.Since(upSince)
			upSince = time.Time{}
			if retry <= 0 {
				continue
			}
		case wanted:
			i := next % len(p.paths)
			next++
			err := r.dialOnce(tr, p, i, nil, resumeFailover)
			if err == nil {
				upSince = time.Now() // it may be over before the loop looks
				continue
			}
			r.setPath(p, i, "failed", err.Error())
			r.mu.Lock()
			p.lastErr = err.Error()
			r.mu.Unlock()
			if next%len(p.paths) != 0 {
				continue // the next path at once
			}
			if msg := err.Error(); msg != lastLogged {
				r.log.Warn("connecting failed; retrying", "peer", p.node.Name, "address", p.paths[i][1], "every", p.link().Net.ConnectRetry, "err", err)
				lastLogged = msg
			}
		}
		timer := time.NewTimer(max(min(retry, rekeyWait), 0))
		select {
		case <-r.stop:
			timer.Stop()
			return
		case <-wait:
			timer.Stop()
			lastLogged = ""
		case <-suspended:
			timer.Stop()
		case <-rekey:
			timer.Stop()
		case <-timer.C:
		}
	}
}

// untilDown is a context that ends after limit, or when the resource
// goes down: a dial or a probe of a peer that does not answer must not
// hold up down (which waits for the dialer) for its whole timeout.
func (r *resource) untilDown(limit time.Duration) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	stop := r.stop
	go func() {
		select {
		case <-stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

// dialHandshake dials p on path i and runs the handshake up to
// authentication.
func (r *resource) dialHandshake(ctx context.Context, tr transports.Transport, p *peer, i int) (hs *handshake, ours, theirs *wire.Intro, err error) {
	addr := p.paths[i][1]
	conn, err := tr.Dial(ctx, addr, transports.Options{TLS: r.dialTLS(p)})
	if err != nil {
		return nil, nil, nil, err
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	hs = newHandshake(conn)
	// The dialer renews the keys (rekey.go).
	hs.records.budget.Store(r.rekeyBudget(p))
	if err := r.checkPeerIdentity(conn, p, true); err != nil {
		err = fmt.Errorf("the node at %s: %w", addr, err)
		hs.refuse(err)
		return nil, nil, nil, err
	}
	in, err := r.intro(p)
	if err != nil {
		conn.Close()
		return nil, nil, nil, err
	}
	ours = &in
	if err := hs.sendMessage(wire.TypeIntro, ours); err != nil {
		conn.Close()
		return nil, nil, nil, err
	}
	theirs, err = hs.readIntro()
	if err == nil && (int(theirs.From) != p.node.ID || theirs.Resource != r.cfg.Name) {
		err = fmt.Errorf("the node at %s is %s node id %d, not %s node id %d: check the configuration", addr, theirs.Resource, theirs.From, r.cfg.Name, p.node.ID)
		hs.refuse(err)
	}
	if err == nil {
		if err = hs.authenticate(p.link().Net.SharedSecret, ours, theirs, true); err != nil {
			hs.refuse(err)
		}
	}
	if err != nil {
		conn.Close()
		return nil, nil, nil, err
	}
	return hs, ours, theirs, nil
}

// dialOnce connects to p on path i: a new connection, or the
// continuation of link l if not nil, as how says: suspended, moving back
// to path i from a working one, or renewing its TLS keys on path i.
func (r *resource) dialOnce(tr transports.Transport, p *peer, i int, l *link, how resumeHow) error {
	limit := handshakeTimeout
	if l != nil {
		// A suspended link fails after timeout: one dead path must not
		// take all of it.
		limit = min(limit, l.resumeWithin)
	}
	ctx, cancel := r.untilDown(limit)
	defer cancel()
	hs, ours, theirs, err := r.dialHandshake(ctx, tr, p, i)
	if err != nil {
		return err
	}
	conn := hs.conn
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	if l != nil {
		if theirs.Features&wire.FeatureResume == 0 {
			err := fmt.Errorf("the node at %s cannot continue a connection on another path (no path blocks in its configuration?)", p.paths[i][1])
			hs.refuse(err)
			return err
		}
		if err := r.dialResume(p, hs, i, l, how); err != nil {
			conn.Close()
			return err
		}
		stop()
		return nil
	}
	sent, got, err := r.exchangeHellos(p, hs, ours, theirs)
	if err != nil {
		hs.refuse(err)
		conn.Close()
		return err
	}
	stop()
	r.handOver(p, p.link().Net.Transport, conn, hs, sent, got, true, i)
	// Wait until the loop has taken the link, so that the next round of
	// dialLoop sees it.
	return r.call(func() error { return nil })
}
