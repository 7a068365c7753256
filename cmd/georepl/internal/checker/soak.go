package checker

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/georepl/georepl/kmod/nbd"
)

// SoakOptions configure Soak.
type SoakOptions struct {
	Bin      string        // the georepl binary
	Dir      string        // working folder (disks, sockets, logs)
	Runs     int           // stop after this many kill points; 0: run until Duration
	Duration time.Duration // stop after this long; 0: run until Runs
	Size     int64         // disk size of each node
	Seed     uint64
	Out      io.Writer
	// Rejoin is how the killed primary and the lagging peers come back
	// after the failover: RejoinFull (the default: fresh metadata and a
	// full sync) or RejoinBitmap (they just reconnect, as the admin guide
	// prescribes, and the activity log, the generation ids and the
	// bitmaps must find what differs).
	Rejoin string
}

// Rejoin modes.
const (
	RejoinFull   = "full"
	RejoinBitmap = "bitmap"
)

// SoakResult counts what Soak saw.
type SoakResult struct {
	Runs, Failures int
	Failed         []string
}

// The soak cluster: alpha is the primary of every run, and each secondary
// runs another protocol towards it.
var soakNodes = []struct {
	name     string
	protocol string // towards alpha
}{{"alpha", ""}, {"bravo", "C"}, {"charlie", "B"}, {"dr", "A"}}

// Soak runs kill points until Runs or Duration: a four-node cluster (alpha
// primary; bravo protocol C, charlie B, dr A) takes the checker's workload
// through alpha's export; alpha is killed (SIGKILL) at a random moment;
// every survivor's image is verified (C: durable and ordered; A, B:
// ordered); bravo takes over, the others rejoin and resynchronise, and all
// four images must end byte-identical; then alpha is primary again.
//
// Rejoining: a node that may hold writes the new primary lacks (the killed
// primary, and a B or A peer that lagged behind the C peer) either
// reconnects as it is (RejoinBitmap: the activity log of the killed
// primary and the lagging peers' marks must cover every difference) or
// rejoins with fresh metadata and a full sync (RejoinFull).
func Soak(ctx context.Context, o SoakOptions) (SoakResult, error) {
	if o.Size == 0 {
		o.Size = 16 << 20
	}
	switch o.Rejoin {
	case "":
		o.Rejoin = RejoinFull
	case RejoinFull, RejoinBitmap:
	default:
		return SoakResult{}, fmt.Errorf("unknown rejoin mode %q: want %q or %q", o.Rejoin, RejoinFull, RejoinBitmap)
	}
	s := &soak{SoakOptions: o, procs: map[string]*exec.Cmd{}, rng: rand.New(rand.NewPCG(o.Seed, 99))}
	defer s.stopAll()
	var res SoakResult
	if err := s.setup(ctx); err != nil {
		return res, err
	}
	start := time.Now()
	for run := 1; ; run++ {
		if o.Runs > 0 && run > o.Runs || o.Duration > 0 && time.Since(start) > o.Duration || ctx.Err() != nil {
			break
		}
		note, err := s.killPoint(ctx, run)
		res.Runs++
		if err != nil {
			return res, fmt.Errorf("run %d: %w (logs in %s)", run, err, o.Dir)
		}
		if note != "" {
			res.Failures++
			res.Failed = append(res.Failed, fmt.Sprintf("run %d: %s", run, note))
		}
	}
	fmt.Fprintf(o.Out, "%d runs, %d failures\n", res.Runs, res.Failures)
	return res, nil
}

type soak struct {
	SoakOptions
	conf     string
	dataSize uint64
	procs    map[string]*exec.Cmd
	rng      *rand.Rand
}

func (s *soak) disk(n string) string      { return filepath.Join(s.Dir, n+".img") }
func (s *soak) adminSock(n string) string { return filepath.Join(s.Dir, n+".admin") }
func (s *soak) export(n string) string    { return "unix:" + filepath.Join(s.Dir, n+".nbd") }

