package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"flag"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/georepl/georepl/cmd/georepl/internal/admin"
	"github.com/georepl/georepl/cmd/georepl/internal/node"
	"github.com/georepl/georepl/kmod/nbd"
)

// netnsDetection is the detection timeout of TestFailoverNetns: long
// enough that the consensus log's leases hold on a loaded 2-core machine
// with the daemons under the race detector (at 1s, five clusters at once
// there lost their leases more often than they kept them).
const netnsDetection = 3 * time.Second

// failoverNetns runs TestFailoverNetns: `make failover-netns` sets it, and
// make test runs that target beside the other packages' tests rather
// than inside cmd/georepl's (the longest part of make test; this one
// mostly waits on its daemons, about three minutes).
var failoverNetns = flag.Bool("failover.netns", false, "run TestFailoverNetns (make failover-netns, part of make test)")

var failoverRounds = flag.Int("failover.rounds", 0, "rounds of each failure in TestFailoverNetns (0: each failure's default, 1 to 3)")

// TestFailoverNetns: automatic failover with real daemons, each in a
// network namespace of its own joined to the others by a veth pair on a
// bridge, under five kinds of failure: the Primary killed (SIGKILL), the
// Primary's link cut, a protocol C Secondary's link cut, the Primary's
// link flapping, and the Primary killed while dr's link is cut (no
// majority of voters is left until dr's link returns). An application
// writes through whichever node is Primary all along; an observer polls
// every node's role and checks, over the whole run, that at most one node
// was a writable Primary at any moment (from the roles and from the
// writes acknowledged) and, at the end, that every write acknowledged
// under protocol C is on the Primary and that the three disks are equal.
// The time from each failure to the first write acknowledged after it is
// logged per kind (median, p99): a figure, never an assertion.
func TestFailoverNetns(t *testing.T) {
	if !*failoverNetns {
		t.Skip("run by make failover-netns (-failover.netns), which make test runs on its own")
	}
	for _, s := range []struct {
		name   string
		rounds int
		round  func(r *failoverRun) []time.Duration
	}{
		{"kill-primary", 3, (*failoverRun).killPrimary},
		{"isolate-primary", 2, (*failoverRun).isolatePrimary},
		{"isolate-secondary", 2, (*failoverRun).isolateSecondary},
		{"flapping-primary-link", 1, (*failoverRun).flapPrimary},
		{"kill-primary-isolate-dr", 1, (*failoverRun).killPrimaryIsolateDR},
	} {
		t.Run(s.name, func(t *testing.T) {
			t.Parallel()
			r := newFailoverRun(t)
			rounds := s.rounds
			if *failoverRounds > 0 {
				rounds = *failoverRounds
			}
			var times []time.Duration
			for range rounds {
				times = append(times, s.round(r)...)
			}
			r.finish()
			med, p99 := medianP99(times)
			t.Logf("%s: time from failure to service restored (first write acknowledged after it), detection_timeout %v, %d failures: median %v, p99 %v; all: %v",
				s.name, netnsDetection, len(times), med, p99, times)
		})
	}
}

// medianP99 returns the median and the 99th percentile (nearest rank) of
// ds.
func medianP99(ds []time.Duration) (time.Duration, time.Duration) {
	s := slices.Clone(ds)
	slices.Sort(s)
	if len(s) == 0 {
		return 0, 0
	}
	rank := (99*len(s) + 99) / 100
	return s[len(s)/2], s[rank-1]
}

