// Command georepl is the georepl daemon and its command-line interface.
//
// One binary: `georepl daemon` runs a node; every other verb talks to a
// running daemon over its admin socket (create-md, dump-md with --config,
// and validate work offline). `georepl --help` and `georepl VERB --help`
// explain each verb; docs/admin-guide.md is the manual.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	tea "github.com/charmbracelet/bubbletea"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/georepl/georepl/cmd/georepl/internal/admin"
	"github.com/georepl/georepl/cmd/georepl/internal/node"
	"github.com/georepl/georepl/cmd/georepl/internal/top"
	"github.com/georepl/georepl/configs"
	"github.com/georepl/georepl/core"
	"github.com/georepl/georepl/transports/builtin"
)

func main() {
	if err := rootCmd().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "georepl:", err)
		os.Exit(1)
	}
}

func rootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "georepl",
		Short: "Block-level geo-replication: one primary mirrors every write to several secondaries",
		Long: `georepl replicates a block device from one primary node to several secondaries,
each connection with its own write-ordering protocol (A async, B memory-ack, C sync),
over TCP, QUIC or a transport plugin, configured by HCL resource files identical on
every node.

Start a node with 'georepl daemon', then control it with the other verbs, which talk
to the daemon over its admin socket (--admin, default ` + admin.DefaultSocket + `,
or the GEOREPL_ADMIN environment variable).

Typical first start of a new resource r0 on every node:
  georepl create-md --config /etc/georepl --node NAME r0
  georepl daemon --config /etc/georepl --node NAME &
  georepl up r0
and on the node that holds the good data (or any node, for a new empty device):
  georepl primary --force r0
  georepl wait-sync r0`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().String("admin", defaultAdmin(), "admin socket of the daemon")
	root.AddCommand(daemonCmd(), createMDCmd(), dumpMDCmd(), validateCmd(), tlsCmd(),
		withLong(simpleVerb("up", "[RESOURCE|all]", "Attach the disk and start connecting to the peers", 0, 1),
			`Bring RESOURCE (default and "all": every resource of this node) up: open the backing disk
and its metadata (after an unclean shutdown, mark the activity log's extents out of sync;
finish an interrupted rollback of a resync undo log), open the export, and start
connecting to the peers. The node comes up Secondary.`),
		withLong(simpleVerb("down", "[RESOURCE|all]", "Disconnect and detach (the resource must be Secondary)", 0, 1),
			`Take RESOURCE (default and "all": every resource of this node) down: close the
connections, the export and the disk. Refused while the resource is Primary: run
'georepl secondary' first. 'georepl up' brings it back.`),
		primaryCmd(),
		withLong(simpleVerb("secondary", "RESOURCE", "Demote: close the export's clients, finish their writes, become Secondary", 1, 1),
			`Demote this node to Secondary for RESOURCE. The kernel device (device in the node block)
is detached first; while it is mounted or open the command is refused and names the
holder. Then the export's clients are disconnected and their outstanding writes finish.`),
		connectCmd(),
		withLong(peerVerbCmd("disconnect", "Close the connection to PEER (default: every peer) and stay StandAlone"),
			`Close the connection to PEER (default: every peer) of RESOURCE and do not reconnect
(StandAlone) until 'georepl connect'. A Primary marks the writes that peer misses; they
are resynchronised when it connects again.`),
		withLong(peerVerbCmd("invalidate", "Declare this node's data bad: a full resync from the connected Primary (PEER)"),
			`On a Secondary: declare this node's data of RESOURCE bad. The connected Primary (PEER, or
whichever peer is Primary) resynchronises every block to it; with csums, blocks that are
still identical are not sent. Refused on the Primary, without a connected UpToDate
Primary, and while a resync with it runs.`),
		withLong(peerVerbCmd("invalidate-remote", "On the Primary: declare PEER's data (default: every connected peer's) bad and resync it fully"),
			`On the Primary: declare PEER's data of RESOURCE (default: every connected peer's) bad and
resynchronise every block to it, as 'georepl invalidate' on that peer would. Refused on a
Secondary, for a peer that is not connected, and while a resync with it runs.`),
		withLong(peerVerbCmd("pause-sync", "Pause the resync from this node to PEER (default: every peer)"),
			`Stop reading resync blocks for PEER (default: every peer) of RESOURCE where this node is
the sync source; what is in flight finishes, and application writes still replicate. The
pause holds across reconnections until 'georepl resume-sync' or 'georepl down'; it is not
kept over a daemon restart.`),
		withLong(peerVerbCmd("resume-sync", "Resume a resync paused with pause-sync"),
			`Let a resync to PEER (default: every peer) of RESOURCE that 'georepl pause-sync' holds go
on from where it stopped.`),
		withLong(simpleVerb("detach", "RESOURCE", "Stop using this node's disk, as an I/O error does under on_io_error = \"detach\"", 1, 1),
			`Stop using this node's disk for RESOURCE, as an I/O error does under
on_io_error = "detach": the disk becomes Diskless, and a Primary goes on serving reads and
writes through its peers in sync. Refused on a Primary with no peer in sync. There is no
attach: 'georepl down' and 'georepl up' reattach the disk, which is then resynchronised in
full.`),
		adjustCmd(), resizeCmd(), verifyCmd(), statusCmd(), eventsCmd(), waitSyncCmd(), demoCmd(), checkCmd(),
		pluginsCmd(), pluginServeCmd(), topCmd(), manCmd())
	return root
}

