package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/georepl/georepl/cmd/georepl/internal/admin"
	"github.com/georepl/georepl/cmd/georepl/internal/hostile"
	"github.com/georepl/georepl/cmd/georepl/internal/node"
	"github.com/georepl/georepl/core/wire"
	"github.com/georepl/georepl/transports"
)

// Tests with a hostile peer: something that reaches a node's port and
// speaks the wire format, but breaks its rules (see package hostile).

// peakRSS returns the peak resident set size of process pid (VmHWM), in
// bytes.
func peakRSS(t *testing.T, pid int) uint64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				t.Fatalf("VmHWM of %d: %q: %v", pid, line, err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no VmHWM in /proc/%d/status", pid)
	return 0
}

// inflatingOpening is what an attacker opens a handshake with: one LZ4
// batch holding an opening frame zero-padded to nearly wire.MaxPayload,
// some 33 KB on the wire that a reader which unpacks batches before
// authentication turns into 8 MiB.
func inflatingOpening(t *testing.T, p *hostile.Peer, resource string, from, to uint8) []byte {
	t.Helper()
	f, err := hostile.Message(wire.TypeIntro, p.Intro(resource, from, to), wire.MaxPayload-wire.HeaderSize)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	w := wire.NewWriter(&buf, wire.CompressionLZ4)
	if err := w.WriteFrame(f); err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if st := w.Stats(); st.CompressedBatches != 1 || buf.Len() > 64<<10 {
		t.Fatalf("the opening is not one small compressed batch: %+v, %d bytes", st, buf.Len())
	}
	return buf.Bytes()
}

// preAuthMemoryBound is how much the peak RSS of a daemon may grow while
// 400 unauthenticated connections try to make it inflate frames. What
// they cost is mostly garbage the daemon's garbage-collector target (400)
// lets pile up, doubled by the race detector; one inflated batch was
// 16 MiB.
const preAuthMemoryBound = 128 << 20

// TestHostileMemoryBeforeAuthentication: 50, then 400 connections that
// never authenticate, over tcp (as bravo) and quic (as dr), with a shared
// secret set: every other one opens with a compressed batch that inflates
// to 8 MiB, the others with a plain opening, after which they stay
// silent, holding their handshake open. The daemon's peak RSS grows by
// less than preAuthMemoryBound.
func TestHostileMemoryBeforeAuthentication(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 16<<20)
	c.start("alpha")
	pid := c.procs["alpha"].Process.Pid
	addr := c.node("alpha").Address
	for _, tc := range []struct {
		transport string
		from      uint8
	}{{"tcp", 1}, {"quic", 2}} {
		base := peakRSS(t, pid)
		var peers []*hostile.Peer
		var inflating, plain []byte
		sent := 0
		for _, n := range []int{50, 400} {
			for len(peers) < n {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				p, err := hostile.Dial(ctx, tc.transport, addr)
				cancel()
				if err != nil {
					t.Fatalf("%s: connection %d: %v", tc.transport, len(peers), err)
				}
				peers = append(peers, p)
				if inflating == nil {
					inflating = inflatingOpening(t, p, "r0", tc.from, 0)
					f, err := hostile.Message(wire.TypeIntro, p.Intro("r0", tc.from, 0), 0)
					if err != nil {
						t.Fatal(err)
					}
					plain = wire.AppendFrame(nil, f)
				}
				opening := inflating
				if len(peers)%2 == 0 {
					opening = plain
				}
				if p.SendRaw(transports.ChannelControl, opening) == nil {
					sent++
				}
				if len(peers)%10 == 0 {
					if grown := peakRSS(t, pid) - base; grown > preAuthMemoryBound {
						t.Fatalf("%s: after %d connections the daemon's peak RSS grew by %d MiB (bound %d MiB)",
							tc.transport, len(peers), grown>>20, preAuthMemoryBound>>20)
					}
				}
			}
			time.Sleep(time.Second) // let the daemon read what was sent
			grown := peakRSS(t, pid) - base
			t.Logf("%s: %d unauthenticated connections (%d openings sent): peak RSS %d MiB, grown by %d MiB",
				tc.transport, n, sent, peakRSS(t, pid)>>20, grown>>20)
			if grown > preAuthMemoryBound {
				t.Fatalf("%s: %d connections grew the daemon's peak RSS by %d MiB (bound %d MiB)",
					tc.transport, n, grown>>20, preAuthMemoryBound>>20)
			}
		}
		for _, p := range peers {
			p.Close()
		}
	}
	if st := c.status("alpha"); !st.Up {
		t.Fatalf("alpha went down under the attack: %+v", st)
	}
}

