package core

import (
	"errors"
	"fmt"
	"math"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/datadriven"
	"github.com/georepl/georepl/core/wire"
	"github.com/georepl/georepl/protocols"
)

// TestScenarios runs the scripts in testdata/*.txt. Each command drives a
// cluster (harness_test.go) and prints what the engines asked for, so a
// script reads as a story; regenerate the expectations with
//
//	go test ./core -run TestScenarios -rewrite
//
// and read the diff. Commands (nodes are numbers, n0 is node 0):
//
//	new nodes=3 [protocols=C,A] [size=B] [block=B] [epoch-max=N] [chunk=B] [window=N] [maxbuf=B] [congestion=pull-ahead|disconnect] [flushes] [csums=crc32c] [rate=B] [share=F]
//	    [io-error=detach|pass-on] [quorum=N [on-no-quorum=io-error]] [witnesses=N] [after-sb=POLICY [discard-node=N]] [clock] [leased]
//	connect A B | reconnect A B | disconnect A B | crash A
//	hello A B (the handshake's hellos are built now; the next connect A B delivers them)
//	primary A [force] | secondary A | invalidate A SOURCE | invalidate-remote A TARGET
//	discard-my-data A B
//	corrupt A off=O len=L [fill=c] (changes A's disk behind its engine's back) | verify A PEER
//	write A off=O len=L [fill=c] [fua] | zeroes A off=O len=L | trim A off=O len=L | flush A
//	appread A off=O len=L (an application read, ReqRead) | detach A
//	fail-meta A (its metadata writes are lost from now on, until it crashes)
//	flush-failed A (a flush of A's disk outside its LocalOps failed: FlushFailed; a volatile cache loses what is not durable)
//	flush A internal (Request.Internal: the driver's own flush)
//	deliver A->B [n=N] [chan=data|control] | process A [n=N] [fail|fail=nospace] [last]
//	    (fail=nospace: the store has no room, ErrNoSpace; the operation changes nothing)
//	stabilize [quiet] | status [A] | disks | bitmap A B | read A... off=O len=L
//	tick A ms=N | pause-sync A B | resume-sync A B
//	term A t=N (the failover log committed term N: ObserveTerm)
//	resize A size=B [clean-from=B] [fill=c] (A's disk grows, the new space holding fill; Engine.Resize)
//	lease A [gen=HEX] (the failover log vouches for A's generation HEX: Lease; without gen, the lease ended)
//	witnesses A reachable=N (N of the witnesses are reachable from A: Witnesses)
func TestScenarios(t *testing.T) {
	paths, err := filepath.Glob("testdata/*.txt")
	if err != nil || len(paths) == 0 {
		t.Fatalf("no scripts in testdata: %v", err)
	}
	for _, path := range paths {
		var c *cluster
		datadriven.RunTest(t, path, func(t *testing.T, d *datadriven.TestData) string {
			if d.Cmd != "new" && c == nil {
				d.Fatalf(t, "no cluster: start with new")
			}
			if c != nil {
				c.out.Reset()
				c.quiet = false
			}
			switch d.Cmd {
			case "new":
				c = newScenarioCluster(t, d)
				return "ok\n"
			default:
				if err := runCommand(c, d); err != nil {
					fmt.Fprintf(c.out, "error: %v\n", err)
				}
			}
			for _, f := range c.failed {
				t.Errorf("%s: promise broken: %s", d.Pos, f)
			}
			c.failed = nil
			if c.out.Len() == 0 {
				return "ok\n"
			}
			return c.out.String()
		})
	}
}

