package configs

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/hcl/v2"

	"github.com/georepl/georepl/core"
	"github.com/georepl/georepl/core/wire"
	"github.com/georepl/georepl/protocols"
)

// twoNodes is a valid resource whose body continues, from line 12 column 3,
// with whatever a test appends, followed by a closing brace.
const twoNodes = `resource "r0" {
  node "alpha" {
    id      = 0
    address = "10.0.0.1:7789"
    disk    = "/dev/a"
  }
  node "bravo" {
    id      = 1
    address = "10.0.0.2:7789"
    disk    = "/dev/b"
  }
`

func withTwoNodes(extra string) string { return twoNodes + "  " + extra + "\n" + testTLS + "}\n" }

// testTLS, at the end of a test resource, makes its connections
// authenticated (TLS is required by default with a tls block), as loading
// requires. Loading reads none of these files.
const testTLS = "  tls {\n    ca   = \"/ca.crt\"\n    cert = \"/node.crt\"\n    key  = \"/node.key\"\n  }\n"

func TestDefaults(t *testing.T) {
	cfg, err := Parse("r0.hcl", []byte(withTwoNodes("")), LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	r, err := cfg.Resource("r0")
	if err != nil {
		t.Fatal(err)
	}
	wantNet := Net{
		Transport:       "tcp",
		Compression:     wire.CompressionNone,
		MaxBuffer:       64 << 20,
		OnCongestion:    core.CongestionBlock,
		Csums:           wire.CsumNone,
		PingInterval:    10 * time.Second,
		Timeout:         6 * time.Second,
		ConnectRetry:    time.Second,
		AfterSplitBrain: core.SplitBrainDisconnect,
		TLS:             TLSRequired, // withTwoNodes has a tls block

		ResyncMinAppShare: 0.3,
	}
	if r.Failover.Mode != FailoverManual || r.Failover.DetectionTimeout != 5*time.Second || r.Failover.PromoteConsistent || r.Failover.Witnesses != nil {
		t.Errorf("failover defaults: %+v", r.Failover)
	}
	if r.Quorum != 0 || r.OnNoQuorum != core.SuspendIO || r.Handlers.SplitBrain != nil {
		t.Errorf("defaults: quorum %d, on_no_quorum %q, handlers %+v", r.Quorum, r.OnNoQuorum, r.Handlers)
	}
	if r.Protocol != protocols.C || r.Net != wantNet || r.Disk != (Disk{BlockSize: 4096, LogicalBlockSize: 512, Flushes: false, ALExtents: 1024, OnIOError: core.DetachOnIOError, ResyncUndoSize: 1 << 30}) {
		t.Errorf("defaults: protocol %q, net %+v, disk %+v", r.Protocol, r.Net, r.Disk)
	}
	alpha := r.Nodes[0]
	want := Node{Name: "alpha", ID: 0, Address: "10.0.0.1:7789", Disk: "/dev/a", MetaDisk: "internal", ResyncUndo: "none",
		UblkQueues: 1, UblkQueueDepth: 128, TLS: alpha.TLS, Failover: NodeFailover{AutoPromote: true}, DeclRange: alpha.DeclRange}
	if *alpha != want {
		t.Errorf("node alpha = %+v; want %+v", *alpha, want)
	}
	if got := where(alpha.DeclRange); got != "r0.hcl:2:3" {
		t.Errorf("node alpha declared at %s; want r0.hcl:2:3", got)
	}
	if len(r.Connections) != 0 {
		t.Errorf("connections = %v; want none", r.Connections)
	}
}

func TestEverySetting(t *testing.T) {
	src := `resource "big" {
  protocol     = "A"
  quorum       = "majority"
  on_no_quorum = "io-error"
  handlers {
    split_brain = "/usr/local/bin/page-ops --team storage"
  }
  net {
    after_split_brain = "discard-node"
    discard_node      = "db2"
    transport     = "quic"
    compression   = "lz4"
    shared_secret = "s3cret"
    max_buffer    = 1048576
    on_congestion = "disconnect"
    csums         = "sha256"
    resync_rate   = "100MiB"
    resync_min_app_share = 0.5
    ping_interval = "1m30s"
    timeout       = "500ms"
    connect_retry = "2s"
  }
  disk {
    block_size = "64K"
    flushes    = false
    al_extents = 257
    on_io_error = "pass-on"
    resync_undo_size = "64M"
  }
  node "db1.example.com" {
    id        = 31
    address   = "[2001:db8::1]:7000"
    disk      = "/dev/sdb"
    meta_disk = "/dev/sdc1"
    resync_undo = "/srv/big.undo"
    export    = "tcp:127.0.0.1:10809"
  }
  node "db2" {
    id      = 7
    address = "db2.example.com:7000"
    disk    = "/dev/sdb"
    export  = "unix:/run/big.sock"
  }
}
`
	cfg, err := Parse("big.hcl", []byte(src), LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	r := cfg.Resources[0]
	wantNet := Net{
		Transport:       "quic",
		Compression:     wire.CompressionLZ4,
		SharedSecret:    "s3cret",
		MaxBuffer:       1 << 20,
		OnCongestion:    core.CongestionDisconnect,
		Csums:           wire.CsumSHA256,
		PingInterval:    90 * time.Second,
		Timeout:         500 * time.Millisecond,
		ConnectRetry:    2 * time.Second,
		AfterSplitBrain: core.DiscardNode,
		DiscardNode:     "db2",

		ResyncRate:        100 << 20,
		ResyncMinAppShare: 0.5,
	}
	if r.Quorum != 2 || r.OnNoQuorum != core.IOErrorOnNoQuorum || !slices.Equal(r.Handlers.SplitBrain, []string{"/usr/local/bin/page-ops", "--team", "storage"}) {
		t.Errorf("quorum %d, on_no_quorum %q, handlers %+v", r.Quorum, r.OnNoQuorum, r.Handlers)
	}
	if r.Name != "big" || r.Protocol != protocols.A || r.Net != wantNet || r.Disk != (Disk{BlockSize: 64 << 10, LogicalBlockSize: 512, Flushes: false, ALExtents: 257, OnIOError: core.PassOnIOError, ResyncUndoSize: 64 << 20}) {
		t.Errorf("resource = %q protocol %q net %+v disk %+v", r.Name, r.Protocol, r.Net, r.Disk)
	}
	n := r.Nodes[0]
	if n.Name != "db1.example.com" || n.ID != 31 || n.Address != "[2001:db8::1]:7000" || n.MetaDisk != "/dev/sdc1" || n.ResyncUndo != "/srv/big.undo" || r.Nodes[1].ResyncUndo != "none" || n.Export != "tcp:127.0.0.1:10809" {
		t.Errorf("node = %+v", *n)
	}
	if r.Nodes[1].Export != "unix:/run/big.sock" {
		t.Errorf("db2 export = %q", r.Nodes[1].Export)
	}
}

func TestTransportOption(t *testing.T) {
	src := withTwoNodes(`net { transport = "rdma" }`)
	if _, err := Parse("r0.hcl", []byte(src), LoadOptions{}); err == nil || !strings.Contains(err.Error(), `"tcp", "quic"`) {
		t.Errorf("rdma without plugin: err = %v; want the built-in transports listed", err)
	}
	cfg, err := Parse("r0.hcl", []byte(src), LoadOptions{Transports: []string{"tcp", "quic", "rdma"}})
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Resources[0].Net.Transport; got != "rdma" {
		t.Errorf("transport = %q; want rdma", got)
	}
	src = withTwoNodes(`net { transport = "tcp" }`)
	_, err = Parse("r0.hcl", []byte(src), LoadOptions{Transports: []string{"rdma"}})
	if err == nil || !strings.Contains(err.Error(), `use one of "rdma"`) {
		t.Errorf("tcp when only rdma is allowed: err = %v", err)
	}
}

// errorCases hold one mistake of every class, with what the error must
// mention: the file, line and column of the offending text and what is wrong.
var errorCases = []struct {
	name string
	src  string
	want []string
}{
	{"syntax error", withTwoNodes(`protocol = `), []string{"r0.hcl:12:", "Invalid expression"}},
	{"unknown top-level block", `resorce "r0" {}`, []string{"r0.hcl:1:1:", "Unsupported block type", `Did you mean "resource"?`}},
	{"top-level attribute", `protocol = "A"`, []string{"r0.hcl:1:1:", "Unsupported argument"}},
	{"unknown argument", withTwoNodes(`protocl = "A"`), []string{"r0.hcl:12:3:", "Unsupported argument", `Did you mean "protocol"?`}},
	{"unknown block", withTwoNodes(`nett {}`), []string{"r0.hcl:12:3:", "Unsupported block type", `Did you mean "net"?`}},
	{"unknown net argument", withTwoNodes(`net { transprt = "tcp" }`), []string{"r0.hcl:12:9:", "Unsupported argument", `Did you mean "transport"?`}},
	{"unknown node argument", strings.Replace(withTwoNodes(""), "disk    =", "dsik    =", 1), []string{"r0.hcl:5:5:", `Did you mean "disk"?`}},
	{"missing resource label", `resource {}`, []string{"r0.hcl:1:10:", "Missing name for resource"}},
	{"wrong type", withTwoNodes(`protocol = ["A"]`), []string{"r0.hcl:12:14:", "Incorrect attribute value type", "string required"}},
	{"wrong type bool", withTwoNodes(`disk { flushes = "maybe" }`), []string{"r0.hcl:12:20:", "Incorrect attribute value type", "bool required"}},
	{"null", withTwoNodes(`protocol = null`), []string{"r0.hcl:12:14:", "must not be null"}},
	{"variable", withTwoNodes(`protocol = var.p`), []string{"r0.hcl:12:14:", "Variables not allowed"}},
	{"function", withTwoNodes(`protocol = upper("c")`), []string{"r0.hcl:12:14:", "Function calls not allowed"}},
	{"bad protocol", withTwoNodes(`protocol = "D"`), []string{"r0.hcl:12:14:", "Invalid protocol", `"A", "B", "C"`}},
	{"lower-case protocol", withTwoNodes(`protocol = "c"`), []string{"r0.hcl:12:14:", "Invalid protocol", `did you mean "C"?`}},
	{"unknown transport", withTwoNodes(`net { transport = "tpc" }`), []string{"r0.hcl:12:21:", "Unknown transport", `did you mean "tcp"?`, `"tcp", "quic"`}},
	{"bad compression", withTwoNodes(`net { compression = "zstd" }`), []string{"r0.hcl:12:23:", "Invalid compression", `"none", "lz4"`}},
	{"bad on_congestion", withTwoNodes(`net { on_congestion = "pullahead" }`), []string{"r0.hcl:12:25:", "Invalid on_congestion", `did you mean "pull-ahead"?`}},
	{"bad csums", withTwoNodes(`net { csums = "xxh46" }`), []string{"r0.hcl:12:17:", "Invalid csums", `did you mean "xxh64"?`, `"none", "crc32c", "xxh64", "sha256"`}},
	{"pull-ahead under protocol C", withTwoNodes(`net { on_congestion = "pull-ahead" }`), []string{"r0.hcl:12:25:", "Invalid on_congestion", `needs protocol "A"`, `"alpha" and "bravo" uses protocol "C"`}},
	{"disconnect under a connection's protocol B", withTwoNodes("protocol = \"A\"\n  net { on_congestion = \"disconnect\" }\n  connection \"alpha\" \"bravo\" { protocol = \"B\" }"), []string{"r0.hcl:13:25:", "Invalid on_congestion", `uses protocol "B"`}},
	{"bad resync_rate", withTwoNodes(`net { resync_rate = "100MB" }`), []string{"r0.hcl:12:23:", "Invalid size", `unknown unit "MB"`}},
	{"app share too large", withTwoNodes(`net { resync_min_app_share = 0.95 }`), []string{"r0.hcl:12:32:", "Invalid resync_min_app_share", "from 0 to 0.9"}},
	{"app share as a string", withTwoNodes(`net { resync_min_app_share = "half" }`), []string{"r0.hcl:12:32:", "resync_min_app_share", "number required"}},
	{"bad size unit", withTwoNodes(`net { max_buffer = "64MB" }`), []string{"r0.hcl:12:22:", "Invalid size", `"64MB"`, `unknown unit "MB"`}},
	{"max_buffer too small", withTwoNodes(`net { max_buffer = "4KiB" }`), []string{"r0.hcl:12:22:", "Invalid max_buffer", "4KiB is too small", "64KiB"}},
	{"bad duration", withTwoNodes(`net { timeout = "6" }`), []string{"r0.hcl:12:19:", "Invalid duration", `timeout = "6"`}},
	{"zero duration", withTwoNodes(`net { ping_interval = "0s" }`), []string{"r0.hcl:12:25:", "Invalid duration", "greater than zero"}},
	{"negative duration", withTwoNodes(`net { connect_retry = "-1s" }`), []string{"r0.hcl:12:25:", "greater than zero"}},
	{"block size not power of two", withTwoNodes(`disk { block_size = "3KiB" }`), []string{"r0.hcl:12:23:", "Invalid block_size", "3KiB", "power of two from 512B to 4MiB"}},
	{"block size too small", withTwoNodes(`disk { block_size = 256 }`), []string{"r0.hcl:12:23:", "Invalid block_size", "256B"}},
	{"bad after_split_brain", withTwoNodes(`net { after_split_brain = "discard-youngest-primary" }`), []string{"r0.hcl:12:29:", "Invalid after_split_brain", `did you mean "discard-younger-primary"?`}},
	{"discard-node without node", withTwoNodes(`net { after_split_brain = "discard-node" }`), []string{"r0.hcl:12:29:", "Missing discard_node"}},
	{"discard_node without discard-node", withTwoNodes(`net { discard_node = "alpha" }`), []string{"r0.hcl:12:24:", "Unused discard_node", `after_split_brain is "disconnect"`}},
	{"discard_node unknown", withTwoNodes("net {\n    after_split_brain = \"discard-node\"\n    discard_node = \"alfa\"\n  }"), []string{"r0.hcl:14:20:", "Unknown node", `did you mean "alpha"?`}},
	{"discard_node outside the connection", strings.Replace(withTwoNodes(`connection "alpha" "bravo" {
    net {
      after_split_brain = "discard-node"
      discard_node      = "charlie"
    }
  }`), "  node \"bravo\"", "  node \"charlie\" {\n    id = 2\n    address = \"10.0.0.3:7789\"\n    disk = \"/dev/c\"\n  }\n  node \"bravo\"", 1), []string{"r0.hcl:20:27:", "Invalid discard_node", `not one of this connection's nodes ("alpha" and "bravo")`}},
	{"bad quorum", withTwoNodes(`quorum = "1"`), []string{"r0.hcl:12:12:", "Invalid quorum", "from 2 to 2", "both halves"}},
	{"quorum words", withTwoNodes(`quorum = "most"`), []string{"r0.hcl:12:12:", "Invalid quorum", `"majority"`}},
	{"bad on_no_quorum", withTwoNodes(`on_no_quorum = "suspend"`), []string{"r0.hcl:12:18:", "Invalid on_no_quorum", `"suspend-io", "io-error"`}},
	{"handler without absolute path", withTwoNodes(`handlers { split_brain = "notify-ops" }`), []string{"r0.hcl:12:28:", "Invalid handler", "absolute path"}},
	{"resync_undo_size too small", withTwoNodes(`disk { resync_undo_size = "60K" }`), []string{"r0.hcl:12:29:", "Invalid resync_undo_size", "at least"}},
	{"resync_undo on the disk", strings.Replace(withTwoNodes(""), `disk    = "/dev/a"`, `disk    = "/dev/a"
    resync_undo = "/dev/a"`, 1), []string{"r0.hcl:6:19:", "Invalid resync_undo", "a file of its own"}},
	{"resync_undo internal", strings.Replace(withTwoNodes(""), `disk    = "/dev/a"`, `disk    = "/dev/a"
    resync_undo = "internal"`, 1), []string{"r0.hcl:6:19:", "Unsupported resync_undo", "not supported yet"}},
	{"al_extents too small", withTwoNodes(`disk { al_extents = 6 }`), []string{"r0.hcl:12:23:", "Invalid al_extents", "from 7 to 16380"}},
	{"al_extents too large", withTwoNodes(`disk { al_extents = 16381 }`), []string{"r0.hcl:12:23:", "Invalid al_extents"}},
	{"al_extents not whole", withTwoNodes(`disk { al_extents = 7.5 }`), []string{"r0.hcl:12:23:", "Invalid al_extents", "7.5"}},
	{"al_extents a string", withTwoNodes(`disk { al_extents = "many" }`), []string{"r0.hcl:12:23:", "number required"}},
	{"bad on_io_error", withTwoNodes(`disk { on_io_error = "passon" }`), []string{"r0.hcl:12:24:", "Invalid on_io_error", `did you mean "pass-on"?`, `"detach", "pass-on"`}},
	{"on_io_error a number", withTwoNodes(`disk { on_io_error = 1 }`), []string{"r0.hcl:12:24:", "Invalid on_io_error"}},
	{"duplicate net block", withTwoNodes("net {}\n  net {}"), []string{"r0.hcl:13:3:", "Duplicate net block", "r0.hcl:12:3"}},
	{"duplicate disk block", withTwoNodes("disk {}\n  disk {}"), []string{"r0.hcl:13:3:", "Duplicate disk block", "r0.hcl:12:3"}},
	{"duplicate node", withTwoNodes(`node "alpha" {
    id = 2
    address = "10.0.0.3:7789"
    disk = "/dev/c"
  }`), []string{"r0.hcl:12:8:", "Duplicate node", `"alpha"`, "r0.hcl:2:3"}},
	{"duplicate id", withTwoNodes(`node "charlie" {
    id = 1
    address = "10.0.0.3:7789"
    disk = "/dev/c"
  }`), []string{"r0.hcl:13:10:", "Duplicate node id", `node "bravo"`, "r0.hcl:7:3"}},
	{"id out of range", strings.Replace(withTwoNodes(""), "id      = 1", "id      = 32", 1), []string{"r0.hcl:8:15:", "Invalid node id", "0 to 31"}},
	{"negative id", strings.Replace(withTwoNodes(""), "id      = 1", "id      = -1", 1), []string{"r0.hcl:8:15:", "Invalid node id"}},
	{"fractional id", strings.Replace(withTwoNodes(""), "id      = 1", "id      = 1.5", 1), []string{"r0.hcl:8:15:", "id = 1.5 must be a whole number"}},
	{"duplicate address", strings.Replace(withTwoNodes(""), "10.0.0.2", "10.0.0.1", 1), []string{"r0.hcl:9:15:", "Duplicate address", `node "alpha"`, "r0.hcl:2:3"}},
	{"address without port", strings.Replace(withTwoNodes(""), "10.0.0.2:7789", "10.0.0.2", 1), []string{"r0.hcl:9:15:", "Invalid address", "missing port"}},
	{"address without host", strings.Replace(withTwoNodes(""), "10.0.0.2:7789", ":7789", 1), []string{"r0.hcl:9:15:", "Invalid address", "host is empty"}},
	{"address port zero", strings.Replace(withTwoNodes(""), "10.0.0.2:7789", "10.0.0.2:0", 1), []string{"r0.hcl:9:15:", `port "0" is not a number from 1 to 65535`}},
	{"address named port", strings.Replace(withTwoNodes(""), "10.0.0.2:7789", "10.0.0.2:http", 1), []string{"r0.hcl:9:15:", `port "http"`}},
	{"missing disk", strings.Replace(withTwoNodes(""), `disk    = "/dev/b"`, "", 1), []string{"r0.hcl:7:16:", "Missing required argument", `"disk"`}},
	{"empty disk", strings.Replace(withTwoNodes(""), `"/dev/b"`, `""`, 1), []string{"r0.hcl:10:15:", "Empty path", "disk must name"}},
	{"missing id", strings.Replace(withTwoNodes(""), "id      = 1", "", 1), []string{"r0.hcl:7:16:", "Missing required argument", `"id"`}},
	{"bad export scheme", strings.Replace(withTwoNodes(""), `disk    = "/dev/b"`, `disk = "/dev/b"
    export = "nbd:/x"`, 1), []string{"r0.hcl:11:14:", "Invalid export", `"unix:PATH" or "tcp:HOST:PORT"`}},
	{"empty unix export", strings.Replace(withTwoNodes(""), `disk    = "/dev/b"`, `disk = "/dev/b"
    export = "unix:"`, 1), []string{"r0.hcl:11:14:", "Invalid export", "socket path"}},
	{"bad tcp export", strings.Replace(withTwoNodes(""), `disk    = "/dev/b"`, `disk = "/dev/b"
    export = "tcp:localhost"`, 1), []string{"r0.hcl:11:14:", "Invalid export", "missing port"}},
	{"bad resource name", strings.Replace(withTwoNodes(""), `"r0"`, `"r 0"`, 1), []string{"r0.hcl:1:10:", "Invalid resource name", `"r 0"`}},
	{"bad node name", strings.Replace(withTwoNodes(""), `"bravo"`, `"bra/vo"`, 1), []string{"r0.hcl:7:8:", "Invalid node name"}},
	{"too few nodes", `resource "solo" {
  node "alpha" {
    id = 0
    address = "10.0.0.1:1"
    disk = "/d"
  }
}`, []string{"r0.hcl:1:1:", "Too few nodes", `"solo" has 1 node`}},
	{"connection to unknown node", withTwoNodes(`connection "alpha" "brvo" {}`), []string{"r0.hcl:12:22:", "Unknown node", `"brvo"`, `did you mean "bravo"?`, `"alpha", "bravo"`}},
	{"connection to itself", withTwoNodes(`connection "alpha" "alpha" {}`), []string{"r0.hcl:12:22:", "Invalid connection", `"alpha" twice`}},
	{"duplicate connection", withTwoNodes("connection \"alpha\" \"bravo\" {}\n  connection \"bravo\" \"alpha\" {}"),
		[]string{"r0.hcl:13:3:", "Duplicate connection", "r0.hcl:12:3", "order of the two names does not matter"}},
	{"bad connection protocol", withTwoNodes(`connection "alpha" "bravo" { protocol = "X" }`), []string{"r0.hcl:12:43:", "Invalid protocol"}},
	{"bad connection net", withTwoNodes("connection \"alpha\" \"bravo\" {\n    net { timeout = \"soon\" }\n  }"), []string{"r0.hcl:13:21:", "Invalid duration"}},
	{"connection disk block", withTwoNodes("connection \"alpha\" \"bravo\" {\n    disk {}\n  }"), []string{"r0.hcl:13:5:", "Unsupported block type", "disk"}},
	{"two connection net blocks", withTwoNodes(`connection "alpha" "bravo" {
    net {}
    net {}
  }`), []string{"r0.hcl:14:5:", "Duplicate net block", "A connection has at most one", "r0.hcl:13:5"}},
	{"no resources", "# nothing here\n", []string{"r0.hcl:", "No resources"}},
}

func TestErrors(t *testing.T) {
	for _, tc := range errorCases {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := Parse("r0.hcl", []byte(tc.src), LoadOptions{})
			checkDiagnosticsError(t, cfg, err, tc.want)
		})
	}
}

