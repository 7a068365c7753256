package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/georepl/georepl/cmd/georepl/internal/checker"
	"github.com/georepl/georepl/cmd/georepl/internal/node"
	"github.com/georepl/georepl/configs"
	"github.com/georepl/georepl/kmod/nbd"
)

// georeplBin is the binary under test, built once by TestMain.
var georeplBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "georepl-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	georeplBin = filepath.Join(dir, "georepl")
	args := []string{"build", "-o", georeplBin}
	if raceEnabled {
		args = append(args, "-race")
	}
	build := exec.Command("go", append(args, ".")...)
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building georepl:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// requireTool fails in CI and skips elsewhere when a real client is missing.
func requireTool(t *testing.T, tool, pkg string) {
	t.Helper()
	if _, err := exec.LookPath(tool); err == nil {
		return
	}
	msg := fmt.Sprintf("%s is not installed (apt-get install -y %s, or `make deps`)", tool, pkg)
	if os.Getenv("CI") != "" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// cluster is the demo's three nodes as separate daemon processes, driven
// through the CLI binary like an operator would.
type cluster struct {
	t     *testing.T
	dir   string
	conf  string
	src   []byte
	rc    *configs.Resource
	procs map[string]*exec.Cmd
	// exited has a channel per node in procs, closed once its daemon
	// exited (start waits for the process).
	exited map[string]chan struct{}
	// confOf names another configuration directory for a node (a node
	// with a different configuration, e.g. the wrong secret).
	confOf map[string]string
	// args are extra daemon arguments per node.
	args map[string][]string
	// wrap is a command that runs a node's daemon (its arguments
	// following), e.g. `ip netns exec NS`; the daemon itself runs without.
	wrap map[string][]string
}

// newCluster prepares the demo's three nodes with disks of size bytes;
// edits, applied in order, change the demo configuration's text.
func newCluster(t *testing.T, size int64, edits ...func(string) string) *cluster {
	t.Helper()
	dir := t.TempDir()
	port, err := checker.FreePorts(3)
	if err != nil {
		t.Fatal(err)
	}
	c := &cluster{t: t, dir: dir, conf: filepath.Join(dir, "conf"), procs: map[string]*exec.Cmd{}, exited: map[string]chan struct{}{},
		confOf: map[string]string{}, args: map[string][]string{}, wrap: map[string][]string{}}
	src := string(configs.Demo(dir, port))
	for _, edit := range edits {
		src = edit(src)
	}
	c.src = []byte(src)
	c.writeConf(c.conf, c.src)
	cfg, err := loadConfig(c.conf)
	if err != nil {
		t.Fatal(err)
	}
	if c.rc, err = cfg.Resource("r0"); err != nil {
		t.Fatal(err)
	}
	for _, n := range demoNodes {
		if err := os.WriteFile(c.node(n).Disk, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(c.node(n).Disk, size); err != nil {
			t.Fatal(err)
		}
		c.cli("", "create-md", "--config", c.conf, "--node", n, "r0")
	}
	t.Cleanup(c.stopAll)
	return c
}

func (c *cluster) writeConf(dir string, src []byte) {
	c.t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		c.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "r0.hcl"), src, 0o644); err != nil {
		c.t.Fatal(err)
	}
}

func (c *cluster) node(n string) *configs.Node {
	nd, err := c.rc.Node(n)
	if err != nil {
		c.t.Fatal(err)
	}
	return nd
}

func (c *cluster) adminSock(n string) string { return filepath.Join(c.dir, n+".admin.sock") }

// cli runs the georepl binary against node n's admin socket and returns
// its output; it fails the test on a non-zero exit.
func (c *cluster) cli(n string, args ...string) string {
	c.t.Helper()
	out, err := c.cliErr(n, args...)
	if err != nil {
		c.t.Fatalf("georepl %s (node %s): %v\n%s", strings.Join(args, " "), n, err, out)
	}
	return out
}

func (c *cluster) cliErr(n string, args ...string) (string, error) {
	if n != "" {
		args = append([]string{"--admin", c.adminSock(n)}, args...)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, georeplBin, args...).CombinedOutput()
	if err != nil && n != "" {
		if ctx.Err() != nil {
			out = append(out, "\n"+c.dumpHung(n)...)
		}
		// "Cannot reach the daemon" alone hides a daemon that died.
		if gone := c.daemonGone(n); gone != "" {
			out = append(out, "\n"+gone...)
		}
	}
	return string(out), err
}

