package node

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/georepl/georepl/cmd/georepl/internal/checker"
	"github.com/georepl/georepl/cmd/georepl/internal/failover"
	"github.com/georepl/georepl/configs"
	"github.com/georepl/georepl/core"
	"github.com/georepl/georepl/kmod/nbd"
	"github.com/georepl/georepl/transports"
)

// autoFailover edits the demo configuration for automatic failover: every
// node votes on a consensus port of its own (dr with auto_promote =
// false: the remote site is the operator's), with a detection timeout of
// detection. onPromote, if not empty, is the on_promote handler.
func autoFailover(t *testing.T, detection time.Duration, onPromote string) func(dir, src string) string {
	ports, err := checker.FreePorts(3)
	if err != nil {
		t.Fatal(err)
	}
	return func(dir, src string) string {
		i := 0
		src = regexp.MustCompile(`(?m)^  node "(\w+)" \{\n`).ReplaceAllStringFunc(src, func(m string) string {
			name := regexp.MustCompile(`"(\w+)"`).FindStringSubmatch(m)[1]
			extra := ""
			if name == "dr" {
				extra = "      auto_promote = false\n"
			}
			i++
			return m + fmt.Sprintf("    failover {\n      address = \"127.0.0.1:%d\"\n      dir = %q\n%s    }\n", ports+i-1, filepath.Join(dir, name+".failover"), extra)
		})
		block := fmt.Sprintf("  failover {\n    mode = \"auto\"\n    detection_timeout = \"%s\"\n  }\n", detection)
		if onPromote != "" {
			block += fmt.Sprintf("  handlers {\n    on_promote = %q\n  }\n", onPromote)
		}
		return regexp.MustCompile(`(?m)^  net \{\n`).ReplaceAllString(src, block+"\n  net {\n")
	}
}