func topCmd() *cobra.Command {
	var count int
	cmd := &cobra.Command{
		Use:   "top",
		Short: "A live view of every resource and peer, refreshed every second",
		Long: `Show every resource of the daemon and every peer: roles, connection and disk states,
throughput, out-of-sync bytes and resync progress with its ETA, refreshed every second.
On a terminal: up/down (or k/j) select a peer, p pauses the resync to it (pause-sync),
r resumes it (resume-sync), q quits. When standard output is not a terminal, the same
status is printed as plain lines every second (--count N: N times, then exit).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fetch := func(ctx context.Context) ([]*node.ResourceStatus, error) {
				var sts []*node.ResourceStatus
				err := admin.Call(ctx, adminPath(cmd), admin.Request{Verb: "status"}, func(r admin.Reply) error {
					return json.Unmarshal(r.Data, &sts)
				})
				return sts, err
			}
			out := cmd.OutOrStdout()
			f, isFile := out.(*os.File)
			if !isFile || !isTerminal(f) || count > 0 {
				return top.RunPlain(cmd.Context(), out, fetch, count)
			}
			control := func(ctx context.Context, verb, res, peer string) error {
				return admin.Call(ctx, adminPath(cmd), admin.Request{Verb: verb, Resource: res, Peer: peer}, func(admin.Reply) error { return nil })
			}
			_, err := tea.NewProgram(top.New(fetch, control), tea.WithAltScreen(), tea.WithContext(cmd.Context())).Run()
			return err
		},
	}
	cmd.Flags().IntVar(&count, "count", 0, "print the status as plain lines this many times, then exit")
	return cmd
}

func defaultAdmin() string {
	if s := os.Getenv("GEOREPL_ADMIN"); s != "" {
		return s
	}
	return admin.DefaultSocket
}

func adminPath(cmd *cobra.Command) string {
	p, _ := cmd.Flags().GetString("admin")
	return p
}

// call sends one request and prints text replies.
func call(cmd *cobra.Command, req admin.Request) error {
	return admin.Call(cmd.Context(), adminPath(cmd), req, func(r admin.Reply) error {
		if r.Text != "" {
			fmt.Fprint(cmd.OutOrStdout(), r.Text)
		}
		return nil
	})
}

// withLong sets cmd's long help.
func withLong(cmd *cobra.Command, long string) *cobra.Command {
	cmd.Long = long
	return cmd
}

func simpleVerb(verb, args, short string, minArgs, maxArgs int) *cobra.Command {
	return &cobra.Command{
		Use:   verb + " " + args,
		Short: short,
		Args:  cobra.RangeArgs(minArgs, maxArgs),
		RunE: func(cmd *cobra.Command, a []string) error {
			req := admin.Request{Verb: verb}
			if len(a) > 0 {
				req.Resource = a[0]
			}
			return call(cmd, req)
		},
	}
}

func primaryCmd() *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "primary [--force] RESOURCE",
		Short: "Promote this node: it serves the export and replicates writes to the peers",
		Long: `Promote this node to Primary for RESOURCE. It must have UpToDate data and no peer
may be Primary. --force promotes a node whose data is not known to be UpToDate (a new
resource's first primary, or a disaster): its data becomes the reference, and peers that
connect later are synchronised from it. On a sync target whose resync was interrupted
and whose resync undo log (resync_undo) holds its image from before the resync, --force
first rolls back to that consistent image (the resource goes down and up), then
promotes it.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, a []string) error {
			return call(cmd, admin.Request{Verb: "primary", Resource: a[0], Force: force})
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "promote even if this node's data is not UpToDate")
	return cmd
}

func connectCmd() *cobra.Command {
	var discard bool
	cmd := &cobra.Command{
		Use:   "connect [--discard-my-data] RESOURCE [PEER]",
		Short: "Connect to PEER (default: every peer) again after disconnect or a refusal",
		Long: `Let this node connect to PEER (default: every peer) of RESOURCE again: after
'georepl disconnect', or after the connection was refused (StandAlone: split brain,
unrelated data, two Primaries).

--discard-my-data resolves a split brain with this node as the victim: if the peer and
this node both changed the data while apart, this node's changes are thrown away and it
becomes a sync target of the peer, which must be Primary. Only the blocks either node
changed are resynchronised, not the whole device. This node must be Secondary. Without
a split brain the flag does nothing.`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, a []string) error {
			req := admin.Request{Verb: "connect", Resource: a[0], DiscardMyData: discard}
			if len(a) == 2 {
				req.Peer = a[1]
			}
			return call(cmd, req)
		},
	}
	cmd.Flags().BoolVar(&discard, "discard-my-data", false, "in a split brain, discard this node's changes and resync from the peer")
	return cmd
}

