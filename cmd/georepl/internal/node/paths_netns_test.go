package node

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
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
// link comes back and the probes find the path again.
func TestPathFailoverNetns(t *testing.T) {
	rig := newNetnsRig(t)
	builtin.Register()
	dir := t.TempDir()
	src := fmt.Sprintf(`resource "r0" {
  protocol = "C"
  net {
    transport = "tcp"
    insecure = true
    connect_retry = "100ms"
    ping_interval = "200ms"
    timeout = "1s"
  }
  node "alpha" {
    id = 0
    address = "10.213.1.1:7789"
    disk = %q
  }
  node "dr" {
    id = 1
    address = "10.213.1.2:7789"
    disk = %q
  }
  connection "alpha" "dr" {
    path {
      alpha = "10.213.1.1:7789"
      dr    = "10.213.1.2:7789"
    }
    path {
      alpha = "10.213.2.1:7789"
      dr    = "10.213.2.2:7789"
    }
  }
}
`, filepath.Join(dir, "alpha.img"), filepath.Join(dir, "dr.img"))
	conf := filepath.Join(dir, "r0.hcl")
	if err := os.WriteFile(conf, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := configs.Parse(conf, []byte(src), configs.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rc, _ := cfg.Resource("r0")
	for _, name := range []string{"alpha", "dr"} {
		self, _ := rc.Node(name)
		if err := os.WriteFile(self.Disk, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(self.Disk, 16<<20); err != nil {
			t.Fatal(err)
		}
		if _, err := CreateMetadata(rc, self, false); err != nil {
			t.Fatal(err)
		}
	}
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
	alpha, err := NewDaemon(cfg, "alpha", slog.New(slog.NewTextHandler(alphaLog, nil)), Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { alpha.Close() })
	if err := alpha.UpAll(); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "alpha connects to dr", func() (bool, string) {
		p := peerStatus(t, alpha, "dr")
		return p.Conn == "Connected", p.Conn + "\n" + drLog.String()
	})
	if err := alpha.resources["r0"].Primary(true); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "dr in sync", func() (bool, string) {
		p := peerStatus(t, alpha, "dr")
		return p.Repl == "Established" && p.Disk == "UpToDate" && p.OutOfSync == 0, fmt.Sprintf("%s %s %d", p.Repl, p.Disk, p.OutOfSync)
	})
	waitUntil(t, "both paths up", func() (bool, string) {
		p := peerStatus(t, alpha, "dr")
		return len(p.Paths) == 2 && p.Paths[0].State == "active" && p.Paths[1].State == "standby", fmt.Sprintf("%+v", p.Paths)
	})
	events, cancel := alpha.Subscribe()
	defer cancel()
	mark := len(alphaLog.String())
	drMark := len(drLog.String())

	dev, err := alpha.LocalDevice("r0")
	if err != nil {
		t.Fatal(err)
	}
	const writers, size = 4, 64 << 10
	var wg sync.WaitGroup
	var completed atomic.Int64
	stop := make(chan struct{})
	errs := make(chan error, writers)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 11))
			region := dev.Size() / writers
			for {
				select {
				case <-stop:
					return
				default:
				}
				buf := make([]byte, size)
				for i := range buf {
					buf[i] = byte(rng.Uint32())
				}
				if err := dev.WriteAt(context.Background(), buf, uint64(w)*region+rng.Uint64N(region/size)*size, false); err != nil {
					errs <- err
					return
				}
				completed.Add(1)
			}
		}()
	}
	time.Sleep(500 * time.Millisecond)
	before := completed.Load()
	rig.setLink(t, 0, "down")
	time.Sleep(4 * time.Second)
	during := completed.Load()
	rig.setLink(t, 0, "up")
	time.Sleep(time.Second)
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("a write failed: %v", err)
	}
	t.Logf("%d writes before the link went down, %d while it was down, %d in all", before, during-before, completed.Load())
	if during-before < 50 {
		t.Errorf("only %d writes completed while path 0's link was down", during-before)
	}
	waitUntil(t, "path 0 found again", func() (bool, string) {
		p := peerStatus(t, alpha, "dr")
		return len(p.Paths) == 2 && p.Paths[0].State == "standby" && p.Paths[1].State == "active", fmt.Sprintf("%+v", p.Paths)
	})
	p := peerStatus(t, alpha, "dr")
	if p.Conn != "Connected" || p.Repl != "Established" || p.Disk != "UpToDate" || p.OutOfSync != 0 {
		t.Errorf("dr on alpha: %s %s %s, %d bytes out of sync", p.Conn, p.Repl, p.Disk, p.OutOfSync)
	}
	sz := dev.Size()
	a, _ := os.ReadFile(filepath.Join(dir, "alpha.img"))
	b, _ := os.ReadFile(filepath.Join(dir, "dr.img"))
	if !bytes.Equal(a[:sz], b[:sz]) {
		t.Errorf("dr's data differs from alpha's")
	}
	moved := false
drain:
	for {
		select {
		case ev := <-events:
			switch ev.What {
			case "repl", "resync", "conn":
				t.Errorf("alpha: %s %s -> %s (%s): the failover cost the connection's state", ev.What, ev.Old, ev.New, ev.Detail)
			case "path":
				t.Logf("alpha: %s -> %s: %s", ev.Old, ev.New, ev.Detail)
				moved = moved || strings.HasPrefix(ev.New, "path 1 ")
			}
		default:
			break drain
		}
	}
	if !moved {
		t.Errorf("alpha did not move to path 1; its log:\n%s", alphaLog.String()[mark:])
	}
	if lost := strings.Count(drLog.String()[drMark:], "connection lost"); lost > 0 {
		t.Errorf("dr lost the connection; its log:\n%s", drLog.String()[drMark:])
	}
}