// TestAutoFailoverPrimaryLost: the demo cluster under automatic failover
// (alpha, bravo and dr vote; dr is never promoted automatically). The
// operator makes alpha Primary through the log; alpha writes under
// protocol C; alpha's daemon stops. bravo is promoted by the log without
// an operator, in term 2, runs on_promote, holds every write alpha
// acknowledged, and completes writes of its own once its new generation
// is in the log.
func TestAutoFailoverPrimaryLost(t *testing.T) {
	dir := t.TempDir()
	mark, script := filepath.Join(dir, "promoted"), filepath.Join(dir, "on-promote")
	if err := os.WriteFile(script, []byte("#!/bin/sh\necho \"$GEOREPL_NODE\" > "+mark+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	daemons := demoCluster(t, autoFailover(t, time.Second, script), nil)
	alpha, bravo := daemons["alpha"], daemons["bravo"]
	primaryWithBravoInSync(t, alpha)
	dev, err := alpha.LocalDevice("r0")
	if err != nil {
		t.Fatal(err)
	}
	var written [][]byte
	for i := range 4 {
		buf := dev.(nbd.WriteBuffers).WriteBuffer(64 << 10)
		rand.Read(buf)
		written = append(written, bytes.Clone(buf))
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		err := dev.WriteAt(ctx, buf, uint64(i)<<16, false)
		cancel()
		if err != nil {
			t.Fatalf("write %d on alpha: %v", i, err)
		}
	}
	// Writes are held between a lease's end and the next report's commit
	// (a report late on a loaded machine): the status says so, then
	// writing again.
	var st []*ResourceStatus
	waitUntil(t, "alpha holding term 1, writing", func() (bool, string) {
		st, _ = alpha.StatusNow("r0")
		f := st[0].Failover
		return f != nil && f.Holder == "alpha" && f.Term == 1 && !f.WritesHeld, fmt.Sprintf("%+v", f)
	})
	var text strings.Builder
	WriteStatus(&text, st)
	if !strings.Contains(text.String(), "failover: term 1 held by alpha, leader ") {
		t.Errorf("status text lacks the failover line:\n%s", text.String())
	}

	lost := time.Now()
	if err := alpha.Close(); err != nil {
		t.Fatal(err)
	}
	var promotedAfter time.Duration
	waitUntil(t, "bravo promoted automatically", func() (bool, string) {
		st, _ := bravo.StatusNow("r0")
		if st[0].Role == "Primary" {
			promotedAfter = time.Since(lost)
			return true, ""
		}
		return false, fmt.Sprintf("%+v", st[0].Failover)
	})
	t.Logf("failover time: %v from the Primary's shutdown to bravo's promotion (detection_timeout 1s)", promotedAfter)
	st, _ = bravo.StatusNow("r0")
	if f := st[0].Failover; f.Holder != "bravo" || f.Term != 2 {
		t.Fatalf("bravo's failover status %+v, want bravo holding term 2", f)
	}
	if dr, _ := daemons["dr"].StatusNow("r0"); dr[0].Role != "Secondary" {
		t.Fatalf("dr is %s", dr[0].Role)
	}
	bdev, err := bravo.LocalDevice("r0")
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range written {
		got := make([]byte, len(want))
		if err := bdev.ReadAt(context.Background(), got, uint64(i)<<16); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("write %d that alpha acknowledged is not on bravo after the failover", i)
		}
	}
	buf := bdev.(nbd.WriteBuffers).WriteBuffer(4096)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := bdev.WriteAt(ctx, buf, 0, false); err != nil {
		t.Fatalf("a write on the promoted bravo: %v", err)
	}
	waitUntil(t, "on_promote ran on bravo", func() (bool, string) {
		b, err := os.ReadFile(mark)
		return string(b) == "bravo\n", fmt.Sprintf("%q %v", b, err)
	})
}

// cuttable is a node's transports that a test cuts off: while cut it
// dials nothing and the connections it dialed are closed. Cutting the
// node with the lowest id isolates it, since it dials all its peers.
type cuttable struct {
	mu    sync.Mutex
	cut   bool
	conns []transports.Conn
}

func (c *cuttable) transport(name string) (transports.Transport, error) {
	tr, err := transports.Lookup(name)
	if err != nil {
		return nil, err
	}
	return cutTransport{Transport: tr, c: c}, nil
}

func (c *cuttable) set(cut bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cut = cut
	if cut {
		for _, conn := range c.conns {
			conn.Close()
		}
		c.conns = nil
	}
}

type cutTransport struct {
	transports.Transport
	c *cuttable
}

func (t cutTransport) Dial(ctx context.Context, addr string, opts transports.Options) (transports.Conn, error) {
	t.c.mu.Lock()
	cut := t.c.cut
	t.c.mu.Unlock()
	if cut {
		return nil, fmt.Errorf("test partition: %s unreachable", addr)
	}
	conn, err := t.Transport.Dial(ctx, addr, opts)
	if err != nil {
		return nil, err
	}
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	if t.c.cut {
		conn.Close()
		return nil, fmt.Errorf("test partition: %s unreachable", addr)
	}
	t.c.conns = append(t.c.conns, conn)
	return conn, nil
}

// writable reports whether r would complete a write now: Primary, not
// fenced, leased, with quorum.
func writable(r *resource) bool {
	r.emu.Lock()
	defer r.unlockEngine()
	if r.engine == nil || r.stopped {
		return false
	}
	st := r.engine.Status()
	return st.Role == core.Primary && st.Quorate
}

// TestAutoFailoverIsolatedPrimary: alpha, Primary under protocol C, is cut
// off from bravo and dr, on the replication network and the consensus
// network both, while an application writes on it without pause. An
// observer samples every node's engine every millisecond: never do two
// nodes complete writes at the same moment. bravo is promoted; every
// write alpha acknowledged is on bravo; once the partition heals, alpha
// learns the new term and its daemon demotes it.
func TestAutoFailoverIsolatedPrimary(t *testing.T) {
	hub := failover.NewMemHub()
	consensus := func(_, _, addr string) (failover.Network, error) { return hub.Join(addr), nil }
	var alphaNet cuttable
	var alphaVoter string
	edit := autoFailover(t, time.Second, "")
	daemons := demoCluster(t, func(dir, src string) string {
		src = edit(dir, src)
		alphaVoter = regexp.MustCompile(`failover \{\n      address = "([^"]+)"`).FindStringSubmatch(src)[1]
		return src
	}, map[string]Options{
		"alpha": {Consensus: consensus, Transports: alphaNet.transport},
		"bravo": {Consensus: consensus},
		"dr":    {Consensus: consensus},
	})
	alpha, bravo := daemons["alpha"], daemons["bravo"]
	ra, rb, rd := alpha.lookup("r0"), bravo.lookup("r0"), daemons["dr"].lookup("r0")
	primaryWithBravoInSync(t, alpha)

	type ack struct {
		off  uint64
		data []byte
	}
	var (
		mu    sync.Mutex
		acked []ack
		// failed is the write that failed (held without a lease, failed
		// at the demotion): its range holds old or new data.
		failed *ack
		stop   = make(chan struct{})
		wg     sync.WaitGroup
		both   []string
	)
	dev, err := alpha.LocalDevice("r0")
	if err != nil {
		t.Fatal(err)
	}
	wg.Add(2)
	go func() { // the application on alpha
		defer wg.Done()
		for i := uint64(0); ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			buf := dev.(nbd.WriteBuffers).WriteBuffer(4096)
			rand.Read(buf)
			data := bytes.Clone(buf)
			off := (i % 512) * 4096
			if err := dev.WriteAt(context.Background(), buf, off, false); err != nil {
				mu.Lock()
				failed = &ack{off, data}
				mu.Unlock()
				return // demoted: the held writes fail
			}
			mu.Lock()
			acked = append(acked, ack{off, data})
			mu.Unlock()
		}
	}()
	go func() { // the observer
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
			}
			var w []string
			for name, r := range map[string]*resource{"alpha": ra, "bravo": rb, "dr": rd} {
				if writable(r) {
					w = append(w, name)
				}
			}
			if len(w) > 1 {
				mu.Lock()
				both = append(both, fmt.Sprint(w))
				mu.Unlock()
			}
		}
	}()
	waitUntil(t, "alpha acknowledges writes", func() (bool, string) {
		mu.Lock()
		defer mu.Unlock()
		return len(acked) > 50, fmt.Sprint(len(acked))
	})

	cut := time.Now()
	hub.Isolate(alphaVoter)
	alphaNet.set(true)
	var promotedAfter time.Duration
	waitUntil(t, "bravo promoted and writable", func() (bool, string) {
		if writable(rb) {
			promotedAfter = time.Since(cut)
			return true, ""
		}
		var why []string
		for name, d := range daemons {
			st, _ := d.StatusNow("r0")
			why = append(why, fmt.Sprintf("%s: %s %s %s %+v", name, st[0].Role, st[0].Disk, st[0].Current, st[0].Failover))
		}
		return false, strings.Join(why, "; ")
	})
	t.Logf("failover time: %v from the partition to bravo completing writes (detection_timeout 1s)", promotedAfter)
	mu.Lock()
	before := len(acked)
	mu.Unlock()
	time.Sleep(200 * time.Millisecond)
	mu.Lock()
	if len(acked) != before {
		t.Errorf("alpha acknowledged %d writes after bravo was promoted", len(acked)-before)
	}
	mu.Unlock()

	hub.Heal()
	alphaNet.set(false)
	waitUntil(t, "alpha demoted by its daemon", func() (bool, string) {
		st, _ := alpha.StatusNow("r0")
		return st[0].Role == "Secondary", st[0].Role
	})
	close(stop)
	wg.Wait()
	if len(both) > 0 {
		t.Fatalf("two writable Primaries at %d samples: %v", len(both), both[:min(len(both), 5)])
	}
	bdev, err := bravo.LocalDevice("r0")
	if err != nil {
		t.Fatal(err)
	}
	last := map[uint64][]byte{}
	for _, a := range acked {
		last[a.off] = a.data
	}
	for off, want := range last {
		got := make([]byte, len(want))
		if err := bdev.ReadAt(context.Background(), got, off); err != nil {
			t.Fatal(err)
		}
		if failed != nil && off == failed.off && bytes.Equal(got, failed.data) {
			continue // the failed write reached bravo: allowed, like any failed write
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("the write alpha acknowledged last at offset %d is not on bravo (%d writes acknowledged)", off, len(acked))
		}
	}
	t.Logf("%d writes acknowledged by alpha, all on bravo", len(acked))
}

