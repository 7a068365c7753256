package node

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync/atomic"
	"time"

	"github.com/georepl/georepl/configs"
	"github.com/georepl/georepl/core"
	"github.com/georepl/georepl/core/wire"
	"github.com/georepl/georepl/transports"
)

// A connection with path blocks has several address pairs. It uses one
// transport connection at a time, on one path: the engine's frames are
// ordered per channel, and spreading them over paths of different
// latencies would need a reordering buffer at the receiver and would make
// the slowest path set every write's latency. The dialing node probes the
// other paths (an authenticated handshake that ends after a ping) and,
// when the transport connection in use fails, suspends the link and
// continues it on the first path that answers. The paths' order is the
// order of preference: when a path before the one in use answers its
// probes again, the dialer continues the connection there the same way
// (a resume flagged as a move), its old transport connection working.
//
// Continuing without losing anything: on such a connection both nodes
// count the frames they write and read on each channel since the
// connection started (pings, ping-acks and path-acks aside). A writer
// keeps every frame it wrote until the peer confirms it (TypePathAck,
// every pathAckEvery frames and at every monitor tick). On resumption
// each side first stops reading the old transport connection and waiting
// for its frames to reach the engine, then tells the other how many it
// received (TypeResume); each re-sends, in order, the frames the other
// lacks, before anything queued meanwhile. So the receiver sees every
// frame once and in order, and the engine never learns that the path
// changed. A link that finds no path within its timeout fails as any
// other: the engine is told the peer is gone.

// pathAckEvery and pathAckBytes are how many frames, and how many payload
// bytes, a reader counts before it confirms them without waiting for the
// monitor's tick: they bound what the peer keeps (beyond what is in
// flight), in frames and in memory, whatever the frames' size.
const (
	pathAckEvery = 128
	pathAckBytes = 4 << 20
)

// retransmit is what a link that can move keeps and counts.
type retransmit struct {
	// session names the connection across its transport connections: the
	// nonces of the intros of its first one, the dialer's first.
	session [64]byte
	// Under the link's pmu: sent counts the frames written on each
	// channel; kept holds those the peer has not confirmed, oldest first
	// (kept[ch][i] is frame sent[ch]-len(kept[ch])+i+1).
	sent [2]uint64
	kept [2][]queued
	// recv counts the frames read on each channel; acked is what the last
	// path-ack sent confirmed. recvBytes and ackedBytes are the same in
	// payload bytes.
	recv, acked           [2]atomic.Uint64
	recvBytes, ackedBytes [2]atomic.Uint64
}

// counted reports whether frames of type t are counted and kept: the
// link's own frames are not, they mean nothing on another connection.
func counted(t wire.Type) bool {
	switch t {
	case wire.TypePing, wire.TypePingAck, wire.TypePathAck, wire.TypeRefuse:
		return false
	}
	return true
}

// keep numbers and keeps the counted frames of batch, about to be
// written on ch; the kept ones carry their payload references along.
// Called with pmu held.
func (rt *retransmit) keep(ch wire.Channel, batch []queued) error {
	for _, it := range batch {
		if counted(it.f.Type) {
			rt.sent[ch]++
			rt.kept[ch] = append(rt.kept[ch], it)
		}
	}
	return nil
}

// confirm forgets the frames of ch up to number n, which the peer
// received. Called with pmu held.
func (rt *retransmit) confirm(res *resource, ch wire.Channel, n uint64) error {
	kept := rt.kept[ch]
	first := rt.sent[ch] - uint64(len(kept)) // frames confirmed before kept[0]
	if n > rt.sent[ch] {
		return fmt.Errorf("the peer confirms %d frames on the %s channel, but only %d were sent", n, channelName(ch), rt.sent[ch])
	}
	if n <= first {
		return nil
	}
	drop := n - first
	for _, it := range kept[:drop] {
		res.payloads.release(it.pl)
	}
	clear(kept[:drop])
	rt.kept[ch] = kept[drop:]
	return nil
}

// received counts a frame of n payload bytes read on ch and reports
// whether enough came since the last path-ack for another.
func (rt *retransmit) received(ch wire.Channel, n int) bool {
	frames := rt.recv[ch].Add(1) - rt.acked[ch].Load()
	bytes := rt.recvBytes[ch].Add(uint64(n)) - rt.ackedBytes[ch].Load()
	return frames >= pathAckEvery || bytes >= pathAckBytes
}