// requireNetns skips a test that needs network namespaces where it cannot
// have them, except in CI (CI set), where it fails: CI runs as root.
func requireNetns(t *testing.T) {
	t.Helper()
	msg := ""
	if os.Geteuid() != 0 {
		msg = "needs root to create network namespaces"
	} else if _, err := exec.LookPath("ip"); err != nil {
		msg = "needs ip (apt-get install -y iproute2, or `make deps`)"
	}
	if msg == "" {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// netnsFabric is a namespace holding a bridge (the switch) and one
// namespace per node, joined to the bridge by a veth pair: node i has
// 10.224.0.(i+1)/24 on its end. Cutting a node's port on the switch cuts
// it off from every other node. Every name starts with h24; the
// namespaces are removed (and their interfaces with them) at the end of
// the test.
type netnsFabric struct {
	t    *testing.T
	sw   string
	ns   map[string]string // node → its namespace
	port map[string]string // node → its port on the bridge, in sw
	ip   map[string]string
}

var fabricSeq atomic.Int32

func newNetnsFabric(t *testing.T, nodes []string) *netnsFabric {
	t.Helper()
	requireNetns(t)
	prefix := fmt.Sprintf("h24-%d-%d-", os.Getpid(), fabricSeq.Add(1))
	f := &netnsFabric{t: t, sw: prefix + "sw", ns: map[string]string{}, port: map[string]string{}, ip: map[string]string{}}
	var created []string
	t.Cleanup(func() {
		for _, ns := range created {
			if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
				t.Errorf("ip netns del %s: %v: %s", ns, err, out)
			}
		}
	})
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	addNS := func(ns string) {
		run("netns", "add", ns)
		created = append(created, ns)
		run("-n", ns, "link", "set", "lo", "up")
	}
	addNS(f.sw)
	run("-n", f.sw, "link", "add", "h24br", "type", "bridge")
	run("-n", f.sw, "link", "set", "h24br", "up")
	for i, n := range nodes {
		f.ns[n], f.port[n], f.ip[n] = prefix+n, fmt.Sprintf("h24p%d", i), fmt.Sprintf("10.224.0.%d", i+1)
		addNS(f.ns[n])
		run("-n", f.sw, "link", "add", f.port[n], "type", "veth", "peer", "name", "h24eth", "netns", f.ns[n])
		run("-n", f.sw, "link", "set", f.port[n], "master", "h24br")
		run("-n", f.sw, "link", "set", f.port[n], "up")
		run("-n", f.ns[n], "addr", "add", f.ip[n]+"/24", "dev", "h24eth")
		run("-n", f.ns[n], "link", "set", "h24eth", "up")
	}
	return f
}

// setLink takes node n's port on the switch down (cut) or up.
func (f *netnsFabric) setLink(n string, up bool) {
	f.t.Helper()
	state := "down"
	if up {
		state = "up"
	}
	if out, err := exec.Command("ip", "-n", f.sw, "link", "set", f.port[n], state).CombinedOutput(); err != nil {
		f.t.Fatalf("ip -n %s link set %s %s: %v: %s", f.sw, f.port[n], state, err, out)
	}
}

// addresses moves every address of the demo configuration's node blocks
// (replication and consensus) from 127.0.0.1 to the node's address on the
// fabric.
func (f *netnsFabric) addresses(src string) string {
	heads := regexp.MustCompile(`(?m)^  node "(\w+)" \{`).FindAllStringSubmatchIndex(src, -1)
	var b strings.Builder
	b.WriteString(src[:heads[0][0]])
	for i, h := range heads {
		end := len(src)
		if i+1 < len(heads) {
			end = heads[i+1][0]
		}
		b.WriteString(strings.ReplaceAll(src[h[0]:end], "127.0.0.1:", f.ip[src[h[2]:h[3]]]+":"))
	}
	return b.String()
}

// failoverRun is one cluster on a fabric with its observer and
// application.
type failoverRun struct {
	t   *testing.T
	c   *cluster
	f   *netnsFabric
	o   *roleObserver
	app *failoverApp
	rng *mrand.Rand
}

func newFailoverRun(t *testing.T) *failoverRun {
	f := newNetnsFabric(t, demoNodes)
	c := newCluster(t, 32<<20, shortTimeouts, autoFailover(t), f.addresses, func(src string) string {
		return strings.Replace(src, `detection_timeout = "1s"`, fmt.Sprintf("detection_timeout = %q", netnsDetection), 1)
	})
	for _, n := range demoNodes {
		c.wrap[n] = []string{"ip", "netns", "exec", f.ns[n]}
	}
	c.startInSync()
	r := &failoverRun{t: t, c: c, f: f, rng: mrand.New(mrand.NewPCG(uint64(time.Now().UnixNano()), 17))}
	r.o = newRoleObserver(c)
	r.app = newFailoverApp(r.o, c, (32<<20)/4096/2)
	t.Cleanup(func() {
		r.app.halt()
		r.o.halt()
	})
	r.app.waitAcked(t, 20)
	return r
}

// primary is the node the observer sees writable, once it sees one (a
// Primary holds its writes for a moment when a peer comes or goes: a new
// generation waits for the log).
func (r *failoverRun) primary() string {
	r.t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		if ten, ok := r.o.current(); ok {
			return ten.node
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("no writable Primary for 2 minutes; the observer saw last: %s", r.o.describe())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (r *failoverRun) otherDataNode(n string) string {
	if n == "alpha" {
		return "bravo"
	}
	return "alpha"
}

func (r *failoverRun) killPrimary() []time.Duration {
	p := r.primary()
	r.c.kill(p) // returns once the daemon is gone
	failed := time.Now()
	d := r.app.waitRestored(r.t, failed)
	r.c.start(p)
	r.settle()
	return []time.Duration{d}
}

func (r *failoverRun) isolatePrimary() []time.Duration {
	p := r.primary()
	r.f.setLink(p, false)
	failed := time.Now()
	d := r.app.waitRestored(r.t, failed)
	r.f.setLink(p, true)
	r.settle()
	return []time.Duration{d}
}

func (r *failoverRun) isolateSecondary() []time.Duration {
	p := r.primary()
	s := r.otherDataNode(p)
	r.f.setLink(s, false)
	failed := time.Now()
	d := r.app.waitRestored(r.t, failed)
	time.Sleep(time.Second) // writes go on without it
	r.f.setLink(s, true)
	r.settle()
	return []time.Duration{d}
}

// flapPrimary takes the Primary's link down and up four times, down for
// 0.2 to 1.5 detection timeouts (shorter and longer than it), up for 0.2
// to 1.
func (r *failoverRun) flapPrimary() []time.Duration {
	var downs []time.Time
	share := func(lo, hi float64) time.Duration {
		return time.Duration((lo + (hi-lo)*r.rng.Float64()) * float64(netnsDetection))
	}
	for range 4 {
		p := r.primary()
		r.f.setLink(p, false)
		downs = append(downs, time.Now())
		time.Sleep(share(0.2, 1.5))
		r.f.setLink(p, true)
		time.Sleep(share(0.2, 1))
		if _, ok := r.o.current(); !ok {
			r.app.waitRestored(r.t, downs[len(downs)-1])
		}
	}
	var ds []time.Duration
	for _, down := range downs {
		ds = append(ds, r.app.waitRestored(r.t, down))
	}
	r.settle()
	return ds
}

// killPrimaryIsolateDR kills the Primary and cuts dr's link at once: the
// node left alone is no majority of voters, so nothing may be promoted
// until dr's link returns, after two detection timeouts.
func (r *failoverRun) killPrimaryIsolateDR() []time.Duration {
	p := r.primary()
	r.c.kill(p)
	failed := time.Now()
	r.f.setLink("dr", false)
	time.Sleep(2 * netnsDetection)
	if n := r.app.ackedSince(failed); n > 0 {
		r.t.Errorf("%d writes issued after %s was killed acknowledged with no majority of voters", n, p)
	}
	r.f.setLink("dr", true)
	d := r.app.waitRestored(r.t, failed)
	r.c.start(p)
	r.settle()
	return []time.Duration{d}
}

// settle waits, every daemon running and every link up, until the
// Primary has every other node connected and UpToDate. A node that wrote
// alone while cut off (held writes, never acknowledged) meets the new
// Primary in a split brain: it is resolved by hand, as the admin guide
// says, the cut-off node discarding its changes.
func (r *failoverRun) settle() {
	r.t.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	for {
		p := r.primary()
		st, err := r.c.statusErr(p)
		done := err == nil && st.Role == "Primary"
		for _, n := range demoNodes {
			if n == p || err != nil {
				continue
			}
			peer := r.c.peer(st, n)
			if !(peer.Conn == "Connected" && peer.Repl == "Established" && peer.Disk == "UpToDate" && peer.OutOfSync == 0) {
				done = false
			}
			if peer.Conn == "StandAlone" && strings.Contains(peer.LastError, "split brain") {
				r.t.Logf("%s and %s in a split brain (%s): %s discards its changes", p, n, peer.LastError, n)
				if ns, err := r.c.statusErr(n); err == nil && ns.Role == "Primary" {
					r.c.cli(n, "secondary", "r0")
				}
				r.c.cliErr(n, "connect", "--discard-my-data", "r0", p)
				r.c.cliErr(p, "connect", "r0", n)
			}
		}
		if done {
			return
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("the cluster did not settle within 3 minutes; %s's status: %+v %v", p, st, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// finish stops the application, checks the observer's record and every
// acknowledged write on the Primary, then takes the cluster down and
// compares the three disks.
func (r *failoverRun) finish() {
	r.t.Helper()
	r.settle()
	r.app.halt()
	r.o.halt()
	for _, v := range r.o.violations() {
		r.t.Error(v)
	}
	for _, v := range r.app.tenureViolations() {
		r.t.Error(v)
	}
	p := r.primary()
	checked := r.app.verify(r.t, p)
	r.c.cli(p, "wait-sync", "--timeout", "2m", "r0")
	size := r.c.status(p).Size
	r.c.cli(p, "secondary", "r0")
	for _, n := range demoNodes {
		r.c.cli(n, "down", "r0")
	}
	sums := r.c.dataHashes(size)
	if a, b, d := sums["alpha"], sums["bravo"], sums["dr"]; a != b || a != d {
		r.t.Errorf("disks differ at the end: alpha %x bravo %x dr %x", a[:8], b[:8], d[:8])
	}
	r.t.Logf("%d writes acknowledged, by %d Primaries in turn; the last acknowledged write of each of %d blocks read back from %s",
		r.app.count(), len(r.app.tenures()), checked, p)
}

// tenure is a node's time as Primary: the node and the failover term it
// was promoted in.
type tenure struct {
	node string
	term uint64
}

func (t tenure) String() string { return fmt.Sprintf("%s (term %d)", t.node, t.term) }

// roleObserver polls every node's status over its admin socket, from
// outside the cluster, and keeps, per tenure in which a node showed
// itself a writable Primary (Primary, writes not held), the first answer
// that showed it and the last question that did.
type roleObserver struct {
	c        *cluster
	mu       sync.Mutex
	latest   map[string]roleSeen
	writable map[tenure]*writableSpan
	holders  map[uint64]string // term → the node a status named as its holder
	problems []string
	stop     chan struct{}
	done     chan struct{}
}

type roleSeen struct {
	writable bool
	ten      tenure
	at       time.Time
	what     string // the role and why writes are held, or the error
}

// writableSpan: a node showed itself writable in a tenure in answers
// received from first, to questions sent until last.
type writableSpan struct {
	first, last time.Time
}

func newRoleObserver(c *cluster) *roleObserver {
	o := &roleObserver{c: c, latest: map[string]roleSeen{}, writable: map[tenure]*writableSpan{}, holders: map[uint64]string{},
		stop: make(chan struct{}), done: make(chan struct{})}
	for _, n := range demoNodes {
		o.poll(n)
	}
	go func() {
		defer close(o.done)
		for {
			select {
			case <-o.stop:
				return
			case <-time.After(25 * time.Millisecond):
			}
			for _, n := range demoNodes {
				o.poll(n)
			}
		}
	}()
	return o
}

func (o *roleObserver) halt() { closeAndWait(o.stop, o.done) }

// closeAndWait closes stop, unless it is closed already, and waits for
// done to close.
func closeAndWait(stop, done chan struct{}) {
	select {
	case <-stop:
	default:
		close(stop)
	}
	<-done
}

func (o *roleObserver) poll(n string) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	sent := time.Now()
	var sts []*node.ResourceStatus
	err := admin.Call(ctx, o.c.adminSock(n), admin.Request{Verb: "status", Resource: "r0"}, func(r admin.Reply) error {
		return json.Unmarshal(r.Data, &sts)
	})
	received := time.Now()
	o.mu.Lock()
	defer o.mu.Unlock()
	if err != nil || len(sts) == 0 {
		o.latest[n] = roleSeen{at: sent, what: fmt.Sprintf("no status: %v", err)}
		return
	}
	st := sts[0]
	seen := roleSeen{writable: st.Up && st.Role == "Primary" && (st.Failover == nil || !st.Failover.WritesHeld), at: sent,
		what: fmt.Sprintf("up %v, %s %s, quorum %+v, failover %+v", st.Up, st.Role, st.Disk, st.Quorum, st.Failover)}
	if st.Failover != nil {
		seen.ten = tenure{st.Failover.Holder, st.Failover.Term}
		if h, ok := o.holders[seen.ten.term]; ok && h != seen.ten.node && seen.ten.node != "" {
			o.problems = append(o.problems, fmt.Sprintf("term %d held by %s and by %s", seen.ten.term, h, seen.ten.node))
		} else if seen.ten.node != "" {
			o.holders[seen.ten.term] = seen.ten.node
		}
	}
	o.latest[n] = seen
	if !seen.writable {
		return
	}
	if seen.ten.node != n {
		o.problems = append(o.problems, fmt.Sprintf("%s a writable Primary at %v while its view of the log names %s", n, sent, seen.ten))
		seen.ten.node = n
	}
	sp := o.writable[seen.ten]
	if sp == nil {
		sp = &writableSpan{first: received, last: sent}
		o.writable[seen.ten] = sp
	}
	sp.last = sent
}

// describe says what the observer saw last of each node.
func (o *roleObserver) describe() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	var b strings.Builder
	for _, n := range demoNodes {
		s := o.latest[n]
		fmt.Fprintf(&b, "\n  %s at %s: writable %v; %s", n, s.at.Format("15:04:05.000"), s.writable, s.what)
	}
	return b.String()
}

// current is the writable tenure seen last, the newest if several.
func (o *roleObserver) current() (tenure, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	var best tenure
	ok := false
	for n, s := range o.latest {
		if s.writable && (!ok || s.ten.term > best.term) {
			best, ok = tenure{n, s.ten.term}, true
		}
	}
	return best, ok
}

// violations: two tenures of different nodes, the older one seen
// writable in an answer to a question sent after the newer one was seen
// writable, were writable at one moment (the newer one stays writable
// until a still newer term); and every problem seen while polling.
func (o *roleObserver) violations() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	v := slices.Clone(o.problems)
	for a, sa := range o.writable {
		for b, sb := range o.writable {
			if a.node != b.node && a.term < b.term && sa.last.After(sb.first) {
				v = append(v, fmt.Sprintf("two writable Primaries: %s was writable at %v, after %s was at %v",
					a, sa.last.Format("15:04:05.000"), b, sb.first.Format("15:04:05.000")))
			}
		}
	}
	return v
}

// failoverApp writes 4 KiB blocks without pause, one at a time, each to a
// new block (wrapping around after slots), through the export of the
// node the observer sees writable. A write that has not finished when
// another tenure is writable is abandoned, not failed: if its node
// acknowledges it later, that counts.
type failoverApp struct {
	o      *roleObserver
	c      *cluster
	slots  int64
	mu     sync.Mutex
	writes []*appWrite
	all    []*nbd.Client
	stop   chan struct{}
	done   chan struct{}
}

type appWrite struct {
	slot   int64
	data   []byte
	ten    tenure
	issued time.Time
	acked  time.Time // zero unless acknowledged
	failed bool
}

func newFailoverApp(o *roleObserver, c *cluster, slots int64) *failoverApp {
	a := &failoverApp{o: o, c: c, slots: slots, stop: make(chan struct{}), done: make(chan struct{})}
	go a.run()
	return a
}

func (a *failoverApp) halt() {
	closeAndWait(a.stop, a.done)
	a.mu.Lock()
	for _, cl := range a.all {
		go cl.Close()
	}
	a.all = nil
	a.mu.Unlock()
}

func (a *failoverApp) run() {
	defer close(a.done)
	clients := map[tenure]*nbd.Client{}
	for seq := int64(0); ; {
		select {
		case <-a.stop:
			return
		case <-time.After(2 * time.Millisecond):
		}
		ten, ok := a.o.current()
		if !ok {
			continue
		}
		cl := clients[ten]
		if cl == nil {
			if cl = a.dial(ten); cl == nil {
				continue
			}
			clients[ten] = cl
		}
		w := &appWrite{slot: seq % a.slots, data: make([]byte, 4096), ten: ten}
		seq++
		rand.Read(w.data)
		result := make(chan error, 1)
		a.mu.Lock()
		w.issued = time.Now()
		a.writes = append(a.writes, w)
		a.mu.Unlock()
		go func() {
			err := cl.WriteAt(w.data, w.slot*4096, false)
			now := time.Now()
			a.mu.Lock()
			if err == nil {
				w.acked = now
			} else {
				w.failed = true
			}
			a.mu.Unlock()
			result <- err
		}()
	wait:
		for {
			select {
			case err := <-result:
				if err != nil {
					delete(clients, ten)
				}
				break wait
			case <-a.stop:
				return
			case <-time.After(20 * time.Millisecond):
				if cur, ok := a.o.current(); ok && cur != ten && time.Since(w.issued) > 300*time.Millisecond {
					delete(clients, ten) // abandoned
					break wait
				}
			}
		}
	}
}

// dial connects to ten's export, and returns the client only if ten's
// node was still writable in ten's term after it connected (a demotion
// closes the export's clients, so the client belongs to ten).
func (a *failoverApp) dial(ten tenure) *nbd.Client {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	cl, err := nbd.Dial(ctx, a.c.node(ten.node).Export, "r0")
	if err != nil {
		return nil
	}
	a.mu.Lock()
	a.all = append(a.all, cl)
	a.mu.Unlock()
	var sts []*node.ResourceStatus
	err = admin.Call(ctx, a.c.adminSock(ten.node), admin.Request{Verb: "status", Resource: "r0"}, func(r admin.Reply) error {
		return json.Unmarshal(r.Data, &sts)
	})
	if err != nil || len(sts) == 0 || sts[0].Role != "Primary" || sts[0].Failover == nil || sts[0].Failover.Holder != ten.node || sts[0].Failover.Term != ten.term {
		go cl.Close()
		return nil
	}
	return cl
}

// waitAcked waits for n writes acknowledged.
func (a *failoverApp) waitAcked(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for a.count() < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d writes acknowledged in a minute, want %d", a.count(), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (a *failoverApp) count() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := 0
	for _, w := range a.writes {
		if !w.acked.IsZero() {
			n++
		}
	}
	return n
}

// ackedSince counts the writes issued at or after t0 and acknowledged.
func (a *failoverApp) ackedSince(t0 time.Time) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := 0
	for _, w := range a.writes {
		if !w.acked.IsZero() && !w.issued.Before(t0) {
			n++
		}
	}
	return n
}

// waitRestored waits for the first write issued at or after failed to be
// acknowledged (the application is served again), and returns the time
// from failed to its acknowledgement.
func (a *failoverApp) waitRestored(t *testing.T, failed time.Time) time.Duration {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		a.mu.Lock()
		var first *appWrite
		for _, w := range a.writes {
			if !w.issued.Before(failed) && !w.acked.IsZero() && (first == nil || w.issued.Before(first.issued)) {
				first = w
			}
		}
		a.mu.Unlock()
		if first != nil {
			return first.acked.Sub(failed)
		}
		if time.Now().After(deadline) {
			t.Fatalf("no write acknowledged within 2 minutes of the failure at %v", failed.Format("15:04:05.000"))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (a *failoverApp) tenures() []tenure {
	a.mu.Lock()
	defer a.mu.Unlock()
	var ts []tenure
	for _, w := range a.writes {
		if !w.acked.IsZero() && !slices.Contains(ts, w.ten) {
			ts = append(ts, w.ten)
		}
	}
	return ts
}

// tenureViolations: a node acknowledged a write that the application
// issued after a node of a newer tenure had acknowledged one. At that
// moment both were writable.
func (a *failoverApp) tenureViolations() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	firstAck := map[tenure]time.Time{}
	for _, w := range a.writes {
		if f, ok := firstAck[w.ten]; !w.acked.IsZero() && (!ok || w.acked.Before(f)) {
			firstAck[w.ten] = w.acked
		}
	}
	var v []string
	for _, w := range a.writes {
		if w.acked.IsZero() {
			continue
		}
		for ten, f := range firstAck {
			if ten.term > w.ten.term && ten.node != w.ten.node && w.issued.After(f) {
				v = append(v, fmt.Sprintf("two writable Primaries: %s acknowledged a write issued at %v, after %s acknowledged one at %v",
					w.ten, w.issued.Format("15:04:05.000"), ten, f.Format("15:04:05.000")))
				break
			}
		}
	}
	return v
}

// verify reads every block that a write was acknowledged for through
// primary's export: it must hold the last acknowledged write's data, or
// that of a write issued after it whose outcome is unknown or failed (its
// range holds old or new data). It returns the number of blocks checked.
func (a *failoverApp) verify(t *testing.T, primary string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cl, err := nbd.Dial(ctx, a.c.node(primary).Export, "r0")
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	a.mu.Lock()
	defer a.mu.Unlock()
	bySlot := map[int64][]*appWrite{}
	for _, w := range a.writes {
		bySlot[w.slot] = append(bySlot[w.slot], w)
	}
	checked := 0
	got := make([]byte, 4096)
	for slot, ws := range bySlot {
		last := -1
		for i, w := range ws {
			if !w.acked.IsZero() {
				last = i
			}
		}
		if last < 0 {
			continue
		}
		if _, err := cl.ReadAt(got, slot*4096); err != nil {
			t.Fatal(err)
		}
		checked++
		ok := false
		for _, w := range ws[last:] {
			if (w == ws[last] || w.acked.IsZero()) && bytes.Equal(got, w.data) {
				ok = true
			}
		}
		if !ok {
			w := ws[last]
			t.Errorf("acknowledged write lost: block %d on %s lacks the write %s acknowledged at %v (issued %v)",
				slot, primary, w.ten, w.acked.Format("15:04:05.000"), w.issued.Format("15:04:05.000"))
		}
	}
	return checked
}