func (s *soak) setup(ctx context.Context) error {
	s.conf = filepath.Join(s.Dir, "conf")
	if err := os.MkdirAll(s.conf, 0o755); err != nil {
		return err
	}
	port, err := FreePorts(len(soakNodes))
	if err != nil {
		return err
	}
	var hcl strings.Builder
	hcl.WriteString("resource \"r0\" {\n  protocol = \"C\"\n  net {\n    shared_secret = \"check\"\n    ping_interval = \"1s\"\n    timeout = \"2s\"\n    connect_retry = \"200ms\"\n  }\n")
	for i, n := range soakNodes {
		fmt.Fprintf(&hcl, "  node %q {\n    id = %d\n    address = \"127.0.0.1:%d\"\n    disk = %q\n    export = %q\n  }\n",
			n.name, i, port+i, s.disk(n.name), s.export(n.name))
		if n.protocol != "" {
			fmt.Fprintf(&hcl, "  connection \"alpha\" %q {\n    protocol = %q\n  }\n", n.name, n.protocol)
		}
	}
	hcl.WriteString("}\n")
	if err := os.WriteFile(filepath.Join(s.conf, "r0.hcl"), []byte(hcl.String()), 0o644); err != nil {
		return err
	}
	for _, n := range soakNodes {
		if err := os.WriteFile(s.disk(n.name), nil, 0o644); err != nil {
			return err
		}
		if err := os.Truncate(s.disk(n.name), s.Size); err != nil {
			return err
		}
		if err := s.freshStart(ctx, n.name); err != nil {
			return err
		}
	}
	if err := s.cli(ctx, "alpha", "primary", "--force", "r0"); err != nil {
		return err
	}
	st, err := s.status(ctx, "alpha")
	if err != nil {
		return err
	}
	s.dataSize = st.Size
	return s.cli(ctx, "alpha", "wait-sync", "--timeout", "5m", "r0")
}

// freshStart gives node n fresh metadata and starts its daemon.
func (s *soak) freshStart(ctx context.Context, n string) error {
	if out, err := exec.CommandContext(ctx, s.Bin, "create-md", "--force", "--config", s.conf, "--node", n, "r0").CombinedOutput(); err != nil {
		return fmt.Errorf("create-md %s: %v: %s", n, err, out)
	}
	return s.start(ctx, n)
}