// drop releases what is kept. Called with pmu held, when the link closes.
func (rt *retransmit) drop(res *resource) {
	for ch := range rt.kept {
		for _, it := range rt.kept[ch] {
			res.payloads.release(it.pl)
		}
		rt.kept[ch] = nil
	}
}

// sendPathAck confirms to the peer what arrived so far.
func (l *link) sendPathAck() {
	for ch := range l.rt.recvBytes {
		l.rt.ackedBytes[ch].Store(l.rt.recvBytes[ch].Load())
	}
	d, c := l.rt.recv[wire.ChannelData].Load(), l.rt.recv[wire.ChannelControl].Load()
	l.rt.acked[wire.ChannelData].Store(d)
	l.rt.acked[wire.ChannelControl].Store(c)
	l.send(&wire.Frame{Type: wire.TypePathAck, Seq: d, Epoch: c}, nil)
}

// confirmed handles the peer's path-ack.
func (l *link) confirmed(f *wire.Frame) error {
	if l.rt == nil {
		return errors.New("the peer sent a path-ack on a connection that keeps no frames")
	}
	l.pmu.Lock()
	defer l.pmu.Unlock()
	return errors.Join(l.rt.confirm(l.res, wire.ChannelData, f.Seq), l.rt.confirm(l.res, wire.ChannelControl, f.Epoch))
}

// pathTick is the monitor's work for a link that can move: a suspended
// link that found no path within its timeout fails; a working one
// confirms what arrived since the last path-ack.
func (l *link) pathTick(now time.Time) error {
	l.pmu.Lock()
	suspended, since, err := l.suspended, l.suspendedAt, l.pathErr
	l.pmu.Unlock()
	if suspended {
		if now.Sub(since) > l.resumeWithin {
			return fmt.Errorf("no path to the peer within %v (the last one failed: %w)", l.resumeWithin, err)
		}
		return nil
	}
	for ch := range l.rt.recv {
		if l.rt.recv[ch].Load() != l.rt.acked[ch].Load() {
			l.sendPathAck()
			break
		}
	}
	return nil
}

func (l *link) isSuspended() bool {
	l.pmu.Lock()
	defer l.pmu.Unlock()
	return l.suspended
}

// suspendSignal is closed when the link is next suspended.
func (l *link) suspendSignal() <-chan struct{} {
	l.pmu.Lock()
	defer l.pmu.Unlock()
	return l.suspend
}

// pathFailed handles the failure of transport connection pc: a link that
// can move is suspended until it resumes on another (or fails after its
// timeout); any other link fails.
func (l *link) pathFailed(pc *pathConn, err error) { l.leave(pc, err, false) }

// leave stops using transport connection pc, for err: the link is
// suspended until it resumes on another. moved says that pc still works
// and the connection moves to a path it prefers: pc's path is then on
// standby, not failed.
func (l *link) leave(pc *pathConn, err error, moved bool) {
	if l.rt == nil {
		l.fail(err)
		return
	}
	l.pmu.Lock()
	if l.cur != pc || l.suspended {
		l.pmu.Unlock()
		pc.close()
		return
	}
	l.suspended, l.suspendedAt, l.pathErr = true, time.Now(), err
	close(l.suspend)
	l.suspend = make(chan struct{})
	// Paused before anyone sees the link suspended: quiesce must not find
	// a queue idle that a writer may take again.
	for _, q := range l.queues {
		q.pause()
	}
	l.pmu.Unlock()
	pc.close()
	if moved {
		l.res.pathLeft(l, pc.path, err)
	} else {
		l.res.pathDown(l, pc.path, err)
	}
}

// quiesce suspends l if it is not yet (the peer found its path dead
// first, or the connection moves to another path: moved), for why, and
// waits until nothing more of its old transport connection is read or
// written; it returns the frames received on each channel. ok is false
// once l is closed.
func (l *link) quiesce(why error, moved bool) (recv [2]uint64, ok bool) {
	// A link the loop attached (so a peer may find it) but did not start
	// yet has no readers to wait for, and would start them on the new
	// transport connection as well as resume.
	select {
	case <-l.started:
	case <-l.closed:
		return recv, false
	}
	pc := l.current()
	l.leave(pc, why, moved)
	pc.readersDone.Wait()
	for _, q := range l.queues {
		if !q.idle() {
			return recv, false
		}
	}
	return [2]uint64{l.rt.recv[0].Load(), l.rt.recv[1].Load()}, true
}