func adjustCmd() *cobra.Command {
	var dryRun bool
	cmd := &cobra.Command{
		Use:   "adjust [--dry-run] [RESOURCE|all]",
		Short: "Read the configuration files again and apply what changed to the running daemon",
		Long: `The daemon reads its configuration directory again and applies to RESOURCE (default
and "all": every resource of this node) what changed, without down/up, printing one line
per change. SIGHUP to the daemon does the same as 'adjust all', and logs the lines.

On a resource that is up:
  - applied at once: max_buffer, on_congestion, csums, resync_rate, resync_min_app_share,
    connect_retry, after_split_brain, discard_node, rpo_warning, insecure, handlers,
    a peer's peer_fingerprint (new connections), this node's tls and export_tls files
    (read again: certificate rotation; established connections keep theirs);
  - from the peer's next connection: compression, ping_interval, timeout, shared_secret;
  - protocol: applied while the peer is not connected, refused while it is (writes in
    flight were sent under the old one): disconnect the peer, adjust, connect;
  - refused: disk settings, quorum, on_no_quorum, transport, tls mode, a node added or
    removed, a peer's address, and this node's id, address, disk, meta_disk,
    resync_undo, export, device, ublk settings. The error names each field and the
    file:line that sets it; take the resource down on this node, adjust, and bring it up.
If anything is refused, nothing is applied. On a resource that is down everything is
taken and applies at its next up. With "all", a resource new in the files is added
(down), and one gone from them is removed if it is down. Each applied change is an
event ("adjusted"). Run adjust on every node: each daemon applies its own files.`,
		Args: cobra.RangeArgs(0, 1),
		RunE: func(cmd *cobra.Command, a []string) error {
			req := admin.Request{Verb: "adjust", DryRun: dryRun}
			if len(a) > 0 {
				req.Resource = a[0]
			}
			return call(cmd, req)
		},
	}
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "print what would change, change nothing")
	return cmd
}