func checkDiagnosticsError(t *testing.T, cfg *Config, err error, want []string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error; want one mentioning %q", want)
	}
	if cfg != nil {
		t.Errorf("partial config returned with error")
	}
	var de *DiagnosticsError
	var diags hcl.Diagnostics
	if !errors.As(err, &de) || !errors.As(err, &diags) || len(diags) == 0 {
		t.Errorf("error %T does not unwrap to *DiagnosticsError and hcl.Diagnostics", err)
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error does not mention %q:\n%s", w, err)
		}
	}
}

func TestEveryProblemReported(t *testing.T) {
	src := withTwoNodes(`protocol = "D"
  net {
    transport = "udp"
    timeout   = "6"
  }
  connection "alpha" "zulu" {}`)
	_, err := Parse("r0.hcl", []byte(src), LoadOptions{})
	checkDiagnosticsError(t, nil, err, nil)
	lines := strings.Split(err.Error(), "\n")
	wantPrefixes := []string{"r0.hcl:12:14: Invalid protocol", "r0.hcl:14:17: Unknown transport", "r0.hcl:15:17: Invalid duration", "r0.hcl:17:22: Unknown node"}
	if len(lines) != len(wantPrefixes) {
		t.Fatalf("got %d lines, want %d:\n%s", len(lines), len(wantPrefixes), err)
	}
	for i, p := range wantPrefixes {
		if !strings.HasPrefix(lines[i], p) {
			t.Errorf("line %d = %q; want prefix %q", i, lines[i], p)
		}
	}
	var de *DiagnosticsError
	if errors.As(err, &de) && de.Files["r0.hcl"] == nil {
		t.Errorf("DiagnosticsError.Files lacks r0.hcl")
	}
}