// resume continues a quiesced link on pc, once the peer said what it
// received: what it lacks goes out first, in order.
func (l *link) resume(pc *pathConn, peerRecv [2]uint64) (resent int, err error) {
	var resend [2][]queued
	l.pmu.Lock()
	if isClosed(l.closed) {
		l.pmu.Unlock()
		return 0, errors.New("the connection closed")
	}
	for ch := range l.rt.kept {
		kept := l.rt.kept[ch]
		first := l.rt.sent[ch] - uint64(len(kept))
		if got := peerRecv[ch]; got < first || got > l.rt.sent[ch] {
			l.pmu.Unlock()
			return 0, fmt.Errorf("the peer received %d frames on the %s channel, but frames %d to %d are kept: the connection cannot continue", got, channelName(wire.Channel(ch)), first+1, l.rt.sent[ch])
		}
		if err := l.rt.confirm(l.res, wire.Channel(ch), peerRecv[ch]); err != nil {
			l.pmu.Unlock()
			return 0, err
		}
		resend[ch] = l.rt.kept[ch]
		resent += len(resend[ch])
		l.rt.kept[ch] = nil
		l.rt.sent[ch] = peerRecv[ch]
	}
	sent, recv := l.cur.stats()
	l.sentBefore += sent
	l.recvBefore += recv
	l.cur, l.suspended = pc, false
	l.pmu.Unlock()
	l.mu.Lock()
	l.lastRecv = time.Now()
	if !l.waitingSince.IsZero() {
		l.waitingSince = l.lastRecv
	}
	l.mu.Unlock()
	l.startReaders(pc)
	for ch, q := range l.queues {
		q.unpause(resend[ch])
	}
	l.flushAll()
	return resent, nil
}

// pathConfig is a peer's paths: the configured ones, or the nodes' own
// addresses as the only one.
func pathsOf(rc *configs.Resource, self, peer *configs.Node) (paths []configs.Path, multi bool) {
	if ps := rc.Paths(self.Name, peer.Name); len(ps) > 0 {
		return ps, true
	}
	return []configs.Path{{self.Address, peer.Address}}, false
}

// pathState is what this node knows of one path to a peer (under the
// resource's mu).
type pathState struct {
	state string // "active", "standby", "failed" or "unknown"
	err   string
}

// setPath records path i's state.
func (r *resource) setPath(p *peer, i int, state, err string) {
	if i < 0 || i >= len(p.pathStates) {
		return
	}
	r.mu.Lock()
	p.pathStates[i] = pathState{state: state, err: err}
	r.mu.Unlock()
}

func describePath(p *peer, i int) string {
	if i < 0 || i >= len(p.paths) {
		return "an unknown path"
	}
	return fmt.Sprintf("path %d (%s - %s)", i, p.paths[i][0], p.paths[i][1])
}

// pathDown records the failure of link l's transport connection on path i.
func (r *resource) pathDown(l *link, i int, err error) {
	p := r.peers[l.peer]
	r.setPath(p, i, "failed", err.Error())
	r.log.Warn("path failed; the connection is suspended until it continues on a path", "peer", p.node.Name, "path", describePath(p, i), "within", l.resumeWithin, "err", err)
}

// pathLeft records that link l left path i, which works, for another.
func (r *resource) pathLeft(l *link, i int, why error) {
	p := r.peers[l.peer]
	r.setPath(p, i, "standby", "")
	r.log.Info("leaving a path that works", "peer", p.node.Name, "path", describePath(p, i), "why", why)
}