// peerVerbCmd is a verb on RESOURCE and optionally one PEER.
func peerVerbCmd(verb, short string) *cobra.Command {
	return &cobra.Command{
		Use:   verb + " RESOURCE [PEER]",
		Short: short,
		Args:  cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, a []string) error {
			req := admin.Request{Verb: verb, Resource: a[0]}
			if len(a) == 2 {
				req.Peer = a[1]
			}
			return call(cmd, req)
		},
	}
}

func daemonCmd() *cobra.Command {
	var dir, name, level, pprofAddr, faults string
	var up bool
	cmd := &cobra.Command{
		Use:   "daemon --config DIR --node NAME",
		Short: "Run this node: replication, export, admin socket",
		Long: `Run node NAME of the configuration in DIR (every *.hcl file). The daemon creates the
admin socket (owner-only) and refuses to start when another daemon holds it. Resources
start down unless --up is given; bring them up with 'georepl up'. SIGINT or SIGTERM
takes every resource down and exits. SIGHUP reads the configuration files again and
applies what changed, as 'georepl adjust all' does (the TLS files included).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if pprofAddr != "" {
				if err := servePprof(pprofAddr); err != nil {
					return err
				}
			}
			return runDaemon(cmd.Context(), dir, name, adminPath(cmd), level, faults, up)
		},
	}
	cmd.Flags().StringVar(&dir, "config", "/etc/georepl", "configuration directory (*.hcl)")
	cmd.Flags().StringVar(&name, "node", "", "this node's name in the configuration (required)")
	cmd.Flags().StringVar(&level, "log-level", "info", "debug, info, warn or error")
	cmd.Flags().BoolVar(&up, "up", false, "bring every resource of this node up at start")
	cmd.Flags().StringVar(&pprofAddr, "pprof", "", "serve Go's runtime profiles (net/http/pprof) on this loopback address, for performance work")
	cmd.Flags().StringVar(&faults, "test-io-faults", "", "TEST FACILITY, never in production: once this file exists, I/O on this node's backing disks fails with EIO (the file may hold \"OFFSET LENGTH\" to fail only that byte range)")
	cmd.MarkFlagRequired("node")
	return cmd
}

func loadConfig(dir string) (*configs.Config, error) {
	builtin.Register()
	return configs.LoadDir(dir, configs.LoadOptions{})
}

func runDaemon(ctx context.Context, dir, name, adminSock, level, faults string, up bool) error {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	var handler slog.Handler = slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl})
	if underJournal() {
		// Under systemd: native journal entries, one field per attribute.
		if jh, err := newJournalHandler(journalSocket, lvl, handler); err == nil {
			handler = jh
		}
	}
	log := slog.New(handler)
	if err := keepSysmonAwake(); err != nil {
		log.Warn("could not restart the daemon with the runtime setting for low latency; running without it", "err", err)
	}
	tuneGC()
	cfg, err := loadConfig(dir)
	if err != nil {
		return err
	}
	plugins, err := startPlugins(cfg, log)
	if err != nil {
		return err
	}
	defer plugins.close()
	l, err := admin.Listen(adminSock)
	if err != nil {
		return err
	}
	defer l.Close()
	d, err := node.NewDaemon(cfg, name, log, node.Options{
		ReadConfig:   func() (*configs.Config, error) { return loadConfig(dir) },
		BufferBudget: limitMemory,
	})
	if err != nil {
		return err
	}
	if faults != "" {
		d.InjectIOFaults(faults)
	}
	if err := d.StartWitnesses(); err != nil {
		d.Close()
		return err
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sig)
	go admin.Serve(l, d.HandleAdmin)
	log.Info("georepl daemon started", "node", name, "admin", adminSock)
	if cfg.MetricsAddress != "" {
		bound, stop, err := d.ServeMetrics(cfg.MetricsAddress)
		if err != nil {
			d.Close()
			return err
		}
		defer stop()
		log.Info("serving Prometheus metrics", "url", "http://"+bound.String()+"/metrics")
	}
	if up {
		if err := d.UpAll(); err != nil {
			d.Close()
			return err
		}
	}
	// Ready: the admin socket answers (and, with --up, every resource is
	// up). Under systemd (Type=notify) units ordered after this one start
	// now, and `georepl up` from them finds the daemon.
	if err := sdNotify("READY=1", "STATUS=admin socket "+adminSock); err != nil {
		log.Warn("could not tell the service manager that the daemon is ready", "err", err)
	}
	// SIGHUP is `georepl adjust all`: the configuration files are read
	// again, what may change live is applied (TLS files included, for
	// certificate rotation: established connections keep theirs), and
	// what was applied or refused is logged.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-hup:
			lines, err := d.AdjustFromFiles("all", false)
			if err != nil {
				log.Error("SIGHUP: adjusting to the configuration files failed", "err", err)
			} else if len(lines) == 0 {
				log.Info("SIGHUP: the configuration files hold no change")
			}
			continue
		case s := <-sig:
			log.Info("shutting down", "signal", s.String())
		case <-ctx.Done():
			log.Info("shutting down", "reason", context.Cause(ctx))
		}
		if err := sdNotify("STOPPING=1"); err != nil {
			log.Warn("could not tell the service manager that the daemon is stopping", "err", err)
		}
		return d.Close()
	}
}

// tuneGC raises the garbage collector's target unless GOGC is set. It
// was set when every write's payload was a fresh allocation, and then
// paid (1 MiB writes 1.06 GB/s at GOGC=100, 1.94 GB/s at 400); since
// payloads come from a pool, make bench measured the same rates and CPU
// per request at 100 and 400. A target of five times the live heap is
// too much once the live heap is large, as when a protocol A peer's
// max_buffer is full: limitMemory caps it.
func tuneGC() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(400)
	}
}

// memoryBase is the daemon's memory besides its connections' buffers
// (the runtime, bitmaps, the NBD requests in flight, resync reads), for
// the runtime's limit.
const memoryBase = 32 << 20

// limitMemory sets the Go runtime's soft memory limit to memoryBase plus
// budget, the sum of max_buffer over the node's connections, unless
// GOMEMLIMIT is set. The garbage collector then runs as often as it must
// to stay under it: without it, a protocol A Primary whose peer's
// buffer was full reached 434 MiB (make bench, 64 MiB of max_buffer).
// It is a soft limit: live data beyond it (a client's deep queue of large
// writes as well) is kept, at the cost of more collections.
func limitMemory(budget int64) {
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(memoryBase + budget)
	}
}

// sysmonAwake is the GODEBUG setting keepSysmonAwake adds: a scheduler
// trace every 2147483647 ms (24.8 days), the longest the runtime takes.
const sysmonAwake = "schedtrace=2147483647"

// keepSysmonAwake re-executes the daemon (same process, same arguments)
// with sysmonAwake added to GODEBUG, unless GODEBUG sets schedtrace
// already; it returns only if it does not re-execute.
//
// Why: when every processor of the Go runtime is idle, its monitor
// thread (sysmon) goes into a deep sleep, and the next goroutine that
// enters a system call must wake it, a futex wake-up of another thread.
// A replicating node is idle between every two messages at queue depth
// 1, so that wake-up lands on the path of every write, at each node:
// measured on the 2-core test VM, a protocol C write at queue depth 1
// took about 135 µs without this setting and 100 µs with it. The runtime
// offers no other switch: sysmon never sleeps deeply while a scheduler
// trace is due, and this one is due every 24.8 days, when the daemon
// prints one "SCHED" line of scheduler statistics to its standard error
// (the first at start if the host has been up longer than that). The
// cost is sysmon waking every 10 ms while the daemon is idle.
func keepSysmonAwake() error {
	env, again := sysmonEnv(os.Environ())
	if !again {
		return nil
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	return syscall.Exec(exe, os.Args, env)
}

// sysmonEnv returns environ with sysmonAwake added to GODEBUG, and
// whether that changed anything: not if GODEBUG sets schedtrace already
// (by the operator, or by the exec that added it). The runtime reads the
// first GODEBUG of the environment, so there is exactly one.
func sysmonEnv(environ []string) ([]string, bool) {
	godebug, found := "", false
	env := []string{""} // GODEBUG's place
	for _, kv := range environ {
		v, ok := strings.CutPrefix(kv, "GODEBUG=")
		switch {
		case !ok:
			env = append(env, kv)
		case !found:
			godebug, found = v, true
		}
	}
	for _, setting := range strings.Split(godebug, ",") {
		if strings.HasPrefix(setting, "schedtrace=") {
			return environ, false
		}
	}
	if godebug != "" {
		godebug += ","
	}
	env[0] = "GODEBUG=" + godebug + sysmonAwake
	return env, true
}

func offlineTarget(dir, nodeName, resName string) (*configs.Resource, *configs.Node, error) {
	cfg, err := loadConfig(dir)
	if err != nil {
		return nil, nil, err
	}
	rc, err := cfg.Resource(resName)
	if err != nil {
		return nil, nil, err
	}
	self, err := rc.Node(nodeName)
	if err != nil {
		return nil, nil, err
	}
	return rc, self, nil
}

func createMDCmd() *cobra.Command {
	var dir, name string
	var force bool
	cmd := &cobra.Command{
		Use:   "create-md --config DIR --node NAME RESOURCE",
		Short: "Initialise a node's metadata for RESOURCE (offline)",
		Long: `Write fresh metadata for RESOURCE on node NAME: internal (at the end of the disk) or in
the external meta_disk file. The disk starts Inconsistent; the first 'primary --force'
makes one node's data the reference. Existing metadata is refused unless --force.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, a []string) error {
			rc, self, err := offlineTarget(dir, name, a[0])
			if err != nil {
				return err
			}
			sb, err := node.CreateMetadata(rc, self, force)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "created metadata for %s on %s: %d bytes of data, %d bitmap slots, block size %d\n",
				rc.Name, self.Name, sb.DataSize, sb.Slots, sb.BlockSize)
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "config", "/etc/georepl", "configuration directory")
	cmd.Flags().StringVar(&name, "node", "", "this node's name (required)")
	cmd.Flags().BoolVar(&force, "force", false, "overwrite existing metadata")
	cmd.MarkFlagRequired("node")
	return cmd
}