func newScenarioCluster(t *testing.T, d *datadriven.TestData) *cluster {
	n := 2
	d.MaybeScanArgs(t, "nodes", &n)
	var protos []protocols.Protocol
	if arg, ok := d.Arg("protocols"); ok {
		for _, v := range arg.Vals {
			for _, s := range strings.Split(v, ",") {
				p, err := protocols.Parse(strings.TrimSpace(s))
				if err != nil {
					d.Fatalf(t, "%v", err)
				}
				protos = append(protos, p)
			}
		}
	}
	num := func(key string, dst any) { d.MaybeScanArgs(t, key, dst) }
	var size, block, chunk, maxbuf uint64
	var epochMax, window int
	num("size", &size)
	num("block", &block)
	num("chunk", &chunk)
	num("maxbuf", &maxbuf)
	num("epoch-max", &epochMax)
	num("window", &window)
	flushes := d.HasArg("flushes")
	var rate uint64
	var share float64
	num("rate", &rate)
	if a, ok := d.Arg("share"); ok && len(a.Vals) == 1 {
		v, err := strconv.ParseFloat(a.Vals[0], 64)
		if err != nil {
			d.Fatalf(t, "share: %v", err)
		}
		share = v
	}
	var csums wire.Csum
	if a, ok := d.Arg("csums"); ok && len(a.Vals) == 1 {
		var err error
		if csums, err = wire.ParseCsum(a.Vals[0]); err != nil {
			d.Fatalf(t, "%v", err)
		}
	}
	var congestion Congestion
	if a, ok := d.Arg("congestion"); ok {
		names := map[string]Congestion{"block": CongestionBlock, "pull-ahead": CongestionPullAhead, "disconnect": CongestionDisconnect}
		c, ok := names[a.Vals[0]]
		if !ok {
			d.Fatalf(t, "unknown congestion policy %q", a.Vals[0])
		}
		congestion = c
	}
	policy := DetachOnIOError
	if a, ok := d.Arg("io-error"); ok {
		switch a.Vals[0] {
		case "detach":
		case "pass-on":
			policy = PassOnIOError
		default:
			d.Fatalf(t, "io-error=%s: want detach or pass-on", a.Vals[0])
		}
	}
	sbPolicy := SplitBrainDisconnect
	if a, ok := d.Arg("after-sb"); ok {
		found := false
		for sp := SplitBrainDisconnect; sp <= DiscardNode; sp++ {
			if sp.String() == a.Vals[0] {
				sbPolicy, found = sp, true
			}
		}
		if !found {
			d.Fatalf(t, "unknown after-sb %q", a.Vals[0])
		}
	}
	victim := intArg(d, "discard-node", 0)
	quorum := intArg(d, "quorum", 0)
	witnesses := intArg(d, "witnesses", 0)
	onNoQuorum := SuspendIO
	if a, ok := d.Arg("on-no-quorum"); ok && a.Vals[0] == "io-error" {
		onNoQuorum = IOErrorOnNoQuorum
	}
	// A clock that every call advances by one: promotions are ordered as
	// the script runs them.
	var now uint64
	clock := func() uint64 { now++; return now }
	return newCluster(n, protos, func(cfg *Config) {
		cfg.OnIOError = policy
		if d.HasArg("clock") {
			cfg.Clock = clock
		}
		cfg.Quorum, cfg.OnNoQuorum, cfg.Witnesses = quorum, onNoQuorum, witnesses
		cfg.Leased = d.HasArg("leased")
		if size != 0 {
			cfg.Size = size
		}
		if block != 0 {
			cfg.BlockSize = uint32(block)
		}
		cfg.ResyncChunk = uint32(chunk)
		cfg.EpochMaxWrites = epochMax
		cfg.ResyncWindow = window
		cfg.DiskFlushes = flushes
		for i := range cfg.Peers {
			cfg.Peers[i].MaxBuffer = maxbuf
			cfg.Peers[i].ResyncRate = rate
			cfg.Peers[i].ResyncMinAppShare = share
			cfg.Peers[i].Csums = csums
			if cfg.Peers[i].Protocol == protocols.A {
				cfg.Peers[i].OnCongestion = congestion
			}
			cfg.Peers[i].AfterSplitBrain = sbPolicy
			cfg.Peers[i].DiscardNode = NodeID(victim)
		}
	})
}

// nodeArgs reads the positional node numbers of a command ("3", "0->1").
func nodeArgs(c *cluster, d *datadriven.TestData, want int) ([]*node, error) {
	var out []*node
	for _, a := range d.CmdArgs {
		if len(a.Vals) > 0 {
			continue
		}
		for _, s := range strings.Split(a.Key, "->") {
			i, err := strconv.Atoi(s)
			if err != nil {
				continue
			}
			if i < 0 || i >= len(c.nodes) {
				return nil, fmt.Errorf("no node %d", i)
			}
			out = append(out, c.nodes[i])
		}
	}
	if want >= 0 && len(out) != want {
		return nil, fmt.Errorf("%s wants %d node arguments", d.Cmd, want)
	}
	return out, nil
}

func intArg(d *datadriven.TestData, key string, def int) int {
	if a, ok := d.Arg(key); ok && len(a.Vals) == 1 {
		if v, err := strconv.Atoi(a.Vals[0]); err == nil {
			return v
		}
	}
	return def
}