// dumpHung asks node n's daemon, which left a command unanswered for
// minutes, for the stacks of its goroutines (SIGQUIT: Go's runtime
// prints them into the daemon's log and exits), so that a hang shows
// where it is; daemonGone then prints the log's end.
func (c *cluster) dumpHung(n string) string {
	cmd, ok := c.procs[n]
	if !ok || c.daemonGone(n) != "" {
		return ""
	}
	if err := cmd.Process.Signal(syscall.SIGQUIT); err != nil {
		return fmt.Sprintf("daemon %s: SIGQUIT for its stacks: %v", n, err)
	}
	select {
	case <-c.exited[n]:
		return fmt.Sprintf("daemon %s left the command unanswered: its goroutines' stacks are at the end of its log", n)
	case <-time.After(30 * time.Second):
		return fmt.Sprintf("daemon %s left the command unanswered and did not exit on SIGQUIT", n)
	}
}

// track records cmd, started, as node n's daemon: it is waited for here
// (c.exited[n] closes when it exits), so nothing else may call its Wait.
func (c *cluster) track(n string, cmd *exec.Cmd) {
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		close(exited)
	}()
	c.procs[n], c.exited[n] = cmd, exited
}

// daemonGone says how node n's daemon ended and how its log ends, if it
// was started and has exited since; "" otherwise.
func (c *cluster) daemonGone(n string) string {
	exited, ok := c.exited[n]
	if !ok {
		return ""
	}
	select {
	case <-exited:
	default:
		return ""
	}
	log := c.log(n)
	if len(log) > 8192 {
		log = "..." + log[len(log)-8192:]
	}
	return fmt.Sprintf("daemon %s is gone (%v); its log ends:\n%s", n, c.procs[n].ProcessState, log)
}

