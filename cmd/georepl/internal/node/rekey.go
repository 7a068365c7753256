package node

import (
	"fmt"
	"io"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/georepl/georepl/configs"
	"github.com/georepl/georepl/core"
	"github.com/georepl/georepl/transports"
)

// Renewing the keys of a tcp connection with TLS. TLS 1.3 bounds how
// many records one AES-GCM key may protect (RFC 8446 section 5.5: about
// 2^24.5 full-size records, some 380 GiB), and Go's crypto/tls never
// sends a KeyUpdate of its own (it only answers the peer's), so a
// replication connection that lives for months would outgrow its keys.
// The dialing node therefore counts the records of each transport
// connection's TLS sessions and, past a budget, continues the connection
// on a new transport connection on the same path: a new TLS handshake,
// new keys. It is the resume of a connection moving to another path
// (paths.go), onto the path in use: the engine sees nothing, what was in
// flight is re-sent in order, no resync and no write failing. quic needs
// none of this: quic-go updates the keys of a QUIC connection itself
// (every 100,000 packets sent or received).
//
// The dialer counts, on both channels and in both directions, an upper
// bound of the records: a stream Write of n bytes is at most 1+n/16384
// records, a Read returns the bytes of at most one record (Go's TLS
// never sends empty ones), and Go's first 128 KiB of a session go in
// smaller records (rekeySmallRecords more at most). The sum over all four
// keys of a transport connection's two TLS sessions bounds what each one
// protected, so the budget is conservative.
// singlePathGrace bounds how long a connection without path blocks stays
// suspended when its transport connection ends: a re-key ends the old
// one just before its resume arrives on the new one (already set up and
// authenticated), which takes far less; a peer that died is given up
// after it, and protocol C writes wait no longer for it, as they did
// not before such connections could resume. (With path blocks, a
// connection waits its whole timeout for another path.)
const singlePathGrace = time.Second

const (
	// defaultRekeyRecords is the budget: 2^23 records, a quarter of the
	// limit; at 16 KiB a record, 128 GiB per transport connection.
	defaultRekeyRecords = 1 << 23
	maxRecordPayload    = 16 << 10
	rekeySmallRecords   = 128
)

// rekeys reports whether the connection to p renews its TLS keys: it
// runs over tcp with TLS.
func (r *resource) rekeys(p *peer) bool {
	return p.link().Net.Transport == "tcp" && p.link().Net.TLS == configs.TLSRequired
}

// rekeyBudget is how many records a transport connection to p may carry
// before the dialer renews its keys; math.MaxUint64 where it does not.
func (r *resource) rekeyBudget(p *peer) uint64 {
	if !r.rekeys(p) {
		return math.MaxUint64
	}
	if n := r.d.opts.TLSRekeyRecords; n > 0 {
		return n
	}
	return defaultRekeyRecords
}

// recordCount counts the TLS records of one transport connection; due is
// closed once they reach the budget.
type recordCount struct {
	n      atomic.Uint64
	budget atomic.Uint64
	once   sync.Once
	due    chan struct{}
}

func newRecordCount() *recordCount {
	c := &recordCount{due: make(chan struct{})}
	c.n.Store(rekeySmallRecords)
	c.budget.Store(math.MaxUint64)
	return c
}

func (c *recordCount) add(k uint64) {
	if c.n.Add(k) >= c.budget.Load() {
		c.once.Do(func() { close(c.due) })
	}
}

// count returns the records counted so far.
func (c *recordCount) count() uint64 { return c.n.Load() }

// countedStream is a channel's stream whose records c counts.
type countedStream struct {
	s io.ReadWriter
	c *recordCount
}

func (s countedStream) Read(p []byte) (int, error) {
	n, err := s.s.Read(p)
	if n > 0 {
		s.c.add(1)
	}
	return n, err
}

func (s countedStream) Write(p []byte) (int, error) {
	n, err := s.s.Write(p)
	if n > 0 {
		s.c.add(1 + uint64(n)/maxRecordPayload)
	}
	return n, err
}

// stream is channel ch of hs's transport connection, its records counted.
func (h *handshake) stream(ch transports.Channel) io.ReadWriter {
	return countedStream{h.conn.Stream(ch), h.records}
}

// dueSignal is closed once c reached its budget; nil (never) if c is.
func (c *recordCount) dueSignal() chan struct{} {
	if c == nil {
		return nil
	}
	return c.due
}

// resumeHow is why a dialer continues a link on a new transport
// connection.
type resumeHow int

const (
	resumeFailover resumeHow = iota // its transport connection failed
	resumeMove                      // to a path it prefers, from one that works
	resumeRekey                     // on the path in use, for new TLS keys
)

// renewKeys gives link l new TLS keys: l continues on a new transport
// connection on the path in use. Where the peer cannot continue a
// connection (an older version), l ends and is made anew. It reports
// whether it did either.
func (r *resource) renewKeys(tr transports.Transport, p *peer, l *link) bool {
	pc := l.current()
	if l.rt == nil {
		err := fmt.Errorf("the TLS keys are due for renewal after %d records, and the peer cannot continue the connection on a new TLS session: the connection is made anew", pc.records.count())
		r.log.Warn("renewing the TLS keys by reconnecting", "peer", p.node.Name, "err", err)
		l.fail(err)
		return true
	}
	if err := r.dialOnce(tr, p, pc.path, l, resumeRekey); err != nil {
		r.log.Warn("renewing the TLS keys failed; trying again", "peer", p.node.Name, "path", describePath(p, pc.path), "records", pc.records.count(), "every", p.link().Net.ConnectRetry, "err", err)
		return false
	}
	return true
}

// rekeyed records that link l continues on a new TLS session on path i,
// resent frames re-sent: its keys are new.
func (r *resource) rekeyed(l *link, i, resent int) {
	p := r.peers[l.peer]
	r.setPath(p, i, "active", "")
	r.mu.Lock()
	p.tlsRekeys++
	n := p.tlsRekeys
	r.mu.Unlock()
	r.log.Info("the TLS keys were renewed: the connection continues on a new TLS session", "peer", p.node.Name, "path", describePath(p, i), "resent", resent, "rekeys", n)
	r.emu.Lock()
	r.emit(core.Event{Peer: p.id, HasPeer: true, What: "rekey", Old: describePath(p, i), New: describePath(p, i),
		Detail: fmt.Sprintf("new TLS session on the same path, %d frames re-sent", resent)})
	r.unlockEngine()
}