// TestHostileRefuseReason: a party that has not authenticated cannot make
// a node log or send much: a refuse frame with a long reason full of line
// breaks is logged on one short line and not echoed back, and a hundred
// such connections add a bounded number of lines to the log.
func TestHostileRefuseReason(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 16<<20)
	c.start("alpha")
	addr := c.node("alpha").Address
	reason := []byte(strings.Repeat("forged\nlevel=ERROR msg=forged ", wire.MaxPreAuthPayload/30))
	refuse := func() []*wire.Frame {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		p, err := hostile.Dial(ctx, "tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		if err := p.Send(&wire.Frame{Type: wire.TypeRefuse, Payload: reason}); err != nil {
			t.Fatal(err)
		}
		frames, _ := p.ReadAll(15 * time.Second)
		return frames
	}

	before := len(c.log("alpha"))
	for _, f := range refuse() {
		if bytes.Contains(f.Payload, []byte("forged")) || len(f.Payload) > 512 {
			t.Errorf("alpha answered a refuse with %s: %.100q", f, f.Payload)
		}
	}
	logged := c.log("alpha")[before:]
	if len(logged) > 1024 || strings.Contains(logged, "\nlevel=ERROR") {
		t.Fatalf("one refuse of %d bytes added %d bytes to the log:\n%.2000s", len(reason), len(logged), logged)
	}

	before = len(c.log("alpha"))
	for range 100 {
		refuse()
	}
	logged = c.log("alpha")[before:]
	if lines := strings.Count(logged, "\n"); lines > 40 || len(logged) > 40*512 {
		t.Fatalf("100 refused connections added %d lines, %d bytes, to the log", lines, len(logged))
	}
}

// openHandshake sends the frame a handshake opens with, as node from to
// node to of r0: everything a party without the secret can say.
func openHandshake(t *testing.T, p *hostile.Peer, from, to uint8) {
	t.Helper()
	f, err := hostile.Message(wire.TypeIntro, p.Intro("r0", from, to), 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Send(f); err != nil {
		t.Fatal(err)
	}
}

// TestHostileLearnsNothingBeforeAuthentication: a party that knows the
// resource and the node ids but not the secret opens a handshake with a
// Primary, answers with a wrong MAC, and finds neither the Primary's
// device size nor its generation id in anything it received, nor the
// Primary's own MAC, which would let it test guesses of the secret offline.
func TestHostileLearnsNothingBeforeAuthentication(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 16<<20)
	c.start("alpha")
	c.cli("alpha", "primary", "--force", "r0")
	st := c.status("alpha")
	current, err := strconv.ParseUint(st.Current, 16, 64)
	if err != nil || current == 0 {
		t.Fatalf("alpha's current generation id %q: %v", st.Current, err)
	}
	state := map[string][]byte{
		"device size":           binary.LittleEndian.AppendUint64(nil, st.Size),
		"current generation id": binary.LittleEndian.AppendUint64(nil, current),
	}
	for _, transport := range []string{"tcp", "quic"} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		p, err := hostile.Dial(ctx, transport, c.node("alpha").Address)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		from := uint8(1)
		if transport == "quic" {
			from = 2
		}
		openHandshake(t, p, from, 0)
		got, _ := p.ReadAll(2 * time.Second) // what alpha says before it waits for our proof
		if err := p.Send(&wire.Frame{Type: wire.TypeAuth, Payload: make([]byte, wire.AuthMACSize)}); err != nil {
			t.Fatal(err)
		}
		more, _ := p.ReadAll(10 * time.Second)
		p.Close()
		for _, f := range append(got, more...) {
			if f.Type == wire.TypeAuth {
				t.Errorf("%s: alpha sent its auth MAC to a party whose own MAC was wrong", transport)
			}
			for what, b := range state {
				if bytes.Contains(f.Payload, b) {
					t.Errorf("%s: alpha revealed its %s to an unauthenticated party, in a %s frame", transport, what, f.Type)
				}
			}
		}
		if len(got) == 0 {
			t.Errorf("%s: alpha sent nothing after the opening: the test proves nothing", transport)
		}
	}
}