// pathUp records that link l continues on path i after path old; moved
// says that old still worked and the connection moved to the path the
// dialer prefers.
func (r *resource) pathUp(l *link, old, i, resent int, moved bool) {
	p := r.peers[l.peer]
	detail := fmt.Sprintf("the connection continues, %d frames re-sent", resent)
	if moved {
		// The old path may have been found closed before the resume
		// said why: it works.
		r.setPath(p, old, "standby", "")
		detail = fmt.Sprintf("the connection moves back to the preferred path, %d frames re-sent", resent)
	}
	r.setPath(p, i, "active", "")
	r.log.Info("the connection continues on a path", "peer", p.node.Name, "from", describePath(p, old), "to", describePath(p, i), "moved", moved, "resent", resent)
	r.emu.Lock()
	r.emit(core.Event{Peer: p.id, HasPeer: true, What: "path", Old: describePath(p, old), New: describePath(p, i), Detail: detail})
	r.unlockEngine()
}

// pathOfConn is the index of the path an accepted connection came in on,
// from its local address, or -1.
func (p *peer) pathOfConn(conn transports.Conn) int {
	local := conn.LocalAddr()
	if local == nil {
		return -1
	}
	for i, path := range p.paths {
		if sameAddr(path[0], local.String()) {
			return i
		}
	}
	return -1
}

func sameAddr(configured, actual string) bool {
	ch, cp, err1 := net.SplitHostPort(configured)
	ah, ap, err2 := net.SplitHostPort(actual)
	if err1 != nil || err2 != nil || cp != ap {
		return false
	}
	if ch == ah {
		return true
	}
	ci, ai := net.ParseIP(ch), net.ParseIP(ah)
	return ci != nil && ai != nil && ci.Equal(ai)
}

// resumeOver tries to continue suspended link l on each path in turn,
// starting after the one that failed; it reports whether one worked.
func (r *resource) resumeOver(tr transports.Transport, p *peer, l *link) bool {
	failed := l.current().path
	for k := 1; k <= len(p.paths); k++ {
		i := (failed + k) % len(p.paths)
		if err := r.dialOnce(tr, p, i, l, resumeFailover); err != nil {
			r.setPath(p, i, "failed", err.Error())
			r.log.Warn("continuing the connection failed", "peer", p.node.Name, "path", describePath(p, i), "err", err)
			if isClosed(l.closed) {
				return false
			}
			continue
		}
		return true
	}
	return false
}

// switchBackProbes is how many probes in a row a path must answer before
// the connection moves back to it from a path it prefers less: a link
// that flaps does not take the connection with it at every probe.
const switchBackProbes = 2

// probePaths checks the paths of p other than link l's with a handshake
// that ends after a ping, for status; answered[i] counts the probes in a
// row that path i answered. It returns the path the connection should
// move back to: the first (in the configuration's order, which is the
// order of preference) before the active one that answered
// switchBackProbes probes in a row, or -1.
func (r *resource) probePaths(tr transports.Transport, p *peer, l *link, answered []int) int {
	active := l.current().path
	for i := range p.paths {
		if i == active || l.isSuspended() {
			continue
		}
		if err := r.probe(tr, p, i, l); err != nil {
			answered[i] = 0
			r.setPath(p, i, "failed", err.Error())
		} else {
			answered[i]++
			r.setPath(p, i, "standby", "")
		}
	}
	if l.rt == nil || l.isSuspended() {
		return -1
	}
	for i := range active {
		if answered[i] >= switchBackProbes {
			return i
		}
	}
	return -1
}

// probe runs the handshake on path i up to authentication, then a ping.
// It gives up as soon as link l is suspended: the dialer has a connection
// to continue, and a probe of a dead path could take most of the time
// that allows.
func (r *resource) probe(tr transports.Transport, p *peer, i int, l *link) error {
	ctx, cancel := r.untilDown(min(handshakeTimeout, p.link().Net.Timeout))
	defer cancel()
	go func() {
		select {
		case <-l.suspendSignal():
			cancel()
		case <-l.closed:
			cancel()
		case <-ctx.Done():
		}
	}()
	hs, _, _, err := r.dialHandshake(ctx, tr, p, i)
	if err != nil {
		return err
	}
	defer hs.conn.Close()
	stop := context.AfterFunc(ctx, func() { hs.conn.Close() })
	defer stop()
	if err := hs.send(&wire.Frame{Type: wire.TypePing}); err != nil {
		return err
	}
	if _, err := hs.expect(wire.TypePingAck); err != nil {
		return err
	}
	return nil
}