func writeFiles(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, src := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestLoadDirSeveralFiles(t *testing.T) {
	r1 := strings.Replace(withTwoNodes(""), `"r0"`, `"r1"`, 1)
	dir := writeFiles(t, map[string]string{
		"b.hcl":     r1,
		"a.hcl":     withTwoNodes(""),
		"notes.txt": "not configuration",
	})
	if err := os.Mkdir(filepath.Join(dir, "sub.hcl"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(dir, "b.hcl"), filepath.Join(dir, "link.hcl.bak")); err != nil {
		t.Fatal(err)
	}
	cfg, err := LoadDir(dir, LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Resources) != 2 || cfg.Resources[0].Name != "r0" || cfg.Resources[1].Name != "r1" {
		t.Fatalf("resources = %v; want r0 (a.hcl) then r1 (b.hcl)", cfg.Resources)
	}
	if got, want := cfg.Resources[1].DeclRange.Filename, filepath.Join(dir, "b.hcl"); got != want {
		t.Errorf("r1 declared in %s; want %s", got, want)
	}
}

func TestLoadDirDuplicateResourceAcrossFiles(t *testing.T) {
	dir := writeFiles(t, map[string]string{"a.hcl": withTwoNodes(""), "b.hcl": "\n" + withTwoNodes("")})
	cfg, err := LoadDir(dir, LoadOptions{})
	checkDiagnosticsError(t, cfg, err, []string{
		filepath.Join(dir, "b.hcl") + ":2:10: Duplicate resource",
		`"r0" is already defined at ` + filepath.Join(dir, "a.hcl") + ":1:1",
	})
}

func TestLoadDirReportsEveryFile(t *testing.T) {
	dir := writeFiles(t, map[string]string{"a.hcl": withTwoNodes(`protocol = "Z"`), "b.hcl": `resource "r1" {`})
	_, err := LoadDir(dir, LoadOptions{})
	// Syntax errors stop decoding, so a.hcl's protocol is not checked.
	checkDiagnosticsError(t, nil, err, []string{filepath.Join(dir, "b.hcl") + ":1:"})
	dir = writeFiles(t, map[string]string{"a.hcl": withTwoNodes(`protocol = "Z"`), "b.hcl": withTwoNodes(`protocol = "Y"`)})
	_, err = LoadDir(dir, LoadOptions{})
	checkDiagnosticsError(t, nil, err, []string{filepath.Join(dir, "a.hcl") + ":12:14", filepath.Join(dir, "b.hcl") + ":12:14", "Duplicate resource"})
}

func TestLoadDirMissing(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nope")
	_, err := LoadDir(missing, LoadOptions{})
	if !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), missing) {
		t.Errorf("missing dir: err = %v; want fs.ErrNotExist naming the directory", err)
	}
	empty := writeFiles(t, map[string]string{"README": "x"})
	_, err = LoadDir(empty, LoadOptions{})
	if !errors.Is(err, ErrNoConfigFiles) || !strings.Contains(err.Error(), empty) {
		t.Errorf("dir without .hcl: err = %v; want ErrNoConfigFiles naming the directory", err)
	}
}