// TestHostileHelloCannotMakeStandAlone: a party without the secret that
// claims to be bravo, with a hello whose device size is off by 4 KiB,
// changes nothing in how alpha treats the real bravo: while bravo is
// connected, and while it is away and comes back.
func TestHostileHelloCannotMakeStandAlone(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 16<<20, shortTimeouts)
	c.start("alpha")
	c.start("bravo")
	connected := func(st *node.ResourceStatus) bool { return c.peer(st, "bravo").Conn == "Connected" }
	c.waitFor("alpha", "bravo connected", 30*time.Second, connected)
	size := c.status("alpha").Size

	// The crafted hello comes as the opening, and after an intro with a
	// proof that does not verify.
	attack := func(afterIntro bool) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		p, err := hostile.Dial(ctx, "tcp", c.node("alpha").Address)
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		h := p.Hello("r0", 1, 0)
		h.Size, h.Role, h.Disk = size-4096, 1, 6 // Secondary, UpToDate
		hello, err := hostile.Message(wire.TypeHello, h, 0)
		if err != nil {
			t.Fatal(err)
		}
		if afterIntro {
			openHandshake(t, p, 1, 0)
			p.ReadAll(time.Second)
			p.Send(&wire.Frame{Type: wire.TypeAuth, Payload: make([]byte, wire.AuthMACSize)}, hello)
		} else {
			p.Send(hello)
		}
		p.ReadAll(10 * time.Second)
	}
	notStandAlone := func(when string) {
		st := c.status("alpha")
		if b := c.peer(st, "bravo"); b.Conn == "StandAlone" || strings.Contains(b.LastError, "differ") {
			t.Fatalf("%s: alpha sees bravo as %+v", when, b)
		}
	}

	attack(false)
	attack(true)
	notStandAlone("after crafted hellos while bravo is connected")
	if !connected(c.status("alpha")) {
		t.Fatalf("crafted hellos disconnected bravo: %+v", c.peer(c.status("alpha"), "bravo"))
	}

	c.kill("bravo")
	c.waitFor("alpha", "bravo gone", 30*time.Second, func(st *node.ResourceStatus) bool { return !connected(st) })
	attack(false)
	attack(true)
	notStandAlone("after crafted hellos while bravo is away")
	c.start("bravo")
	c.waitFor("alpha", "bravo back", 30*time.Second, connected)
}

