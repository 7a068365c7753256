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
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/georepl/georepl/cmd/georepl/internal/node"
	"github.com/georepl/georepl/configs"
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
	rc    *configs.Resource
	procs map[string]*exec.Cmd
}

func newCluster(t *testing.T, size int64) *cluster {
	t.Helper()
	dir := t.TempDir()
	port, err := freePortBlock(3)
	if err != nil {
		t.Fatal(err)
	}
	c := &cluster{t: t, dir: dir, conf: filepath.Join(dir, "conf"), procs: map[string]*exec.Cmd{}}
	if err := os.MkdirAll(c.conf, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(c.conf, "r0.hcl"), configs.Demo(dir, port), 0o644); err != nil {
		t.Fatal(err)
	}
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
	return string(out), err
}

func (c *cluster) start(n string) {
	c.t.Helper()
	logf, err := os.OpenFile(filepath.Join(c.dir, n+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		c.t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(georeplBin, "daemon", "--config", c.conf, "--node", n, "--admin", c.adminSock(n), "--up")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	c.procs[n] = cmd
	deadline := time.Now().Add(30 * time.Second)
	for {
		st, err := c.statusErr(n)
		if err == nil && st.Up {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("%s did not come up: %v\n%s", n, err, c.log(n))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (c *cluster) log(n string) string {
	b, _ := os.ReadFile(filepath.Join(c.dir, n+".log"))
	return string(b)
}

func (c *cluster) kill(n string) {
	cmd := c.procs[n]
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	delete(c.procs, n)
}

func (c *cluster) stopAll() {
	for n, cmd := range c.procs {
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		delete(c.procs, n)
		if c.t.Failed() {
			c.t.Logf("log of %s:\n%s", n, c.log(n))
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
	requireTool(t, "fio", "fio")
	const size = 128 << 20
	c := newCluster(t, size)
	for _, n := range demoNodes {
		c.start(n)
	}
	c.cli("alpha", "primary", "--force", "r0")
	c.cli("alpha", "wait-sync", "--timeout", "2m", "r0")

	if out, err := c.cliErr("bravo", "primary", "r0"); err == nil {
		t.Fatalf("bravo became primary while alpha is: %s", out)
	}

	fio := exec.Command("fio", "--name=kill", "--ioengine=nbd", "--uri="+c.exportURI(),
		"--rw=randwrite", "--bs=4k", "--size=48M", "--offset=0", "--iodepth=16",
		"--verify=crc32c", "--do_verify=1", "--randrepeat=0", "--output-format=terse")
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
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, georeplBin, "demo", "--size", "128MiB").CombinedOutput()
	if err != nil {
		t.Fatalf("georepl demo: %v\n%s", err, out)
	}
	for _, want := range []string{"byte-identical", "resynchronised"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
}