// TestAutoFailoverWitnessDaemon: a daemon started for a witness (no data,
// no resource of its own) runs its voter: it applies the log's
// promotions like every member, and closes with the daemon.
func TestAutoFailoverWitnessDaemon(t *testing.T) {
	daemons, _, w := witnessCluster(t, "")
	if err := daemons["alpha"].lookup("r0").Primary(true); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the witness applied alpha's promotion", func() (bool, string) {
		s := w.witnesses[0].loop.Status()
		return s.Holder.Node == "alpha" && s.Holder.Term == 1 && s.Leader != "", fmt.Sprintf("%+v", s)
	})
}

// TestAutoFailoverWitnessQuorum: alpha, bravo and dr and a witness, with
// quorum = "majority": 3 of 4, the witness counting as a node. dr's daemon
// stops; alpha still reaches bravo and the witness, 3 of 4, and keeps
// completing writes (without the witness's vote it would hold them: 2 of
// 3 data nodes fall short of 3).
func TestAutoFailoverWitnessQuorum(t *testing.T) {
	daemons, cfg, _ := witnessCluster(t, "  quorum   = \"majority\"\n")
	if rc, _ := cfg.Resource("r0"); rc.Quorum != 3 {
		t.Fatalf("quorum %d, want 3 of 4 (three data nodes and a witness)", rc.Quorum)
	}
	alpha := daemons["alpha"]
	if err := alpha.lookup("r0").Primary(true); err != nil {
		t.Fatal(err)
	}
	for _, peer := range []string{"bravo", "dr"} {
		waitUntil(t, peer+" in sync", func() (bool, string) {
			p := peerStatus(t, alpha, peer)
			return p.Disk == "UpToDate" && p.Repl == "Established", fmt.Sprintf("%+v", p)
		})
	}
	if err := daemons["dr"].Close(); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "alpha counts bravo and the witness, without dr", func() (bool, string) {
		st, _ := alpha.StatusNow("r0")
		q := st[0].Quorum
		return q != nil && q.Have == 3 && q.Need == 3 && peerStatus(t, alpha, "dr").Conn != "Connected", fmt.Sprintf("%+v", q)
	})
	dev, err := alpha.LocalDevice("r0")
	if err != nil {
		t.Fatal(err)
	}
	buf := dev.(nbd.WriteBuffers).WriteBuffer(4096)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := dev.WriteAt(ctx, buf, 0, false); err != nil {
		st, _ := alpha.StatusNow("r0")
		t.Fatalf("alpha's write with dr gone: %v; quorum %+v, failover %+v", err, st[0].Quorum, st[0].Failover)
	}
}