// TestHostileReadRequestLength: a peer that authenticated as a Primary
// and asks its secondary for 200 MiB in one read request (a Primary asks
// for at most 8 MiB) is dropped for a protocol violation before the
// secondary reads or allocates anything.
func TestHostileReadRequestLength(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 256<<20)
	c.start("alpha")
	c.cli("alpha", "primary", "--force", "r0")
	c.cli("alpha", "secondary", "r0")
	pid := c.procs["alpha"].Process.Pid

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	p, err := hostile.Dial(ctx, "tcp", c.node("alpha").Address)
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if _, err := p.Authenticate("demo-secret", "r0", 1, 0, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	// The dialer's hello goes first: the hostile Primary takes alpha's
	// size and generation from its status to pose as its Primary.
	st := c.status("alpha")
	current, err := strconv.ParseUint(st.Current, 16, 64)
	if err != nil {
		t.Fatalf("alpha's current id %q: %v", st.Current, err)
	}
	ours := p.Hello("r0", 1, 0)
	ours.Size, ours.Gen, ours.Role, ours.Disk = st.Size, wire.GenIDs{Current: current}, 2, 6 // Primary, UpToDate
	f, err := hostile.Message(wire.TypeHello, ours, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Send(f); err != nil {
		t.Fatal(err)
	}
	if _, err := p.ReadHello(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	c.waitFor("alpha", "the hostile Primary replicating", 30*time.Second, func(st *node.ResourceStatus) bool {
		b := c.peer(st, "bravo")
		return b.Conn == "Connected" && b.Repl == "Established" && b.Role == "Primary"
	})

	base := peakRSS(t, pid)
	if err := p.Send(&wire.Frame{Type: wire.TypeReadRequest, Seq: 1, Offset: 0, Length: 200 << 20}); err != nil {
		t.Fatal(err)
	}
	c.waitFor("alpha", "the hostile Primary dropped", 30*time.Second, func(st *node.ResourceStatus) bool {
		return c.peer(st, "bravo").Conn != "Connected"
	})
	if grown := peakRSS(t, pid) - base; grown > 64<<20 {
		t.Errorf("a read request of 200 MiB grew alpha's peak RSS by %d MiB", grown>>20)
	}
	if log := c.log("alpha"); !strings.Contains(log, "protocol violation: read request of 209715200 bytes") {
		t.Errorf("alpha's log does not say it dropped the hostile Primary for its read request:\n%s", log)
	}
}

// TestHostileDescriptorExhaustion: a flood of TCP connections that takes
// every descriptor a daemon may open (its limit is 64 here) makes the
// admin socket fail for a while, not for good: once the flood ends,
// status answers again.
func TestHostileDescriptorExhaustion(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 16<<20)
	sock := c.adminSock("alpha")
	logf, err := os.Create(filepath.Join(c.dir, "alpha.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command("sh", "-c", `ulimit -n 64 && exec "$0" "$@"`, georeplBin,
		"daemon", "--config", c.conf, "--node", "alpha", "--admin", sock, "--up")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c.track("alpha", cmd)
	status := func(timeout time.Duration) error {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		return admin.Call(ctx, sock, admin.Request{Verb: "status", Resource: "r0"}, func(admin.Reply) error { return nil })
	}
	// The admin socket answers before the resource is up and its port
	// listens: the flood must not find the port closed.
	deadline := time.Now().Add(30 * time.Second)
	for {
		st, err := c.statusErr("alpha")
		if err == nil && st.Up {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("alpha did not come up: %v\n%s", err, c.log("alpha"))
		}
		time.Sleep(50 * time.Millisecond)
	}

	var flood []net.Conn
	for range 100 {
		conn, err := net.Dial("tcp", c.node("alpha").Address)
		if err != nil {
			t.Fatal(err)
		}
		flood = append(flood, conn)
	}
	// The daemon takes the flood's connections off the kernel's backlog at
	// its own pace (slowly on a loaded machine): until it has, they hold
	// none of its descriptors and status still answers.
	deadline = time.Now().Add(20 * time.Second)
	for status(2*time.Second) == nil {
		if time.Now().After(deadline) {
			t.Fatal("status still answers 20 s into the flood: the daemon's descriptors were never all taken, so the test proves nothing")
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, conn := range flood {
		conn.Close()
	}
	deadline = time.Now().Add(20 * time.Second)
	for {
		err := status(time.Second)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("status still fails 20 s after the flood ended: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