func dumpMDCmd() *cobra.Command {
	var dir, name string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "dump-md [--config DIR --node NAME] RESOURCE",
		Short: "Print a node's metadata: generation ids, disk state, out-of-sync bitmaps",
		Long: `Print the metadata of RESOURCE. With --config and --node it reads the disk directly
(the daemon must not have the resource up); otherwise it asks the running daemon.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, a []string) error {
			if name != "" {
				rc, self, err := offlineTarget(dir, name, a[0])
				if err != nil {
					return err
				}
				return node.DumpMetadata(cmd.OutOrStdout(), rc, self, asJSON)
			}
			return call(cmd, admin.Request{Verb: "dump-md", Resource: a[0], JSON: asJSON})
		},
	}
	cmd.Flags().StringVar(&dir, "config", "/etc/georepl", "configuration directory (offline use)")
	cmd.Flags().StringVar(&name, "node", "", "read the disk of this node directly instead of asking the daemon")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func validateCmd() *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:   "validate --config DIR",
		Short: "Check a configuration directory and print what it describes",
		Long: `Load every *.hcl file of DIR as the daemon would, report every error with file, line
and column, start each transport plugin once to check it (binary, sha256, protocol
version, config), and print each resource and the effective settings of each
connection. Needs no daemon.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(dir)
			if err != nil {
				return err
			}
			if err := checkPlugins(cfg); err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			for _, p := range cfg.Plugins {
				fmt.Fprintf(out, "plugin %s: %s, sha256 %x verified, protocol and config accepted\n", p.Name, p.Path, p.SHA256)
			}
			for _, rc := range cfg.Resources {
				fmt.Fprintf(out, "resource %s: %d nodes", rc.Name, len(rc.Nodes))
				if rc.Quorum > 0 {
					fmt.Fprintf(out, ", quorum %d, on_no_quorum %s", rc.Quorum, rc.OnNoQuorum)
				}
				if len(rc.Handlers.SplitBrain) > 0 {
					fmt.Fprintf(out, ", split_brain handler %s", rc.Handlers.SplitBrain[0])
				}
				fmt.Fprintln(out)
				for i, a := range rc.Nodes {
					for _, b := range rc.Nodes[i+1:] {
						l, err := rc.Link(a.Name, b.Name)
						if err != nil {
							return err
						}
						rate := "unlimited"
						if l.Net.ResyncRate > 0 {
							rate = configs.FormatSize(l.Net.ResyncRate) + "/s"
						}
						sb := l.Net.AfterSplitBrain.String()
						if l.Net.AfterSplitBrain == core.DiscardNode {
							sb += " " + l.Net.DiscardNode
						}
						auth := "tls " + l.Net.TLS.String()
						switch {
						case l.Net.SharedSecret != "":
							auth += ", shared secret"
						case l.Net.TLS == configs.TLSOff:
							auth += ", UNAUTHENTICATED (insecure = true)"
						}
						fmt.Fprintf(out, "  %s <-> %s: protocol %s, %s, %s, compression %s, csums %s, max_buffer %s, on_congestion %s, resync_rate %s, resync_min_app_share %g, after_split_brain %s\n",
							a.Name, b.Name, l.Protocol, l.Net.Transport, auth, l.Net.Compression, l.Net.Csums,
							configs.FormatSize(l.Net.MaxBuffer), l.Net.OnCongestion, rate, l.Net.ResyncMinAppShare, sb)
					}
				}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "config", "/etc/georepl", "configuration directory")
	return cmd
}

