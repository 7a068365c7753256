package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/georepl/georepl/cmd/georepl/internal/admin"
	"github.com/georepl/georepl/cmd/georepl/internal/checker"
	"github.com/georepl/georepl/cmd/georepl/internal/node"
	"github.com/georepl/georepl/configs"
	"github.com/georepl/georepl/kmod"
	"github.com/georepl/georepl/kmod/nbd"
)

func demoCmd() *cobra.Command {
	var dir string
	var keep bool
	var sizeStr string
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run a three-node cluster on loopback and show replication, failure and resync",
		Long: `Start three nodes on 127.0.0.1 with file-backed disks in a temporary folder: alpha is
primary; bravo gets protocol C over TCP; dr gets protocol A over QUIC with LZ4; every
connection runs TLS with certificates made as 'georepl tls init' makes them. Write a
workload through alpha's NBD export, show status and resync progress, kill bravo with
SIGKILL and bring it back (what was written while it was gone resyncs, and the extents of
its activity log: the demo sets al_extents = 16). The nodes run under failover { mode =
"auto" }: the demo then kills alpha, the Primary, and bravo is promoted without an
operator, serving every write alpha acknowledged; alpha comes back as Secondary. At the
end the three disks must be byte-identical. Needs no configuration; exits non-zero if
anything fails.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			size, err := configs.ParseSize(sizeStr)
			if err != nil {
				return fmt.Errorf("--size: %w", err)
			}
			if dir == "" {
				if dir, err = os.MkdirTemp("", "georepl-demo-"); err != nil {
					return err
				}
				if !keep {
					defer os.RemoveAll(dir)
				}
			}
			d := &demo{out: cmd.OutOrStdout(), dir: dir, size: size, procs: map[string]*exec.Cmd{}}
			defer d.stopAll()
			return d.run(cmd.Context())
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "", "folder for disks, sockets and logs (default: a new temporary folder)")
	cmd.Flags().BoolVar(&keep, "keep", false, "keep the temporary folder")
	cmd.Flags().StringVar(&sizeStr, "size", "256MiB", "size of each disk")
	return cmd
}

type demo struct {
	out   io.Writer
	dir   string
	size  int64
	conf  string
	cfg   *configs.Config
	procs map[string]*exec.Cmd
}

var demoNodes = []string{"alpha", "bravo", "dr"}

func (d *demo) step(format string, args ...any) {
	fmt.Fprintf(d.out, "\n==> "+format+"\n", args...)
}

func (d *demo) run(ctx context.Context) error {
	// Three replication ports, then three consensus ports.
	port, err := checker.FreePorts(6)
	if err != nil {
		return err
	}
	d.conf = filepath.Join(d.dir, "conf")
	if err := os.MkdirAll(d.conf, 0o755); err != nil {
		return err
	}
	tlsDir := filepath.Join(d.dir, "tls")
	src, err := withDemoActivityLog(configs.DemoAutoFailover(d.dir, port, tlsDir, port+3))
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(d.conf, "r0.hcl"), src, 0o644); err != nil {
		return err
	}
	if d.cfg, err = loadConfig(d.conf); err != nil {
		return fmt.Errorf("demo configuration: %w", err)
	}
	rc, err := d.cfg.Resource("r0")
	if err != nil {
		return err
	}
	d.step("three nodes on loopback, disks of %s in %s", configs.FormatSize(d.size), d.dir)
	fmt.Fprintf(d.out, "%s", src)
	d.step("georepl tls init --config %s --out %s: a CA and a certificate per node; every connection runs TLS", d.conf, tlsDir)
	if err := tlsInit(d.cfg, tlsDir, 24*time.Hour, time.Now(), io.Discard); err != nil {
		return fmt.Errorf("tls init: %w", err)
	}

	for _, n := range demoNodes {
		self, _ := rc.Node(n)
		if err := kmod.CreateFile(self.Disk, d.size); err != nil {
			return err
		}
		if _, err := node.CreateMetadata(rc, self, false); err != nil {
			return err
		}
		if err := d.start(ctx, n); err != nil {
			return err
		}
	}

	d.step("alpha becomes primary (--force: a new resource has no UpToDate copy yet); initial full sync")
	if err := d.call(ctx, "alpha", admin.Request{Verb: "primary", Resource: "r0", Force: true}); err != nil {
		return err
	}
	if err := d.waitSync(ctx, "alpha"); err != nil {
		return err
	}
	if err := d.printStatus(ctx, "alpha"); err != nil {
		return err
	}

	self, _ := rc.Node("alpha")
	exportSpec := self.Export
	d.step("writing a workload through alpha's NBD export (%s)", exportSpec)
	client, err := nbd.Dial(ctx, exportSpec, "r0")
	if err != nil {
		return err
	}
	defer client.Close()
	rng := rand.New(rand.NewPCG(1, 2))
	// The data area is the disk less the metadata at its end.
	half := uint64(client.Size()) / 2 / 4096 * 4096
	if err := d.workload(ctx, client, rng, 64<<20, 0, half); err != nil {
		return err
	}
	if err := d.printStatus(ctx, "alpha"); err != nil {
		return err
	}

	d.step("killing bravo (SIGKILL) and writing while it is gone")
	if err := d.kill("bravo"); err != nil {
		return err
	}
	// alpha must have noticed before bravo returns: otherwise the status
	// below, and the wait for the resync, would see the old connection.
	if err := d.waitPeer(ctx, "alpha", "bravo", func(p node.PeerStatus) bool { return p.Conn != "Connected" }); err != nil {
		return err
	}
	if err := d.workload(ctx, client, rng, 8<<20, half, half+min(half, 32<<20)); err != nil {
		return err
	}
	if err := d.printStatus(ctx, "alpha"); err != nil {
		return err
	}

	d.step("bringing bravo back: what was written while it was gone resyncs, and the extents of bravo's\n" +
		"    activity log (killed, bravo cannot tell which of its last writes reached its disk)")
	if err := d.start(ctx, "bravo"); err != nil {
		return err
	}
	last, err := d.watchResync(ctx, "alpha", "bravo")
	if err != nil {
		return err
	}
	fmt.Fprintf(d.out, "bravo resynchronised %s of %s\n  %s\n", node.HumanBytes(last.Bytes), node.HumanBytes(uint64(d.size)), last.Reason)

	if err := client.Flush(); err != nil {
		return err
	}
	client.Close()
	sts, err := d.status(ctx, "alpha")
	if err != nil {
		return err
	}
	dataSize := sts[0].Size
	if client, err = d.failover(ctx, rc, dataSize); err != nil {
		return err
	}
	defer client.Close()
	if err := d.workload(ctx, client, rng, 8<<20, 0, half); err != nil {
		return err
	}

	d.step("bringing alpha back: it learns the newer term and returns as Secondary, and what bravo\n" +
		"    wrote since resyncs to it")
	if err := d.start(ctx, "alpha"); err != nil {
		return err
	}
	if last, err = d.watchResync(ctx, "bravo", "alpha"); err != nil {
		return err
	}
	fmt.Fprintf(d.out, "alpha resynchronised %s of %s\n  %s\n", node.HumanBytes(last.Bytes), node.HumanBytes(uint64(d.size)), last.Reason)
	if err := d.printStatus(ctx, "bravo"); err != nil {
		return err
	}

	d.step("flushing, draining the async peer, and comparing the three disks")
	if err := client.Flush(); err != nil {
		return err
	}
	client.Close()
	if err := d.waitSync(ctx, "bravo"); err != nil {
		return err
	}
	if err := d.call(ctx, "bravo", admin.Request{Verb: "secondary", Resource: "r0"}); err != nil {
		return err
	}
	for _, n := range demoNodes {
		if err := d.call(ctx, n, admin.Request{Verb: "down", Resource: "r0"}); err != nil {
			return err
		}
	}
	sums := map[string][32]byte{}
	for _, n := range demoNodes {
		self, _ := rc.Node(n)
		sum, err := hashPrefix(self.Disk, int64(dataSize))
		if err != nil {
			return err
		}
		sums[n] = sum
		fmt.Fprintf(d.out, "%-6s %x\n", n, sum[:12])
	}
	if sums["alpha"] != sums["bravo"] || sums["alpha"] != sums["dr"] {
		return errors.New("the disks differ: replication lost data (logs are in " + d.dir + ")")
	}
	fmt.Fprintf(d.out, "\nall three disks are byte-identical (%s of data each)\n", node.HumanBytes(dataSize))
	return nil
}

// failover kills alpha, the Primary, with no write in flight, waits for
// the consensus log to promote bravo, and checks that bravo serves what
// alpha held: every write alpha acknowledged. It returns a client of
// bravo's export.
func (d *demo) failover(ctx context.Context, rc *configs.Resource, dataSize uint64) (*nbd.Client, error) {
	d.step("killing alpha, the Primary (SIGKILL): under failover { mode = \"auto\" } the consensus log\n" +
		"    promotes bravo, UpToDate under protocol C, without an operator (dr, auto_promote = false, stays Secondary)")
	if err := d.kill("alpha"); err != nil {
		return nil, err
	}
	killed := time.Now()
	alpha, _ := rc.Node("alpha")
	held, err := hashPrefix(alpha.Disk, int64(dataSize))
	if err != nil {
		return nil, err
	}
	var st *node.ResourceStatus
	lastPrint := time.Time{}
	// Service is back once bravo is Primary with its writes no longer
	// held: the log has vouched for it (its lease).
	for st == nil || st.Role != "Primary" || st.Failover == nil || st.Failover.WritesHeld {
		if time.Since(killed) > 5*time.Minute {
			return nil, fmt.Errorf("bravo was not promoted within 5 minutes of alpha's death (logs in %s)", d.dir)
		}
		time.Sleep(20 * time.Millisecond)
		sts, err := d.status(ctx, "bravo")
		if err != nil {
			return nil, err
		}
		st = sts[0]
		if time.Since(lastPrint) >= 500*time.Millisecond {
			lastPrint = time.Now()
			fmt.Fprintf(d.out, "%5.1fs bravo: %s; %s\n", time.Since(killed).Seconds(), st.Role, demoFailoverLine(st.Failover))
		}
	}
	took := time.Since(killed)
	fmt.Fprintf(d.out, "bravo promoted automatically and accepting writes %v after alpha was killed (detection_timeout 1s); %s\n",
		took.Round(10*time.Millisecond), demoFailoverLine(st.Failover))
	if err := d.printStatus(ctx, "bravo"); err != nil {
		return nil, err
	}
	bravo, _ := rc.Node("bravo")
	client, err := nbd.Dial(ctx, bravo.Export, "r0")
	if err != nil {
		return nil, err
	}
	served, err := hashExport(client, dataSize)
	if err != nil {
		client.Close()
		return nil, err
	}
	if served != held {
		client.Close()
		return nil, fmt.Errorf("bravo's export (sha256 %x) differs from what alpha held when it was killed (%x): acknowledged writes lost (logs in %s)", served[:12], held[:12], d.dir)
	}
	fmt.Fprintf(d.out, "bravo serves every write alpha acknowledged: sha256 %x of the %s data area, on alpha's disk and through bravo's export\n",
		served[:12], node.HumanBytes(dataSize))
	d.step("writing through bravo's export: the service goes on")
	return client, nil
}

// demoFailoverLine is a node's view of the consensus log.
func demoFailoverLine(f *node.FailoverStatus) string {
	if f == nil {
		return "no failover log"
	}
	s := fmt.Sprintf("the log names %s in failover term %d", f.Holder, f.Term)
	if f.Leader != "" {
		s += ", its leader " + f.Leader
	}
	return s
}

// hashExport reads the first n bytes of an NBD export and returns their
// sha256.
func hashExport(c *nbd.Client, n uint64) ([32]byte, error) {
	h := sha256.New()
	buf := make([]byte, 1<<20)
	for off := uint64(0); off < n; off += uint64(len(buf)) {
		b := buf[:min(uint64(len(buf)), n-off)]
		if _, err := c.ReadAt(b, int64(off)); err != nil {
			return [32]byte{}, fmt.Errorf("reading the export at %d: %w", off, err)
		}
		h.Write(b)
	}
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	return sum, nil
}

func (d *demo) adminSock(n string) string { return filepath.Join(d.dir, n+".admin.sock") }

func (d *demo) start(ctx context.Context, n string) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	logf, err := os.OpenFile(filepath.Join(d.dir, n+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	c := exec.Command(exe, "daemon", "--config", d.conf, "--node", n, "--admin", d.adminSock(n), "--up")
	c.Stdout, c.Stderr = logf, logf
	if err := c.Start(); err != nil {
		logf.Close()
		return err
	}
	logf.Close()
	d.procs[n] = c
	fmt.Fprintf(d.out, "started %s (pid %d, log %s)\n", n, c.Process.Pid, filepath.Join(d.dir, n+".log"))
	deadline := time.Now().Add(20 * time.Second)
	for {
		sts, err := d.status(ctx, n)
		if err == nil && sts[0].Up {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not come up: %v (see %s.log)", n, err, filepath.Join(d.dir, n))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (d *demo) kill(n string) error {
	c := d.procs[n]
	if err := c.Process.Signal(syscall.SIGKILL); err != nil {
		return err
	}
	c.Wait()
	delete(d.procs, n)
	return nil
}

func (d *demo) stopAll() {
	for n, c := range d.procs {
		checker.Stop(c, 10*time.Second)
		delete(d.procs, n)
	}
}

func (d *demo) call(ctx context.Context, n string, req admin.Request) error {
	return admin.Call(ctx, d.adminSock(n), req, func(admin.Reply) error { return nil })
}

func (d *demo) status(ctx context.Context, n string) ([]*node.ResourceStatus, error) {
	var sts []*node.ResourceStatus
	err := admin.Call(ctx, d.adminSock(n), admin.Request{Verb: "status", Resource: "r0"}, func(r admin.Reply) error {
		return json.Unmarshal(r.Data, &sts)
	})
	return sts, err
}

func (d *demo) printStatus(ctx context.Context, n string) error {
	sts, err := d.status(ctx, n)
	if err != nil {
		return err
	}
	node.WriteStatus(d.out, sts)
	return nil
}

// waitSync waits until node n and its peers are UpToDate with nothing
// unacknowledged (as `georepl wait-sync`), printing progress once a second.
func (d *demo) waitSync(ctx context.Context, n string) error {
	deadline := time.Now().Add(5 * time.Minute)
	lastPrint := time.Time{}
	for {
		sts, err := d.status(ctx, n)
		if err != nil {
			return err
		}
		done, lines := syncState(sts[0])
		if time.Since(lastPrint) >= time.Second || done {
			for _, l := range lines {
				fmt.Fprintln(d.out, l)
			}
			lastPrint = time.Now()
		}
		if done {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no sync after 5 minutes (logs in %s)", d.dir)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// watchResync waits for node n's resync towards peer and returns the bytes
// the resync moved.
// watchResync prints n's view of the resync to peer until peer is in
// sync again, and returns what the resync moved and why. The caller made
// sure n saw peer go first, so the peer in sync is the returned one.
func (d *demo) watchResync(ctx context.Context, n, peer string) (*node.LastResync, error) {
	var last *node.LastResync
	lastPrint := time.Time{}
	err := d.waitPeer(ctx, n, peer, func(p node.PeerStatus) bool {
		if time.Since(lastPrint) >= 500*time.Millisecond {
			fmt.Fprintf(d.out, "%s: %s %s %s, %s out of sync\n", peer, p.Conn, p.Repl, p.Disk, node.HumanBytes(p.OutOfSync))
			lastPrint = time.Now()
		}
		last = p.LastResync
		return p.Conn == "Connected" && p.Repl == "Established" && p.Disk == "UpToDate" && p.OutOfSync == 0 && last != nil
	})
	return last, err
}

// waitPeer polls n's status until cond holds for peer, for at most 5
// minutes.
func (d *demo) waitPeer(ctx context.Context, n, peer string, cond func(node.PeerStatus) bool) error {
	deadline := time.Now().Add(5 * time.Minute)
	for {
		sts, err := d.status(ctx, n)
		if err != nil {
			return err
		}
		for _, p := range sts[0].Peers {
			if p.Name == peer && cond(p) {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: %s not as expected within 5 minutes (logs in %s)", n, peer, d.dir)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// workload writes total bytes in [lo, hi) with a mix of block sizes and
// content (text-like, compressible; and random), with a flush every 4 MiB.
func (d *demo) workload(ctx context.Context, c *nbd.Client, rng *rand.Rand, total, lo, hi uint64) error {
	start := time.Now()
	var written, sinceFlush uint64
	text := bytes.Repeat([]byte("georepl replicates every write to every peer. "), 1500)
	for written < total {
		bs := uint64(4096) << rng.IntN(5) // 4 KiB .. 64 KiB
		off := lo + rng.Uint64N((hi-lo-bs)/4096)*4096
		buf := make([]byte, bs)
		if rng.IntN(2) == 0 {
			copy(buf, text[rng.IntN(1000):])
		} else {
			for i := range buf {
				buf[i] = byte(rng.Uint32())
			}
		}
		if err := c.WriteAt(buf, int64(off), false); err != nil {
			return err
		}
		written += bs
		sinceFlush += bs
		if sinceFlush >= 4<<20 {
			if err := c.Flush(); err != nil {
				return err
			}
			sinceFlush = 0
		}
	}
	el := time.Since(start)
	fmt.Fprintf(d.out, "wrote %s in %v (%s/s)\n", node.HumanBytes(written), el.Round(time.Millisecond),
		node.HumanBytes(uint64(float64(written)/el.Seconds())))
	return nil
}

func hashPrefix(path string, n int64) ([32]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return [32]byte{}, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.CopyN(h, f, n); err != nil {
		return [32]byte{}, fmt.Errorf("reading %s: %w", path, err)
	}
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	return sum, nil
}

// demoALExtents is the demo's activity log: 16 extents of 4 MiB. With the
// default (1024 extents, 4 GiB) a killed secondary would resync the whole
// of the demo's small disk when it comes back.
const demoALExtents = 16

// withDemoActivityLog adds a disk block with demoALExtents to the demo
// configuration, before its net block; an error if it has none.
func withDemoActivityLog(src []byte) ([]byte, error) {
	const net = "\n  net {"
	if !bytes.Contains(src, []byte(net)) {
		return nil, errors.New("demo configuration: no net block to put the disk block before")
	}
	disk := fmt.Sprintf("\n  disk {\n    # small, so that the killed node's return resyncs little of the small disks\n    al_extents = %d\n  }\n%s", demoALExtents, net)
	return bytes.Replace(src, []byte(net), []byte(disk), 1), nil
}