// acceptResume answers a dialer that continues a connection: the link it
// names must be p's, suspended or not (the dialer may have found its path
// dead first).
func (r *resource) acceptResume(p *peer, hs *handshake, f *wire.Frame) error {
	r.mu.Lock()
	l := p.conn
	r.mu.Unlock()
	if l == nil || l.rt == nil || string(l.rt.session[:]) != string(f.Payload) {
		return fmt.Errorf("resource %s: node %s has no connection to continue with node %s (it ended): connect anew", r.cfg.Name, r.self.Name, p.node.Name)
	}
	l.resumeMu.Lock()
	defer l.resumeMu.Unlock()
	old, i := l.current().path, p.pathOfConn(hs.conn)
	moved := f.Flags&wire.FlagMove != 0
	why := fmt.Errorf("the peer continues the connection on %s", describePath(p, i))
	switch {
	case moved && i == old:
		why = fmt.Errorf("the peer renews the TLS keys on %s", describePath(p, i))
	case moved:
		why = fmt.Errorf("the peer moves the connection back to its preferred %s", describePath(p, i))
	}
	if err := l.sendResume(hs, why, moved); err != nil {
		return err
	}
	return r.continueOn(l, hs, i, old, f, moved)
}

// sendResume stops reading l's old transport connection (for why; moved
// if it works), waits until what it read reached the engine, and tells
// the peer on hs how many frames of each channel arrived. Called with
// l.resumeMu held.
func (l *link) sendResume(hs *handshake, why error, moved bool) error {
	recv, ok := l.quiesce(why, moved)
	if !ok {
		return errors.New("the connection closed")
	}
	f := &wire.Frame{Type: wire.TypeResume, Seq: recv[wire.ChannelData], Epoch: recv[wire.ChannelControl], Payload: l.rt.session[:]}
	if moved {
		f.Flags |= wire.FlagMove
	}
	return hs.send(f)
}

// continueOn moves l onto hs's connection, path i, re-sending what the
// peer's resume frame f says it lacks; a failure ends l. moved says the
// old path still works. Called with l.resumeMu held.
func (r *resource) continueOn(l *link, hs *handshake, i, old int, f *wire.Frame, moved bool) error {
	resent, err := l.resume(l.newPathConn(hs.conn, [2]*wire.Reader{wire.NewReader(hs.stream(transports.ChannelData)), hs.reader}, i, hs.records),
		[2]uint64{f.Seq, f.Epoch})
	if err != nil {
		l.fail(err)
		return err
	}
	if moved && i == old {
		// A move onto the path in use: a new TLS session, new keys.
		r.rekeyed(l, i, resent)
		return nil
	}
	r.pathUp(l, old, i, resent, moved)
	return nil
}

// dialResume continues link l on the handshake hs just made on path i,
// as how says: after its transport connection failed; moving to path i,
// which the dialer prefers, from one that works; or on path i, the one in
// use, for new TLS keys. The last two are flagged as a move: l's
// transport connection works.
func (r *resource) dialResume(p *peer, hs *handshake, i int, l *link, how resumeHow) error {
	l.resumeMu.Lock()
	defer l.resumeMu.Unlock()
	old := l.current().path
	moved := how != resumeFailover
	why := fmt.Errorf("moving back to the preferred %s", describePath(p, i))
	switch {
	case how == resumeMove && (l.isSuspended() || old == i):
		return fmt.Errorf("no move to %s: the connection left %s meanwhile", describePath(p, i), describePath(p, old))
	case how == resumeRekey && (l.isSuspended() || old != i):
		return fmt.Errorf("no new TLS session on %s: the connection left it meanwhile", describePath(p, i))
	case how == resumeRekey:
		why = fmt.Errorf("renewing the TLS keys on %s", describePath(p, i))
	}
	if err := l.sendResume(hs, why, moved); err != nil {
		return err
	}
	f, err := hs.expect(wire.TypeResume)
	if err != nil {
		var refused *peerRefusal
		if errors.As(err, &refused) {
			// The peer ended the connection: so must we.
			l.fail(err)
		}
		return err
	}
	if string(f.Payload) != string(l.rt.session[:]) {
		err := errors.New("the peer continued another connection")
		l.fail(err)
		return err
	}
	return r.continueOn(l, hs, i, old, f, moved)
}