func (c *cluster) start(n string) {
	c.t.Helper()
	logf, err := os.OpenFile(filepath.Join(c.dir, n+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		c.t.Fatal(err)
	}
	defer logf.Close()
	conf := c.conf
	if other, ok := c.confOf[n]; ok {
		conf = other
	}
	argv := append(append(slices.Clone(c.wrap[n]), georeplBin, "daemon", "--config", conf, "--node", n, "--admin", c.adminSock(n), "--up"), c.args[n]...)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	c.track(n, cmd)
	// Up once its admin socket answers that it is: the socket file alone
	// may be one a killed daemon left.
	deadline := time.Now().Add(30 * time.Second)
	for {
		st, err := c.statusErr(n)
		if err == nil && st.Up {
			return
		}
		if gone := c.daemonGone(n); gone != "" {
			c.t.Fatalf("%s exited while starting: %s", n, gone)
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("%s did not come up: %v\n%s", n, err, c.log(n))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// startInSync starts every demo node, makes alpha Primary with --force
// (the initial full sync) and waits until every peer is in sync with it.
func (c *cluster) startInSync() {
	c.t.Helper()
	for _, n := range demoNodes {
		c.start(n)
	}
	c.cli("alpha", "primary", "--force", "r0")
	c.cli("alpha", "wait-sync", "--timeout", "2m", "r0")
}

func (c *cluster) log(n string) string {
	b, _ := os.ReadFile(filepath.Join(c.dir, n+".log"))
	return string(b)
}

func (c *cluster) kill(n string) {
	c.procs[n].Process.Signal(syscall.SIGKILL)
	<-c.exited[n]
	delete(c.procs, n)
	delete(c.exited, n)
}

// stopAll stops every daemon (SIGTERM, then SIGKILL after a grace
// period) and fails the test if any daemon's log, this run's or a
// killed one's, shows a panic or a data race: a daemon that died or
// raced must not pass for a slow one.
func (c *cluster) stopAll() {
	for n, cmd := range c.procs {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-c.exited[n]:
		case <-time.After(15 * time.Second):
			cmd.Process.Kill()
			<-c.exited[n]
		}
		delete(c.procs, n)
		delete(c.exited, n)
		if c.t.Failed() {
			c.t.Logf("log of %s:\n%s", n, c.log(n))
		}
	}
	for _, n := range demoNodes {
		log := c.log(n)
		for _, sign := range []string{"panic: ", "fatal error: ", "WARNING: DATA RACE"} {
			if i := strings.Index(log, sign); i >= 0 {
				c.t.Errorf("the log of %s shows %q:\n%s", n, strings.TrimSpace(sign), log[i:min(len(log), i+16384)])
				break
			}
		}
	}
}

func (c *cluster) statusErr(n string) (*node.ResourceStatus, error) {
	out, err := c.cliErr(n, "status", "--json", "r0")
	if err != nil {
		return nil, fmt.Errorf("%v: %s", err, out)
	}
	var sts []*node.ResourceStatus
	if err := json.Unmarshal([]byte(out), &sts); err != nil {
		return nil, fmt.Errorf("status --json: %v: %s", err, out)
	}
	return sts[0], nil
}

func (c *cluster) status(n string) *node.ResourceStatus {
	c.t.Helper()
	st, err := c.statusErr(n)
	if err != nil {
		c.t.Fatal(err)
	}
	return st
}

func (c *cluster) peer(st *node.ResourceStatus, name string) node.PeerStatus {
	for _, p := range st.Peers {
		if p.Name == name {
			return p
		}
	}
	c.t.Fatalf("no peer %s in status of %s", name, st.Node)
	return node.PeerStatus{}
}

// dataHashes hashes the data area of every node's disk (the metadata at
// the end differs per node by design).
func (c *cluster) dataHashes(size uint64) map[string][32]byte {
	sums := map[string][32]byte{}
	for _, n := range demoNodes {
		sum, err := hashPrefix(c.node(n).Disk, int64(size))
		if err != nil {
			c.t.Fatal(err)
		}
		sums[n] = sum
	}
	return sums
}

func (c *cluster) exportURI() string {
	spec := c.node("alpha").Export
	return "nbd+unix:///r0?socket=" + strings.TrimPrefix(spec, "unix:")
}

// settleAndCompare waits for the cluster to be in sync, takes it down and
// checks that the three disks hold the same data.
func (c *cluster) settleAndCompare() {
	c.t.Helper()
	c.cli("alpha", "wait-sync", "--timeout", "2m", "r0")
	size := c.status("alpha").Size
	c.cli("alpha", "secondary", "r0")
	for _, n := range demoNodes {
		c.cli(n, "down", "r0")
	}
	sums := c.dataHashes(size)
	a, b, d := sums["alpha"], sums["bravo"], sums["dr"]
	if a != b || a != d {
		c.t.Fatalf("disks differ after resync: alpha %x bravo %x dr %x", a[:8], b[:8], d[:8])
	}
}

// TestClusterFioKillSecondary: three daemons, fio writing with crc32c
// verification through the export, bravo (protocol C) killed with SIGKILL
// in the middle, restarted, resynchronised by bitmap; the three disks end
// byte-identical and the resync moved only part of the device.
func TestClusterFioKillSecondary(t *testing.T) {
	t.Parallel()
	requireTool(t, "fio", "fio")
	const size = 128 << 20
	c := newCluster(t, size)
	c.startInSync()

	if out, err := c.cliErr("bravo", "primary", "r0"); err == nil {
		t.Fatalf("bravo became primary while alpha is: %s", out)
	}

	fio := exec.Command("fio", "--name=kill", "--ioengine=nbd", "--uri="+c.exportURI(),
		"--rw=randwrite", "--bs=4k", "--size=48M", "--offset=0", "--iodepth=16",
		"--verify=crc32c", "--do_verify=1", "--randrepeat=0", "--output-format=terse", "--verify_state_save=0")
	fio.Dir = c.dir // fio drops state files in its working directory
	var fioOut bytes.Buffer
	fio.Stdout, fio.Stderr = &fioOut, &fioOut
	if err := fio.Start(); err != nil {
		t.Fatal(err)
	}
	// Kill bravo once writes are flowing.
	deadline := time.Now().Add(30 * time.Second)
	for c.status("alpha").DiskWritten < 2<<20 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	c.kill("bravo")
	if err := fio.Wait(); err != nil {
		t.Fatalf("fio failed after bravo was killed: %v\n%s", err, fioOut.String())
	}
	// The kill reaches alpha as a reset connection; give the daemon a
	// moment to notice if fio was faster.
	st := c.status("alpha")
	for i := 0; i < 100 && c.peer(st, "bravo").Conn == "Connected"; i++ {
		time.Sleep(50 * time.Millisecond)
		st = c.status("alpha")
	}
	if p := c.peer(st, "bravo"); p.OutOfSync == 0 {
		t.Fatalf("no out-of-sync blocks recorded for the killed peer: %+v", p)
	}
	if p := c.peer(st, "dr"); p.Conn != "Connected" {
		t.Fatalf("dr lost its connection too: %+v", p)
	}
	oos := c.peer(st, "bravo").OutOfSync

	c.start("bravo")
	c.cli("alpha", "wait-sync", "--timeout", "2m", "r0")
	if oos >= size/2 {
		t.Errorf("resync after a short outage marked %d of %d bytes: should be only what changed", oos, size)
	}
	c.settleAndCompare()
}

// TestClusterRealClients: nbdinfo sees the export; qemu-img and nbdcopy
// copy through it; a secondary refuses clients with a clear reason.
func TestClusterRealClients(t *testing.T) {
	t.Parallel()
	requireTool(t, "nbdinfo", "libnbd-bin")
	requireTool(t, "nbdcopy", "libnbd-bin")
	requireTool(t, "qemu-img", "qemu-utils")
	c := newCluster(t, 64<<20)
	for _, n := range demoNodes {
		c.start(n)
	}
	c.cli("alpha", "primary", "--force", "r0")

	out, err := exec.Command("nbdinfo", "--json", c.exportURI()).CombinedOutput()
	if err != nil {
		t.Fatalf("nbdinfo: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), `"can_flush": true`) || !strings.Contains(string(out), `"can_fua": true`) {
		t.Errorf("nbdinfo does not report flush and FUA:\n%s", out)
	}

	src := filepath.Join(c.dir, "src.raw")
	payload := bytes.Repeat([]byte("georepl-nbdcopy-"), (16<<20)/16)
	for i := range payload {
		if i%4099 == 0 {
			payload[i] = byte(i >> 8)
		}
	}
	if err := os.WriteFile(src, payload, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("nbdcopy", src, c.exportURI()).CombinedOutput(); err != nil {
		t.Fatalf("nbdcopy in: %v\n%s", err, out)
	}
	back := filepath.Join(c.dir, "back.raw")
	if out, err := exec.Command("qemu-img", "convert", "-f", "raw", "-O", "raw", c.exportURI(), back).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img convert out: %v\n%s", err, out)
	}
	got, err := os.ReadFile(back)
	if err != nil {
		t.Fatal(err)
	}
	if sha256.Sum256(got[:len(payload)]) != sha256.Sum256(payload) {
		t.Fatal("data read back through qemu-img differs from what nbdcopy wrote")
	}

	// qemu-img prints the server's refusal text (nbdinfo only in debug mode).
	bravoURI := "nbd+unix:///r0?socket=" + strings.TrimPrefix(c.node("bravo").Export, "unix:")
	out, err = exec.Command("qemu-img", "info", bravoURI).CombinedOutput()
	if err == nil {
		t.Fatalf("the secondary served its export:\n%s", out)
	}
	if !strings.Contains(string(out), "Secondary") {
		t.Errorf("the secondary's refusal does not say why:\n%s", out)
	}
	c.settleAndCompare()
}

// TestDemo runs `georepl demo` as a user would (`make demo`), smaller.
func TestDemo(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dir := t.TempDir()
	out, err := exec.CommandContext(ctx, georeplBin, "demo", "--size", "128MiB", "--dir", dir).CombinedOutput()
	if err != nil {
		t.Fatalf("georepl demo: %v\n%s", err, out)
	}
	for _, want := range []string{"byte-identical", "resynchronised", "tls init", "tls:required auth:certificate+secret",
		`mode              = "auto"`, "bravo promoted automatically and accepting writes", "bravo serves every write alpha acknowledged",
		"alpha resynchronised"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
	// The killed bravo resyncs what it missed and its activity log, not
	// the whole disk.
	m := regexp.MustCompile(`bravo resynchronised ([0-9.]+)(\S*) of ([0-9.]+)(\S*)`).FindStringSubmatch(string(out))
	if m == nil {
		t.Fatalf("demo output has no resync size:\n%s", out)
	}
	moved, size := humanToBytes(m[1], m[2]), humanToBytes(m[3], m[4])
	if moved <= 0 || size <= 0 || moved >= size*7/8 {
		t.Errorf("bravo resynchronised %s%s of %s%s: want some, and well under the whole disk\n%s", m[1], m[2], m[3], m[4], out)
	}
	// The demo ends cleanly: every daemon, the killed ones' earlier runs
	// included, logged no panic or race.
	for _, n := range demoNodes {
		log, err := os.ReadFile(filepath.Join(dir, n+".log"))
		if err != nil {
			t.Fatal(err)
		}
		for _, sign := range []string{"panic: ", "fatal error: ", "WARNING: DATA RACE"} {
			if i := strings.Index(string(log), sign); i >= 0 {
				t.Errorf("the demo's log of %s shows %q:\n%s", n, strings.TrimSpace(sign), log[i:min(len(log), i+16384)])
			}
		}
	}
}

// humanToBytes reads a size as node.HumanBytes writes it ("71.2MiB"):
// -1 if it cannot.
func humanToBytes(number, unit string) float64 {
	v, err := strconv.ParseFloat(number, 64)
	scale := map[string]float64{"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}[unit]
	if err != nil || scale == 0 {
		return -1
	}
	return v * scale
}

// events starts `georepl events r0` against node n and returns once the
// daemon has subscribed it: out then gets every state change, complete
// once ctx is cancelled and cmd waited for.
func (c *cluster) events(ctx context.Context, n string) (cmd *exec.Cmd, out *bytes.Buffer) {
	c.t.Helper()
	cmd = exec.CommandContext(ctx, georeplBin, "--admin", c.adminSock(n), "events", "r0")
	out = &bytes.Buffer{}
	sub := &subscription{said: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = out, sub
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	select {
	case <-sub.said:
	case <-time.After(30 * time.Second):
		c.t.Fatalf("georepl events did not say within 30s that it subscribed: %q", sub.text())
	}
	return cmd, out
}

// subscription is the standard error of `georepl events`: said is closed
// once it says that the daemon subscribed it.
type subscription struct {
	said chan struct{}
	mu   sync.Mutex
	buf  []byte
}

func (s *subscription) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	before := bytes.Contains(s.buf, []byte("subscribed"))
	s.buf = append(s.buf, p...)
	if !before && bytes.Contains(s.buf, []byte("subscribed")) {
		close(s.said)
	}
	return len(p), nil
}

func (s *subscription) text() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return string(s.buf)
}

// waitFor polls node n's status until cond holds.
func (c *cluster) waitFor(n, what string, timeout time.Duration, cond func(*node.ResourceStatus) bool) *node.ResourceStatus {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		st := c.status(n)
		if cond(st) {
			return st
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("%s: not within %v; status of %s: %+v", what, timeout, n, st)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitPeerRole waits until node n sees peer connected in role: a node
// learns a peer's demotion from a state-change frame, and promoting before
// it arrived is refused.
func (c *cluster) waitPeerRole(n, peer, role string) {
	c.t.Helper()
	c.waitFor(n, peer+" seen as "+role, 30*time.Second, func(st *node.ResourceStatus) bool {
		p := c.peer(st, peer)
		return p.Conn == "Connected" && p.Role == role
	})
}

// shortTimeouts makes peers give up on each other after a second.
func shortTimeouts(src string) string {
	return strings.Replace(src, `shared_secret = "demo-secret"`,
		`shared_secret = "demo-secret"
    ping_interval = "500ms"
    timeout       = "1s"
    connect_retry = "200ms"`, 1)
}

// TestClusterHungPeer: a protocol C peer that stops answering (SIGSTOP: its
// sockets stay open, as with a cut network link) costs the application
// only the timeout; the primary marks its blocks and goes on, and after
// SIGCONT the peer reconnects and resyncs.
func TestClusterHungPeer(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 64<<20, shortTimeouts)
	c.startInSync()

	bravo := c.procs["bravo"]
	if err := bravo.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer bravo.Process.Signal(syscall.SIGCONT)
	client, err := nbd.Dial(context.Background(), c.node("alpha").Export, "r0")
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	start := time.Now()
	buf := bytes.Repeat([]byte{0xA5}, 64<<10)
	for i := 0; i < 64; i++ {
		if err := client.WriteAt(buf, int64(i)*int64(len(buf)), false); err != nil {
			t.Fatal(err)
		}
	}
	if err := client.Flush(); err != nil {
		t.Fatal(err)
	}
	// Generous bound against the 1 s timeout: the race detector and a
	// noisy machine slow everything, but a hang would take forever.
	if el := time.Since(start); el > 20*time.Second {
		t.Fatalf("writes took %v with a hung protocol C peer; the timeout is 1s", el)
	}
	st := c.waitFor("alpha", "bravo marked out of sync", 30*time.Second, func(st *node.ResourceStatus) bool {
		return c.peer(st, "bravo").OutOfSync > 0
	})
	if p := c.peer(st, "bravo"); p.Conn == "Connected" {
		t.Fatalf("bravo still connected while stopped: %+v", p)
	}
	bravo.Process.Signal(syscall.SIGCONT)
	c.settleAndCompare()
}

// TestClusterWrongSecret: a node configured with another shared secret is
// refused, and both logs say why.
func TestClusterWrongSecret(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 16<<20)
	wrong := filepath.Join(c.dir, "conf-wrong")
	c.writeConf(wrong, bytes.Replace(c.src, []byte(`"demo-secret"`), []byte(`"not-the-secret"`), 1))
	c.confOf["bravo"] = wrong
	c.start("alpha")
	c.start("bravo")
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(c.log("alpha"), "authentication failed") || !strings.Contains(c.log("bravo"), "authentication failed") {
		if time.Now().After(deadline) {
			t.Fatalf("no authentication failure logged\nalpha:\n%s\nbravo:\n%s", c.log("alpha"), c.log("bravo"))
		}
		time.Sleep(100 * time.Millisecond)
	}
	if p := c.peer(c.status("alpha"), "bravo"); p.Conn == "Connected" {
		t.Fatalf("bravo connected with the wrong secret: %+v", p)
	}
}

// TestClusterSwitchover: a clean role change; the new primary replicates
// to both others (the mesh is full), and all disks end equal.
func TestClusterSwitchover(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 32<<20)
	c.startInSync()
	write := func(n string, fill byte) {
		client, err := nbd.Dial(context.Background(), c.node(n).Export, "r0")
		if err != nil {
			t.Fatal(err)
		}
		defer client.Close()
		for i := int64(0); i < 32; i++ {
			if err := client.WriteAt(bytes.Repeat([]byte{fill + byte(i)}, 8192), i*128<<10, false); err != nil {
				t.Fatal(err)
			}
		}
		if err := client.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	write("alpha", 1)
	c.cli("alpha", "wait-sync", "--timeout", "1m", "r0")
	c.cli("alpha", "secondary", "r0")
	c.waitPeerRole("bravo", "alpha", "Secondary")
	c.cli("bravo", "primary", "r0")
	write("bravo", 100)
	c.cli("bravo", "wait-sync", "--timeout", "1m", "r0")
	st := c.status("bravo")
	for _, p := range st.Peers {
		if p.Conn != "Connected" || p.Disk != "UpToDate" {
			t.Fatalf("after switch-over, peer %s of the new primary: %+v", p.Name, p)
		}
	}
	c.cli("bravo", "secondary", "r0")
	c.waitPeerRole("alpha", "bravo", "Secondary")
	c.cli("alpha", "primary", "r0")
	c.settleAndCompare()
}

// TestClusterCLI: the operator's verbs around a running pair of nodes.
func TestClusterCLI(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 16<<20)
	c.start("alpha")
	c.start("bravo")

	// The daemon re-executed itself to keep the runtime's monitor awake.
	if g := daemonGodebug(t, c.procs["alpha"].Process.Pid); !strings.Contains(g, sysmonAwake) {
		t.Fatalf("the daemon runs with GODEBUG=%q, without %s", g, sysmonAwake)
	}

	// A second daemon for the same admin socket refuses to start.
	out, err := exec.Command(georeplBin, "daemon", "--config", c.conf, "--node", "alpha", "--admin", c.adminSock("alpha")).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "already running") {
		t.Fatalf("a second daemon for alpha started or did not say why: %v\n%s", err, out)
	}
	// create-md refuses to overwrite metadata without --force.
	if out, err := c.cliErr("", "create-md", "--config", c.conf, "--node", "dr", "r0"); err == nil {
		t.Fatalf("create-md overwrote existing metadata:\n%s", out)
	}

	// events streams state changes as JSON lines.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ev, evOut := c.events(ctx, "alpha")
	c.cli("alpha", "primary", "--force", "r0")
	c.waitFor("alpha", "bravo in sync", time.Minute, func(st *node.ResourceStatus) bool {
		p := c.peer(st, "bravo")
		return p.Repl == "Established" && p.Disk == "UpToDate"
	})
	cancel()
	ev.Wait()
	var sawRole bool
	for _, line := range strings.Split(strings.TrimSpace(evOut.String()), "\n") {
		var e node.Event
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("events printed a line that is not JSON: %q", line)
		}
		if e.What == "role" && e.New == "Primary" {
			sawRole = true
		}
	}
	if !sawRole {
		t.Errorf("events did not report the promotion:\n%s", evOut.String())
	}

	proc := c.cli("alpha", "status", "--proc", "r0")
	if !strings.Contains(proc, "cs:Connected ro:Primary/Secondary ds:UpToDate/UpToDate C") || !strings.Contains(proc, "oos:0") {
		t.Errorf("status --proc:\n%s", proc)
	}
	md := c.cli("alpha", "dump-md", "r0")
	if !strings.Contains(md, "r0") {
		t.Errorf("dump-md through the daemon:\n%s", md)
	}
	// Offline dump-md cannot open a disk the daemon holds, and says so.
	if out, err := c.cliErr("", "dump-md", "--config", c.conf, "--node", "alpha", "r0"); err == nil || !strings.Contains(out, c.node("alpha").Disk) {
		t.Errorf("offline dump-md on a disk in use: %v\n%s", err, out)
	}
	// A secondary refuses promotion while another node is primary.
	if out, err := c.cliErr("bravo", "primary", "r0"); err == nil || !strings.Contains(out, "rimary") {
		t.Errorf("bravo became primary beside alpha, or did not say why: %v\n%s", err, out)
	}

	// The activity log: a write activates its extent (status shows it and
	// counts the transaction), and a clean down leaves the log empty.
	client, err := nbd.Dial(context.Background(), c.node("alpha").Export, "r0")
	if err != nil {
		t.Fatal(err)
	}
	if err := client.WriteAt(bytes.Repeat([]byte{7}, 4096), 5<<20, false); err != nil {
		t.Fatal(err)
	}
	if err := client.Flush(); err != nil {
		t.Fatal(err)
	}
	client.Close()
	c.waitFor("alpha", "an active extent in the status", 5*time.Second, func(st *node.ResourceStatus) bool {
		return st.ALExtents >= 1 && st.ALWrites >= 1
	})
	if proc := c.cli("alpha", "status", "--proc", "r0"); strings.Contains(proc, " al:0 ") {
		t.Errorf("status --proc counts no activity-log write:\n%s", proc)
	}
	c.cli("alpha", "secondary", "r0")
	c.cli("alpha", "down", "r0")
	var sum struct {
		ActivityLog []uint64 `json:"activity_log"`
	}
	js := c.cli("", "dump-md", "--json", "--config", c.conf, "--node", "alpha", "r0")
	if err := json.Unmarshal([]byte(js), &sum); err != nil || sum.ActivityLog == nil || len(sum.ActivityLog) != 0 {
		t.Errorf("activity log after a clean down: %v, %v\n%s", sum.ActivityLog, err, js)
	}
}

// pullAheadToDR gives the alpha–dr connection (protocol A) the smallest
// send buffer and congestion policy pull-ahead.
func pullAheadToDR(src string) string {
	return strings.Replace(src, `compression = "lz4"`, `compression = "lz4"
      max_buffer    = "64KiB"
      on_congestion = "pull-ahead"`, 1)
}

// TestClusterPullAhead: writes of 1 MiB to a protocol A peer whose buffer
// holds 64 KiB: with pull-ahead the primary goes Ahead of dr instead of
// making the application wait (events show it), catches dr up with a
// resync, and all three disks end identical.
func TestClusterPullAhead(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 64<<20, pullAheadToDR)
	c.startInSync()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ev, evOut := c.events(ctx, "alpha")
	client, err := nbd.Dial(context.Background(), c.node("alpha").Export, "r0")
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	buf := make([]byte, 1<<20)
	for i := range 32 {
		for j := range buf {
			buf[j] = byte(i*7 + j>>12)
		}
		if err := client.WriteAt(buf, int64(i)<<20, false); err != nil {
			t.Fatal(err)
		}
	}
	if err := client.Flush(); err != nil {
		t.Fatal(err)
	}
	c.cli("alpha", "wait-sync", "--timeout", "2m", "r0")
	cancel()
	ev.Wait()
	var ahead, caughtUp bool
	for _, line := range strings.Split(strings.TrimSpace(evOut.String()), "\n") {
		var e node.Event
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("events printed a line that is not JSON: %q", line)
		}
		if e.What == "repl" && e.Peer == "dr" && e.New == "Ahead" {
			ahead = true
		}
		if ahead && e.What == "repl" && e.Peer == "dr" && e.Old == "Ahead" && e.New == "SyncSource" {
			caughtUp = true
		}
	}
	if !ahead || !caughtUp {
		t.Fatalf("alpha did not go Ahead of dr and catch it up (ahead %v, caught up %v):\n%s", ahead, caughtUp, evOut.String())
	}
	c.settleAndCompare()
}