func runCommand(c *cluster, d *datadriven.TestData) error {
	switch d.Cmd {
	case "connect", "reconnect", "disconnect", "hello":
		ns, err := nodeArgs(c, d, 2)
		if err != nil {
			return err
		}
		if d.Cmd == "hello" {
			c.hello(ns[0], ns[1])
			return nil
		}
		if d.Cmd == "disconnect" {
			if !ns[0].links[ns[1].id].up {
				return fmt.Errorf("n%d and n%d are not connected", ns[0].id, ns[1].id)
			}
			c.sever(ns[0], ns[1], false)
			return nil
		}
		return c.connect(ns[0], ns[1])
	case "crash":
		ns, err := nodeArgs(c, d, 1)
		if err != nil {
			return err
		}
		c.crash(ns[0])
	case "undo", "rollback":
		ns, err := nodeArgs(c, d, 1)
		if err != nil {
			return err
		}
		if d.Cmd == "undo" {
			ns[0].undo = true
			return nil
		}
		return c.rollback(ns[0])
	case "term":
		ns, err := nodeArgs(c, d, 1)
		if err != nil {
			return err
		}
		ns[0].eng.ObserveTerm(uint64(intArg(d, "t", 0)))
		c.handle(ns[0])
	case "witnesses":
		ns, err := nodeArgs(c, d, 1)
		if err != nil {
			return err
		}
		ns[0].eng.Witnesses(intArg(d, "reachable", 0))
		c.handle(ns[0])
	case "lease":
		ns, err := nodeArgs(c, d, 1)
		if err != nil {
			return err
		}
		var gen, until uint64
		if a, ok := d.Arg("gen"); ok {
			if gen, err = strconv.ParseUint(a.Vals[0], 16, 64); err != nil {
				return err
			}
			until = math.MaxUint64
		}
		ns[0].eng.Lease(until, gen)
		c.handle(ns[0])
	case "primary", "secondary":
		ns, err := nodeArgs(c, d, 1)
		if err != nil {
			return err
		}
		if d.Cmd == "primary" {
			err = ns[0].eng.Promote(d.HasArg("force"))
		} else {
			err = ns[0].eng.Demote()
		}
		c.handle(ns[0])
		return err
	case "invalidate", "invalidate-remote":
		ns, err := nodeArgs(c, d, 2)
		if err != nil {
			return err
		}
		if d.Cmd == "invalidate" {
			err = ns[0].eng.Invalidate(NodeID(ns[1].id))
		} else {
			err = ns[0].eng.InvalidateRemote(NodeID(ns[1].id))
		}
		c.handle(ns[0])
		return err
	case "verify":
		ns, err := nodeArgs(c, d, 2)
		if err != nil {
			return err
		}
		err = ns[0].eng.StartVerify(NodeID(ns[1].id))
		c.handle(ns[0])
		return err
	case "corrupt":
		ns, err := nodeArgs(c, d, 1)
		if err != nil {
			return err
		}
		off, length := uint64(intArg(d, "off", 0)), uint64(intArg(d, "len", int(c.block)))
		fill := "!"
		if a, ok := d.Arg("fill"); ok && len(a.Vals) == 1 && a.Vals[0] != "" {
			fill = a.Vals[0]
		}
		copy(ns[0].disk[off:off+length], strings.Repeat(fill[:1], int(length)))
		copy(ns[0].durable[off:off+length], ns[0].disk[off:off+length])
		ns[0].corrupted = true
	case "discard-my-data":
		ns, err := nodeArgs(c, d, 2)
		if err != nil {
			return err
		}
		ns[0].eng.DiscardMyData(NodeID(ns[1].id))
	case "write", "zeroes", "trim", "flush":
		ns, err := nodeArgs(c, d, 1)
		if err != nil {
			return err
		}
		r := Request{Kind: ReqFlush, FUA: d.HasArg("fua"), Internal: d.HasArg("internal")}
		if d.Cmd != "flush" {
			r.Offset, r.Length = uint64(intArg(d, "off", 0)), uint64(intArg(d, "len", int(c.block)))
			r.Kind = map[string]RequestKind{"write": ReqWrite, "zeroes": ReqZeroes, "trim": ReqTrim}[d.Cmd]
		}
		if r.Kind == ReqWrite {
			fill := "x"
			if a, ok := d.Arg("fill"); ok && len(a.Vals) == 1 && a.Vals[0] != "" {
				fill = a.Vals[0]
			}
			r.Data = []byte(strings.Repeat(fill[:1], int(r.Length)))
		}
		c.submit(ns[0], r)
	case "appread":
		ns, err := nodeArgs(c, d, 1)
		if err != nil {
			return err
		}
		length := uint64(intArg(d, "len", int(c.block)))
		c.submit(ns[0], Request{Kind: ReqRead, Offset: uint64(intArg(d, "off", 0)), Length: length, Data: make([]byte, length)})
	case "fail-meta":
		ns, err := nodeArgs(c, d, 1)
		if err != nil {
			return err
		}
		ns[0].metaLost = true
	case "detach":
		ns, err := nodeArgs(c, d, 1)
		if err != nil {
			return err
		}
		ns[0].eng.Detach("detached by the script")
		c.handle(ns[0])
	case "flush-failed":
		ns, err := nodeArgs(c, d, 1)
		if err != nil {
			return err
		}
		nd := ns[0]
		nd.failedIO = true
		if nd.volatile {
			copy(nd.disk, nd.durable) // as a failed flush in process
		}
		nd.eng.FlushFailed(errors.New("injected failure"))
		c.handle(nd)
	case "deliver":
		ns, err := nodeArgs(c, d, 2)
		if err != nil {
			return err
		}
		var ch *wire.Channel
		if a, ok := d.Arg("chan"); ok {
			v := wire.ChannelData
			if a.Vals[0] == "control" {
				v = wire.ChannelControl
			}
			ch = &v
		}
		if c.deliver(ns[0], ns[1], intArg(d, "n", -1), ch) == 0 {
			c.logf("nothing to deliver")
		}
	case "process":
		ns, err := nodeArgs(c, d, 1)
		if err != nil {
			return err
		}
		var pick func(int) int
		if d.HasArg("last") {
			pick = func(n int) int { return n - 1 }
		}
		fail, ok := d.Arg("fail")
		if ok && len(fail.Vals) > 0 {
			if fail.Vals[0] != "nospace" {
				return fmt.Errorf("fail=%s: want fail or fail=nospace", fail.Vals[0])
			}
			c.noSpace = true
		}
		moved := c.process(ns[0], intArg(d, "n", -1), ok, pick)
		c.noSpace = false
		if moved == 0 {
			c.logf("nothing to process")
		}
	case "tick":
		ns, err := nodeArgs(c, d, 1)
		if err != nil {
			return err
		}
		ns[0].eng.Tick(time.Duration(intArg(d, "ms", 0)) * time.Millisecond)
		c.handle(ns[0])
	case "pause-sync", "resume-sync":
		ns, err := nodeArgs(c, d, 2)
		if err != nil {
			return err
		}
		err = ns[0].eng.PauseResync(NodeID(ns[1].id), d.Cmd == "pause-sync")
		c.handle(ns[0])
		return err
	case "stabilize":
		c.quiet = d.HasArg("quiet")
		c.stabilize()
		c.quiet = false
	case "resize":
		ns, err := nodeArgs(c, d, 1)
		if err != nil {
			return err
		}
		size := uint64(intArg(d, "size", 0))
		fill := byte(0)
		if a, ok := d.Arg("fill"); ok && len(a.Vals) == 1 && a.Vals[0] != "" {
			fill = a.Vals[0][0]
		}
		return c.resize(ns[0], size, uint64(intArg(d, "clean-from", int(size))), fill)
	case "status":
		ns, err := nodeArgs(c, d, -1)
		if err != nil {
			return err
		}
		if len(ns) == 0 {
			ns = c.nodes
		}
		for _, nd := range ns {
			c.out.WriteString(c.status(nd))
		}
	case "disks":
		c.out.WriteString(c.disks())
	case "read":
		ns, err := nodeArgs(c, d, -1)
		if err != nil {
			return err
		}
		off, length := uint64(intArg(d, "off", 0)), uint64(intArg(d, "len", int(c.block)))
		for _, nd := range ns {
			fmt.Fprintf(c.out, "n%d [%d, +%d): %s\n", nd.id, off, length, runs(nd.disk[off:off+length]))
		}
	case "bitmap":
		ns, err := nodeArgs(c, d, 2)
		if err != nil {
			return err
		}
		b := ns[0].eng.Bitmap(NodeID(ns[1].id))
		var runs []string
		for i, ok := b.NextSet(0); ok; i, ok = b.NextSet(b.NextClear(i)) {
			runs = append(runs, fmt.Sprintf("%d-%d", i, b.NextClear(i)-1))
		}
		fmt.Fprintf(c.out, "n%d bitmap for n%d: %d blocks %s\n", ns[0].id, ns[1].id, b.Count(), strings.Join(runs, " "))
	default:
		return fmt.Errorf("unknown command %q", d.Cmd)
	}
	return nil
}

// runs describes bytes as runs of equal values: "a*4096 0*4096".
func runs(b []byte) string {
	var out []string
	for i := 0; i < len(b); {
		j := i
		for j < len(b) && b[j] == b[i] {
			j++
		}
		v := string(b[i])
		if b[i] == 0 {
			v = "0"
		}
		out = append(out, fmt.Sprintf("%s*%d", v, j-i))
		i = j
	}
	return strings.Join(out, " ")
}