// witnessCluster is the demo cluster under automatic failover with a
// witness "w" voting too, its daemon up in this process; extra goes into
// the resource after its protocol line. It returns the data nodes'
// daemons, the configuration and the witness's daemon.
func witnessCluster(t *testing.T, extra string) (map[string]*Daemon, *configs.Config, *Daemon) {
	t.Helper()
	port, err := checker.FreePorts(1)
	if err != nil {
		t.Fatal(err)
	}
	var src, dir string
	edit := autoFailover(t, time.Second, "")
	daemons := demoCluster(t, func(d, s string) string {
		dir = d
		src = strings.Replace(edit(d, s), "    mode = \"auto\"\n", fmt.Sprintf("    mode = \"auto\"\n    witness \"w\" {\n      address = \"127.0.0.1:%d\"\n      dir = %q\n    }\n", port, filepath.Join(d, "w.failover")), 1)
		src = strings.Replace(src, "  protocol = \"C\"\n", "  protocol = \"C\"\n"+extra, 1)
		return src
	}, nil)
	cfg, err := configs.Parse(filepath.Join(dir, "r0.hcl"), []byte(src), configs.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	w, err := NewDaemon(cfg, "w", slog.New(slog.NewTextHandler(io.Discard, nil)), Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	if err := w.UpAll(); err != nil {
		t.Fatal(err)
	}
	return daemons, cfg, w
}

// TestStalePromotionNotActedOn: a node restarted after the log moved on
// replays its own, older promotion before the newer entries reach it,
// while a peer's hello has already told its engine the newer term (seen
// in CI: bravo, killed as Primary of term 2, came back, replayed term 2
// and promoted itself as a Primary of term 3, which alpha held, so the
// term no longer fenced it). A promotion older than a term the engine
// has seen is not acted on: the node stays Secondary.
func TestStalePromotionNotActedOn(t *testing.T) {
	daemons := demoCluster(t, autoFailover(t, time.Second, ""), nil)
	alpha, bravo := daemons["alpha"], daemons["bravo"]
	primaryWithBravoInSync(t, alpha)
	r := bravo.lookup("r0")
	for _, peer := range []string{"alpha", "dr"} {
		if err := r.Disconnect(peer); err != nil {
			t.Fatal(err)
		}
	}
	engineCall(t, r, func() { r.engine.ObserveTerm(5) })
	err := foLocal{r}.Act(failover.Promotion{Resource: "r0", Node: "bravo", Term: 3}, false)
	t.Logf("acting on term 3 after term 5 was seen: %v", err)
	if st, _ := bravo.StatusNow("r0"); st[0].Role != "Secondary" {
		t.Fatalf("bravo acted on a promotion of term 3 after its engine saw term 5: it is %s", st[0].Role)
	}
}

// primaryWithBravoInSync makes alpha Primary (by force: the initial sync)
// and waits until bravo is in sync with it.
func primaryWithBravoInSync(t *testing.T, alpha *Daemon) {
	t.Helper()
	if err := alpha.lookup("r0").Primary(true); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "bravo in sync", func() (bool, string) {
		p := peerStatus(t, alpha, "bravo")
		return p.Disk == "UpToDate" && p.Repl == "Established", fmt.Sprintf("%+v", p)
	})
}