// slowResyncToBravo caps the resync from alpha to bravo at rate.
func slowResyncToBravo(rate string) func(string) string {
	return func(src string) string {
		i := strings.LastIndex(src, "}")
		return src[:i] + `
  connection "alpha" "bravo" {
    net {
      resync_rate = "` + rate + `"
    }
  }
}
`
	}
}

// TestClusterResyncPauseAndResume: the initial full sync to bravo, capped
// by resync_rate, interrupted part way, continues with what is left. Then
// a bitmap resync to bravo is paused part way (no more progress; status
// and --proc say so), interrupted by a disconnect while paused and
// reconnected: the pause holds across the reconnection, the new resync
// covers only what the first had left, not everything again, and once
// resumed it ends with identical disks.
func TestClusterResyncPauseAndResume(t *testing.T) {
	t.Parallel()
	const size = 24 << 20
	c := newCluster(t, size, slowResyncToBravo("2MiB"))
	for _, n := range demoNodes {
		c.start(n)
	}
	resync := func(st *node.ResourceStatus) *node.Resync { return c.peer(st, "bravo").Resync }
	c.cli("alpha", "primary", "--force", "r0")
	// The initial full sync, interrupted part way, continues after the
	// reconnection with what is left.
	c.waitFor("alpha", "the full sync to bravo under way", time.Minute, func(st *node.ResourceStatus) bool {
		rs := resync(st)
		return rs != nil && rs.DoneBytes > 0
	})
	c.cli("alpha", "disconnect", "r0", "bravo")
	st := c.waitFor("alpha", "bravo disconnected", time.Minute, func(st *node.ResourceStatus) bool {
		return c.peer(st, "bravo").Conn != "Connected"
	})
	left := c.peer(st, "bravo").OutOfSync
	c.cli("alpha", "connect", "r0", "bravo")
	st = c.waitFor("alpha", "the full sync to bravo again", time.Minute, func(st *node.ResourceStatus) bool {
		return resync(st) != nil || c.peer(st, "bravo").Repl == "Established"
	})
	if rs := resync(st); rs == nil || rs.TotalBytes > left || left >= st.Size {
		t.Fatalf("after an interruption the full sync starts again with %+v; %d of %d bytes were left", rs, left, st.Size)
	}
	c.cli("alpha", "wait-sync", "--timeout", "2m", "r0")

	// bravo misses 16 MiB of writes.
	c.cli("alpha", "disconnect", "r0", "bravo")
	client, err := nbd.Dial(context.Background(), c.node("alpha").Export, "r0")
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	buf := make([]byte, 1<<20)
	for i := range 16 {
		for j := range buf {
			buf[j] = byte(i + j>>9)
		}
		if err := client.WriteAt(buf, int64(i)<<20, false); err != nil {
			t.Fatal(err)
		}
	}
	if err := client.Flush(); err != nil {
		t.Fatal(err)
	}
	c.cli("alpha", "connect", "r0", "bravo")
	st = c.waitFor("alpha", "a resync to bravo", time.Minute, func(st *node.ResourceStatus) bool { return resync(st) != nil })
	total1 := resync(st).TotalBytes
	if total1 < 16<<20 {
		t.Fatalf("the resync covers %d bytes; 16 MiB were written", total1)
	}

	st = c.waitFor("alpha", "the resync under way", 2*time.Minute, func(st *node.ResourceStatus) bool {
		rs := resync(st)
		return rs == nil || rs.DoneBytes > 0
	})
	if rs := resync(st); rs == nil || rs.Limit <= 0 || rs.Limit > 2<<20 {
		t.Fatalf("the resync ended early or status shows no 2 MiB/s limit: %+v", rs)
	}
	c.cli("alpha", "pause-sync", "r0", "bravo")
	time.Sleep(500 * time.Millisecond) // what was in flight lands
	before := resync(c.status("alpha"))
	time.Sleep(time.Second)
	st = c.status("alpha")
	after := resync(st)
	if before == nil || after == nil || after.DoneBytes != before.DoneBytes || after.DoneBytes >= total1 || after.DoneBytes == 0 || !c.peer(st, "bravo").ResyncPaused {
		t.Fatalf("paused resync moved, ended, or status does not say paused: before %+v after %+v", before, after)
	}
	if proc := c.cli("alpha", "status", "--proc", "r0"); !strings.Contains(proc, "cs:PausedSyncS") || !strings.Contains(proc, "r--u--") {
		t.Errorf("status --proc does not show the paused resync:\n%s", proc)
	}

	c.cli("alpha", "disconnect", "r0", "bravo")
	st = c.waitFor("alpha", "bravo disconnected", time.Minute, func(st *node.ResourceStatus) bool {
		return c.peer(st, "bravo").Conn != "Connected"
	})
	remaining := c.peer(st, "bravo").OutOfSync
	c.cli("alpha", "connect", "r0", "bravo")
	st = c.waitFor("alpha", "the resync to bravo again", time.Minute, func(st *node.ResourceStatus) bool {
		return resync(st) != nil
	})
	total2 := resync(st).TotalBytes
	t.Logf("first resync: %d bytes, %d done at the pause; then %d bytes out of sync; second resync: %d bytes", total1, after.DoneBytes, remaining, total2)
	if total2 > remaining || remaining > total1-after.DoneBytes || total2 == 0 {
		t.Errorf("the resync after the reconnect covers %d bytes; %d were left (%d of %d were done at the disconnect)", total2, remaining, after.DoneBytes, total1)
	}
	time.Sleep(time.Second)
	if rs := resync(c.status("alpha")); rs == nil || rs.DoneBytes != 0 {
		t.Fatalf("the pause did not hold across the reconnection: %+v", rs)
	}
	c.cli("alpha", "resume-sync", "r0", "bravo")
	c.settleAndCompare()
}

// TestClusterCongestionDisconnect: with on_congestion = "disconnect", 1 MiB
// writes to dr (protocol A, 64 KiB buffer) drop its connection instead of
// waiting (the log says why); dr comes back by itself and is
// resynchronised, and all three disks end identical.
func TestClusterCongestionDisconnect(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 64<<20, func(src string) string {
		return strings.Replace(pullAheadToDR(src), `"pull-ahead"`, `"disconnect"`, 1)
	}, shortTimeouts)
	c.startInSync()
	client, err := nbd.Dial(context.Background(), c.node("alpha").Export, "r0")
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	buf := bytes.Repeat([]byte{0x5A}, 1<<20)
	for i := range 16 {
		if err := client.WriteAt(buf, int64(i)<<20, false); err != nil {
			t.Fatal(err)
		}
	}
	if err := client.Flush(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(c.log("alpha"), "peer congested") {
		t.Fatalf("alpha's log does not show the congested connection dropped:\n%s", c.log("alpha"))
	}
	c.settleAndCompare()
}