func statusCmd() *cobra.Command {
	var asJSON, proc bool
	cmd := &cobra.Command{
		Use:   "status [RESOURCE] [--json|--proc]",
		Short: "Show role, disk state and, per peer, connection, replication and resync progress",
		Long: `Show, per resource: role and disk state; per peer: connection and replication state,
protocol, transport, bytes sent and received, out-of-sync bytes and resync progress
(percent, rate, ETA). --json prints the same for scripts; --proc prints DRBD 8.4's
/proc/drbd layout (cs ro ds ns nr dw dr al bm lo pe ua ap ep wo oos) for existing
monitoring scripts.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, a []string) error {
			req := admin.Request{Verb: "status"}
			if len(a) == 1 {
				req.Resource = a[0]
			}
			sts, err := fetchStatus(cmd, req)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			switch {
			case asJSON:
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(sts)
			case proc:
				node.WriteProc(out, sts)
			default:
				node.WriteStatus(out, sts)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().BoolVar(&proc, "proc", false, "print the DRBD 8.4 /proc/drbd layout")
	return cmd
}

func fetchStatus(cmd *cobra.Command, req admin.Request) ([]*node.ResourceStatus, error) {
	var sts []*node.ResourceStatus
	err := admin.Call(cmd.Context(), adminPath(cmd), req, func(r admin.Reply) error {
		return json.Unmarshal(r.Data, &sts)
	})
	return sts, err
}

func eventsCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "events [RESOURCE]",
		Short: "Stream state changes as JSON lines until interrupted",
		Long: `Stream the daemon's state changes (of RESOURCE, or of every resource) as JSON lines
until interrupted: time, resource, node, peer, what (role, disk, conn, repl, peer-role,
peer-disk, gen, resync, verify, read, split-brain, quorum, activity-log, resync-undo,
overflow), old, new, detail. The admin guide describes each.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, a []string) error {
			req := admin.Request{Verb: "events"}
			if len(a) == 1 {
				req.Resource = a[0]
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			err := admin.Call(ctx, adminPath(cmd), req, func(r admin.Reply) error {
				if len(r.Data) == 0 { // the daemon has subscribed us
					_, err := fmt.Fprintln(cmd.ErrOrStderr(), "georepl: subscribed; events follow as they happen (Ctrl-C to stop)")
					return err
				}
				_, err := fmt.Fprintf(cmd.OutOrStdout(), "%s\n", r.Data)
				return err
			})
			if errors.Is(err, context.Canceled) {
				return nil
			}
			return err
		},
	}
}