func (s *soak) start(ctx context.Context, n string) error {
	logf, err := os.OpenFile(filepath.Join(s.Dir, n+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(s.Bin, "daemon", "--config", s.conf, "--node", n, "--admin", s.adminSock(n), "--up")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return err
	}
	s.procs[n] = cmd
	deadline := time.Now().Add(30 * time.Second)
	for {
		if st, err := s.status(ctx, n); err == nil && st.Up {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not come up", n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (s *soak) kill(n string) {
	if c := s.procs[n]; c != nil {
		c.Process.Signal(syscall.SIGKILL)
		c.Wait()
		delete(s.procs, n)
	}
}

func (s *soak) stopAll() {
	for n, c := range s.procs {
		Stop(c, 10*time.Second)
		delete(s.procs, n)
	}
}

func (s *soak) cli(ctx context.Context, n string, args ...string) error {
	out, err := exec.CommandContext(ctx, s.Bin, append([]string{"--admin", s.adminSock(n)}, args...)...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("georepl %s on %s: %v: %s", strings.Join(args, " "), n, err, bytes.TrimSpace(out))
	}
	return nil
}

type peerStatus struct {
	Name string `json:"name"`
	Conn string `json:"connection"`
	Role string `json:"role"`
}

type nodeStatus struct {
	Up    bool         `json:"up"`
	Size  uint64       `json:"size_bytes"`
	Peers []peerStatus `json:"peers"`
}

func (s *soak) status(ctx context.Context, n string) (*nodeStatus, error) {
	out, err := exec.CommandContext(ctx, s.Bin, "--admin", s.adminSock(n), "status", "--json", "r0").Output()
	if err != nil {
		return nil, err
	}
	var sts []*nodeStatus
	if err := json.Unmarshal(out, &sts); err != nil || len(sts) != 1 {
		return nil, fmt.Errorf("status of %s: %v", n, err)
	}
	return sts[0], nil
}

// killPoint runs one kill point; note says what was violated ("" if
// nothing); err is a failure of the harness itself.
func (s *soak) killPoint(ctx context.Context, run int) (note string, err error) {
	blocks := s.dataSize / BlockSize
	logPath := filepath.Join(s.Dir, fmt.Sprintf("run-%d.log", run))
	w := Workload{Run: uint64(run)<<32 | s.rng.Uint64N(1<<32), Blocks: blocks, Depth: 1 + s.rng.IntN(16), FlushEvery: s.rng.IntN(64)}
	log, err := CreateLog(logPath, w.Run, w.FirstBlock, w.Blocks)
	if err != nil {
		return "", err
	}
	client, err := nbd.Dial(ctx, s.export("alpha"), "r0")
	if err != nil {
		log.Close()
		return "", err
	}
	wctx, cancel := context.WithCancel(ctx)
	done := make(chan int, 1)
	go func() {
		n, _ := RunWorkload(wctx, client, log, w)
		done <- n
	}()
	delay := time.Duration(50+s.rng.IntN(700)) * time.Millisecond
	time.Sleep(delay)
	s.kill("alpha")
	var completed int
	select {
	case completed = <-done:
	case <-time.After(30 * time.Second):
		cancel()
		completed = <-done
	}
	cancel()
	client.Close()
	if err := log.Close(); err != nil {
		return "", err
	}

	// Verify every survivor once it has seen alpha go.
	f, err := os.Open(logPath)
	if err != nil {
		return "", err
	}
	hist, err := ReadLog(f)
	f.Close()
	if err != nil {
		return "", err
	}
	var notes, line []string
	for _, n := range soakNodes[1:] {
		if err := s.waitPeerGone(ctx, n.name, "alpha"); err != nil {
			return "", err
		}
		img, err := os.Open(s.disk(n.name))
		if err != nil {
			return "", err
		}
		res, err := Verify(hist, img, n.protocol == "C")
		img.Close()
		if err != nil {
			return "", err
		}
		verdict := "ok"
		if !res.OK() {
			verdict = "FAILED"
			notes = append(notes, fmt.Sprintf("%s (protocol %s): %s", n.name, n.protocol, res))
		}
		line = append(line, fmt.Sprintf("%s(%s) %s", n.name, n.protocol, verdict))
	}

	// bravo (protocol C, UpToDate) takes over; the others rejoin (see
	// Soak's doc), then every image must match.
	if err := s.cli(ctx, "bravo", "primary", "r0"); err != nil {
		return "", err
	}
	for _, n := range []string{"charlie", "dr"} {
		if s.Rejoin == RejoinBitmap {
			break
		}
		if err := s.cli(ctx, n, "down", "r0"); err != nil {
			return "", err
		}
		if out, err := exec.CommandContext(ctx, s.Bin, "create-md", "--force", "--config", s.conf, "--node", n, "r0").CombinedOutput(); err != nil {
			return "", fmt.Errorf("create-md %s: %v: %s", n, err, out)
		}
		if err := s.cli(ctx, n, "up", "r0"); err != nil {
			return "", err
		}
	}
	if s.Rejoin == RejoinBitmap {
		err = s.start(ctx, "alpha")
	} else {
		err = s.freshStart(ctx, "alpha")
	}
	if err != nil {
		return "", err
	}
	if err := s.cli(ctx, "bravo", "wait-sync", "--timeout", "5m", "r0"); err != nil {
		return "", err
	}
	if err := s.cli(ctx, "bravo", "secondary", "r0"); err != nil {
		return "", err
	}
	// alpha learns bravo's demotion from a state-change frame; promoting
	// before it arrived is refused (a peer is primary), as an operator
	// would see too.
	if err := s.waitPeerRole(ctx, "alpha", "bravo", "Secondary"); err != nil {
		return "", err
	}
	if err := s.cli(ctx, "alpha", "primary", "r0"); err != nil {
		return "", err
	}
	if err := s.cli(ctx, "alpha", "wait-sync", "--timeout", "5m", "r0"); err != nil {
		return "", err
	}
	identical, err := s.imagesIdentical()
	if err != nil {
		return "", err
	}
	if identical {
		line = append(line, "resynced images identical")
	} else {
		line = append(line, "resynced images DIFFER")
		notes = append(notes, "after resync the images differ")
	}
	fmt.Fprintf(s.Out, "run %d: alpha killed after %v, %d writes completed (depth %d): %s\n", run, delay, completed, w.Depth, strings.Join(line, ", "))
	if len(notes) == 0 {
		os.Remove(logPath)
	}
	return strings.Join(notes, "; "), nil
}

func (s *soak) waitPeerGone(ctx context.Context, n, peer string) error {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		st, err := s.status(ctx, n)
		if err != nil {
			return err
		}
		gone := true
		for _, p := range st.Peers {
			if p.Name == peer && p.Conn == "Connected" {
				gone = false
			}
		}
		if gone {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("%s still sees %s connected 30s after the kill", n, peer)
}

func (s *soak) waitPeerRole(ctx context.Context, n, peer, role string) error {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		st, err := s.status(ctx, n)
		if err != nil {
			return err
		}
		for _, p := range st.Peers {
			if p.Name == peer && p.Conn == "Connected" && p.Role == role {
				return nil
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("%s does not see %s connected as %s after 30s", n, peer, role)
}

func (s *soak) imagesIdentical() (bool, error) {
	var first [32]byte
	for i, n := range soakNodes {
		f, err := os.Open(s.disk(n.name))
		if err != nil {
			return false, err
		}
		h := sha256.New()
		_, err = io.CopyN(h, f, int64(s.dataSize))
		f.Close()
		if err != nil {
			return false, err
		}
		var sum [32]byte
		copy(sum[:], h.Sum(nil))
		if i == 0 {
			first = sum
		} else if sum != first {
			return false, nil
		}
	}
	return true, nil
}

// Stop ends a daemon the way an init system would: SIGTERM, then SIGKILL
// if it has not exited within grace.
func Stop(cmd *exec.Cmd, grace time.Duration) {
	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(grace):
		cmd.Process.Kill()
		<-done
	}
}

// FreePorts finds n consecutive ports free for both TCP and UDP (QUIC) on
// 127.0.0.1, for clusters on loopback. They lie below the kernel's
// ephemeral range: between this check and the daemon's bind, the port of
// an outgoing connection (other clusters' daemons dial all the time) can
// only come from that range.
func FreePorts(n int) (int, error) {
	lo := 10000
	hi := ephemeralLow() - n
	for try := 0; try < 50; try++ {
		base := lo + rand.IntN(max(hi-lo, 1))
		if portsFree(base, n) {
			return base, nil
		}
	}
	return 0, errors.New("no free block of ports on 127.0.0.1")
}

// ephemeralLow is the first port of the kernel's ephemeral range (Linux:
// net.ipv4.ip_local_port_range), 32768 if it cannot be read; never below
// 20000, which leaves FreePorts room.
func ephemeralLow() int {
	low := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if v, err := strconv.Atoi(f[0]); err == nil {
				low = v
			}
		}
	}
	return max(low, 20000)
}

func portsFree(base, n int) bool {
	for i := 0; i < n; i++ {
		addr := fmt.Sprintf("127.0.0.1:%d", base+i)
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return false
		}
		l.Close()
		u, err := net.ListenPacket("udp", addr)
		if err != nil {
			return false
		}
		u.Close()
	}
	return true
}
