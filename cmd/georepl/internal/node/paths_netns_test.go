package node

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/georepl/georepl/configs"
	"github.com/georepl/georepl/transports/builtin"
)

// netnsNodeEnv names, in the environment of this test binary run as a
// helper process, the configuration of the node it runs (netnsNode).
const netnsNodeEnv = "GEOREPL_TEST_NETNS_NODE_CONFIG"

func TestMain(m *testing.M) {
	if conf := os.Getenv(netnsNodeEnv); conf != "" {
		os.Exit(netnsNode(conf))
	}
	os.Exit(m.Run())
}

// netnsNode runs node dr of the configuration in conf until its standard
// input closes: the other end of TestPathFailoverNetns, in a network
// namespace of its own.
func netnsNode(conf string) int {
	builtin.Register()
	src, err := os.ReadFile(conf)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	cfg, err := configs.Parse(conf, src, configs.LoadOptions{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	d, err := NewDaemon(cfg, "dr", slog.New(slog.NewTextHandler(os.Stderr, nil)), Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := d.UpAll(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	io.Copy(io.Discard, os.Stdin)
	d.Close()
	return 0
}

// netnsRig is a network namespace joined to this one by two veth pairs,
// one per path: 10.213.1.0/24 and 10.213.2.0/24, .1 here, .2 there.
type netnsRig struct {
	ns   string
	host [2]string // the veth ends in this namespace
}

func newNetnsRig(t *testing.T) *netnsRig {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs ip (iproute2)")
	}
	id := os.Getpid() % 100000
	r := &netnsRig{ns: fmt.Sprintf("grp%d", id)}
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	run("netns", "add", r.ns)
	t.Cleanup(func() {
		for _, h := range r.host {
			if h != "" {
				exec.Command("ip", "link", "del", h).Run()
			}
		}
		exec.Command("ip", "netns", "del", r.ns).Run()
	})
	run("-n", r.ns, "link", "set", "lo", "up")
	for i := range r.host {
		host, peer := fmt.Sprintf("gh%d_%d", id, i), fmt.Sprintf("gp%d_%d", id, i)
		run("link", "add", host, "type", "veth", "peer", "name", peer)
		r.host[i] = host
		run("link", "set", peer, "netns", r.ns)
		run("addr", "add", fmt.Sprintf("10.213.%d.1/24", i+1), "dev", host)
		run("-n", r.ns, "addr", "add", fmt.Sprintf("10.213.%d.2/24", i+1), "dev", peer)
		run("link", "set", host, "up")
		run("-n", r.ns, "link", "set", peer, "up")
	}
	return r
}

func (r *netnsRig) setLink(t *testing.T, i int, state string) {
	t.Helper()
	if out, err := exec.Command("ip", "link", "set", r.host[i], state).CombinedOutput(); err != nil {
		t.Fatalf("ip link set %s %s: %v: %s", r.host[i], state, err, out)
	}
}

// TestPathFailoverNetns runs dr in a network namespace of its own, two
// veth pairs away, and takes the active path's link down (ip link set
// down) under protocol C writes: the writes keep completing on the other
// path, the connection never drops, and dr's data equals alpha's. The
// link comes back, and the connection returns to it, its preferred path.
// Over tcp, tcp with TLS and quic with TLS.
func TestPathFailoverNetns(t *testing.T) {
	for _, s := range []pathSetup{{transport: "tcp"}, {transport: "tcp", tls: true}, {transport: "quic", tls: true}} {
		name := s.transport
		if s.tls {
			name += "-tls"
		}
		t.Run(name, func(t *testing.T) { testPathFailoverNetns(t, s) })
	}
}

func testPathFailoverNetns(t *testing.T, s pathSetup) {
	rig := newNetnsRig(t)
	builtin.Register()
	dir := t.TempDir()
	src := pathConfig(t, dir, s, [4]string{"10.213.1.1:7789", "10.213.1.2:7789", "10.213.2.1:7789", "10.213.2.2:7789"})
	conf := filepath.Join(dir, "r0.hcl")
	if err := os.WriteFile(conf, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := configs.Parse(conf, []byte(src), configs.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rc, _ := cfg.Resource("r0")
	newDisk(t, rc, "dr", 16<<20)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	drLog := &syncBuffer{}
	helper := exec.Command("ip", "netns", "exec", rig.ns, self)
	helper.Env = append(os.Environ(), netnsNodeEnv+"="+conf)
	helper.Stdout, helper.Stderr = drLog, drLog
	stdin, err := helper.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := helper.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		done := make(chan struct{})
		go func() { helper.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			helper.Process.Kill()
			<-done
		}
	})
	alphaLog := &syncBuffer{}
	alpha := startNode(t, cfg, "alpha", 16<<20, alphaLog, Options{}, nil)
	waitInSync(t, alpha, drLog.String)
	waitUntil(t, "both paths up", func() (bool, string) {
		p := peerStatus(t, alpha, "dr")
		return len(p.Paths) == 2 && p.Paths[0].State == "active" && p.Paths[1].State == "standby", fmt.Sprintf("%+v", p.Paths)
	})
	events := watchPaths(t, alpha)
	mark := len(alphaLog.String())
	drMark := len(drLog.String())
	since := func() string { return "alpha:\n" + alphaLog.String()[mark:] + "\ndr:\n" + drLog.String()[drMark:] }

	dev, err := alpha.LocalDevice("r0")
	if err != nil {
		t.Fatal(err)
	}
	load := startWrites(dev, 4, 64<<10)
	time.Sleep(500 * time.Millisecond)
	before := load.completed.Load()
	rig.setLink(t, 0, "down")
	// Protocol C: writes complete with path 0's link down only once the
	// connection continues on path 1. How many complete in a given time
	// is the machine's speed; that they go on is the point.
	downAt := time.Now()
	waitUntil(t, "50 writes completed with path 0's link down", func() (bool, string) {
		n := load.completed.Load() - before
		return n >= 50, fmt.Sprintf("%d writes completed since the link went down\n%s", n, since())
	})
	during := load.completed.Load()
	t.Logf("50 writes completed in %s with path 0's link down", time.Since(downAt).Round(time.Millisecond))
	rig.setLink(t, 0, "up")
	waitUntil(t, "the connection back on path 0", func() (bool, string) {
		p := peerStatus(t, alpha, "dr")
		return len(p.Paths) == 2 && p.Paths[0].State == "active" && p.Paths[1].State == "standby", fmt.Sprintf("%+v\n%s", p.Paths, since())
	})
	load.wait(t, 50, since)
	load.stop(t)
	t.Logf("%d writes before the link went down, %d while it was down, %d in all", before, during-before, load.completed.Load())
	checkSameData(t, alpha, dir, dev.Size())
	paths, details := events.moves("alpha")
	t.Logf("alpha moved to %q: %q", paths, details)
	if len(paths) != 2 || !strings.HasPrefix(paths[0], "path 1 ") || !strings.HasPrefix(paths[1], "path 0 ") {
		t.Errorf("alpha's path events lead to %q; want path 1, then path 0; its log:\n%s", paths, alphaLog.String()[mark:])
	}
	if lost := strings.Count(drLog.String()[drMark:], "connection lost"); lost > 0 {
		t.Errorf("dr lost the connection; its log:\n%s", drLog.String()[drMark:])
	}
}