func waitSyncCmd() *cobra.Command {
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "wait-sync RESOURCE",
		Short: "Wait until this node and every peer that is not StandAlone are UpToDate",
		Long: `Block until RESOURCE is UpToDate here and on every peer that is not StandAlone
(disconnected by the administrator, or refused after a split brain), with no resync
running and no write still unacknowledged by a peer. On a terminal it draws a progress
bar per resyncing peer. --timeout gives up with an error.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, a []string) error {
			ctx := cmd.Context()
			if timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, timeout)
				defer cancel()
			}
			cmd.SetContext(ctx)
			return waitSync(cmd, a[0], isTerminal(os.Stdout))
		},
	}
	cmd.Flags().DurationVar(&timeout, "timeout", 0, "give up after this long (0: wait forever)")
	return cmd
}

// waitSync polls the daemon's status until the resource is in sync.
func waitSync(cmd *cobra.Command, res string, tty bool) error {
	out := cmd.OutOrStdout()
	live := liveLines{out: out}
	for {
		sts, err := fetchStatus(cmd, admin.Request{Verb: "status", Resource: res})
		if err != nil {
			if errors.Is(err, context.DeadlineExceeded) || cmd.Context().Err() != nil {
				return fmt.Errorf("wait-sync %s: timed out", res)
			}
			return err
		}
		st := sts[0]
		done, lines := syncState(st)
		if tty {
			live.draw(lines)
		}
		if done {
			fmt.Fprintf(out, "%s is UpToDate on %s and its peers\n", res, st.Node)
			return nil
		}
		select {
		case <-cmd.Context().Done():
			return fmt.Errorf("wait-sync %s: timed out; state: %s", res, strings.Join(lines, "; "))
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func syncState(st *node.ResourceStatus) (done bool, lines []string) {
	done = st.Up && st.Disk == "UpToDate"
	lines = []string{fmt.Sprintf("%s on %s: %s %s", st.Name, st.Node, st.Role, st.Disk)}
	for _, p := range st.Peers {
		if p.Conn == "StandAlone" {
			lines = append(lines, fmt.Sprintf("  %-10s StandAlone (not waited for)", p.Name))
			continue
		}
		if p.Conn != "Connected" || p.Repl != "Established" || p.Disk != "UpToDate" || p.Unacked > 0 {
			done = false
		}
		if p.Resync != nil {
			const width = 30
			filled := min(int(p.Resync.Percent*width/100), width)
			lines = append(lines, fmt.Sprintf("  %-10s %-10s [%s%s] %5.1f%% %s/s eta %s", p.Name, p.Repl,
				strings.Repeat("#", filled), strings.Repeat(".", width-filled), p.Resync.Percent,
				humanRate(p.Resync.Rate), etaString(p.Resync.ETASeconds)))
			continue
		}
		lines = append(lines, fmt.Sprintf("  %-10s %s %s %s", p.Name, p.Conn, p.Repl, p.Disk))
	}
	return done, lines
}

func humanRate(r float64) string { return node.HumanBytes(uint64(r)) }

func etaString(sec float64) string {
	if sec <= 0 {
		return "-"
	}
	return (time.Duration(sec) * time.Second).String()
}

func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// liveLines keeps a few lines of a terminal up to date (wait-sync's and
// verify's progress): each draw moves the cursor back up over the lines
// drawn before and overwrites them.
type liveLines struct {
	out   io.Writer
	drawn int
}

func (l *liveLines) draw(lines []string) {
	if l.drawn > 0 {
		fmt.Fprintf(l.out, "\033[%dA", l.drawn)
	}
	for _, line := range lines {
		fmt.Fprintf(l.out, "\r\033[K%s\n", line)
	}
	l.drawn = len(lines)
}
