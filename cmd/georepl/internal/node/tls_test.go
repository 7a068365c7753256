package node

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/georepl/georepl/cmd/georepl/internal/checker"
	"github.com/georepl/georepl/configs"
	"github.com/georepl/georepl/transports/builtin"
	"github.com/georepl/georepl/transports/nodetls"
	"github.com/georepl/georepl/transports/nodetls/nodetlstest"
)

// syncBuffer is a log destination that tests read while daemons write.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// tlsCluster is resource r0 on nodes alpha (0), bravo (1) and dr (2),
// each with its own TLS files in dir, over one transport. Lower ids dial
// higher ones: alpha dials bravo and dr, bravo dials dr.
type tlsCluster struct {
	dir   string
	pki   *nodetlstest.PKI
	ports int
	// net is the body of the resource's net block.
	net string
	// connExtra, by node, is added to the net block of that node's
	// connections in the configuration its own daemon reads (a setting
	// the other nodes do not share).
	connExtra map[string]string
	// addrOf["node/peer"], if set, is peer's address in node's
	// configuration (a relay's, say).
	addrOf map[string]string
	// nodeExtra, by node, is added to that node's block.
	nodeExtra map[string]string
	// noCA leaves ca out of the tls blocks (peers are pinned instead).
	noCA    bool
	logs    map[string]*syncBuffer
	daemons map[string]*Daemon
}

var tlsNodes = []string{"alpha", "bravo", "dr"}

func newTLSCluster(t *testing.T, transport string) *tlsCluster {
	t.Helper()
	builtin.Register()
	port, err := checker.FreePorts(3)
	if err != nil {
		t.Fatal(err)
	}
	c := &tlsCluster{dir: t.TempDir(), pki: nodetlstest.New(t), ports: port,
		net:       fmt.Sprintf("transport = %q\n    connect_retry = \"200ms\"", transport),
		connExtra: map[string]string{}, addrOf: map[string]string{}, nodeExtra: map[string]string{}, logs: map[string]*syncBuffer{}, daemons: map[string]*Daemon{}}
	for _, n := range tlsNodes {
		c.writeFiles(t, n, c.pki, n, time.Hour)
	}
	return c
}

// files are node's TLS paths.
func (c *tlsCluster) files(node string) nodetls.Files {
	return nodetls.Files{CA: filepath.Join(c.dir, node+"-ca.crt"), Cert: filepath.Join(c.dir, node+".crt"), Key: filepath.Join(c.dir, node+".key")}
}

// writeFiles puts, at node's paths, pki's CA and a certificate naming
// named.
func (c *tlsCluster) writeFiles(t *testing.T, node string, pki *nodetlstest.PKI, named string, validity time.Duration) {
	t.Helper()
	issued, err := pki.CA.Issue(named, validity, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	f := c.files(node)
	for path, b := range map[string][]byte{f.CA: pki.CA.CertPEM, f.Cert: issued.CertPEM, f.Key: issued.KeyPEM} {
		os.Remove(path) // new files, with their mode, as renewed ones would be
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// config is the configuration node's daemon reads.
func (c *tlsCluster) config(t *testing.T, node string) *configs.Config {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "resource \"r0\" {\n  protocol = \"C\"\n  net {\n    %s\n  }\n", c.net)
	for id, n := range tlsNodes {
		f := c.files(n)
		addr := c.addrOf[node+"/"+n]
		if addr == "" {
			addr = c.addr(n)
		}
		ca := fmt.Sprintf("ca = %q", f.CA)
		if c.noCA {
			ca = ""
		}
		fmt.Fprintf(&b, "  node %q {\n    id = %d\n    address = %q\n    disk = %q\n    tls {\n      %s\n      cert = %q\n      key = %q\n    }\n%s\n  }\n",
			n, id, addr, filepath.Join(c.dir, n+".img"), ca, f.Cert, f.Key, c.nodeExtra[n])
	}
	if extra := c.connExtra[node]; extra != "" {
		for _, peer := range tlsNodes {
			if peer != node {
				fmt.Fprintf(&b, "  connection %q %q {\n    net {\n      %s\n    }\n  }\n", node, peer, extra)
			}
		}
	}
	b.WriteString("}\n")
	cfg, err := configs.Parse(filepath.Join(c.dir, node+".hcl"), []byte(b.String()), configs.LoadOptions{})
	if err != nil {
		t.Fatalf("%s's configuration: %v\n%s", node, err, b.String())
	}
	return cfg
}

// addr is where node listens.
func (c *tlsCluster) addr(node string) string {
	return fmt.Sprintf("127.0.0.1:%d", c.ports+slices.Index(tlsNodes, node))
}

// start brings node up; adjust, if not nil, changes its daemon before.
func (c *tlsCluster) start(t *testing.T, node string, adjust func(d *Daemon)) {
	t.Helper()
	logs := &syncBuffer{}
	d := startNode(t, c.config(t, node), node, 16<<20, logs, Options{}, adjust)
	c.logs[node], c.daemons[node] = logs, d
}

// peerConn is node's connection state towards peer.
func (c *tlsCluster) peerConn(t *testing.T, node, peer string) string {
	t.Helper()
	st, err := c.daemons[node].Status("r0")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range st[0].Peers {
		if p.Name == peer {
			return p.Conn
		}
	}
	t.Fatalf("%s has no peer %s", node, peer)
	return ""
}

func (c *tlsCluster) waitConnected(t *testing.T, node, peer string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for c.peerConn(t, node, peer) != "Connected" {
		if time.Now().After(deadline) {
			t.Fatalf("%s did not connect to %s; its log:\n%s", node, peer, c.logs[node].String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitLog waits until node's log has a line with every one of words.
func (c *tlsCluster) waitLog(t *testing.T, node string, words ...string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		for _, line := range strings.Split(c.logs[node].String(), "\n") {
			found := true
			for _, w := range words {
				found = found && strings.Contains(line, w)
			}
			if found {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s's log has no line with %q:\n%s", node, words, c.logs[node].String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestTLSClusterConnects(t *testing.T) {
	for _, transport := range []string{"tcp", "quic"} {
		t.Run(transport, func(t *testing.T) {
			c := newTLSCluster(t, transport)
			for _, n := range tlsNodes {
				c.start(t, n, nil)
			}
			c.waitConnected(t, "alpha", "bravo")
			c.waitConnected(t, "alpha", "dr")
			c.waitConnected(t, "bravo", "dr")
			st, _ := c.daemons["alpha"].StatusNow("r0")
			if p := st[0].Peers[0]; p.TLS != "required" || p.Auth != "certificate" {
				t.Errorf("alpha's status of %s: tls %q auth %q, want required, certificate", p.Name, p.TLS, p.Auth)
			}
			// Both ends show the certificate the other proved it holds,
			// as the dialer and as the listener.
			for _, ends := range [][2]string{{"alpha", "bravo"}, {"dr", "alpha"}} {
				p := peerStatus(t, c.daemons[ends[0]], ends[1])
				if p.TLSPeer == nil || p.TLSPeer.Node != ends[1] || !strings.HasPrefix(p.TLSPeer.Fingerprint, "sha256:") {
					t.Errorf("%s's status of %s: peer certificate %+v, want one naming %s", ends[0], ends[1], p.TLSPeer, ends[1])
				}
			}
			var text strings.Builder
			WriteStatus(&text, st)
			if !strings.Contains(text.String(), "tls peer: node bravo, certificate sha256:") {
				t.Errorf("alpha's status says:\n%s\nwant a line with bravo's certificate", text.String())
			}
		})
	}
}

// TestTLSRefusals: bravo comes with credentials its peers must refuse;
// alpha (which dials bravo) and dr (which bravo dials) each refuse it and
// log why, bravo logs why too, and alpha and dr stay connected.
func TestTLSRefusals(t *testing.T) {
	for _, transport := range []string{"tcp", "quic"} {
		for _, tc := range []struct {
			name string
			// setUp changes bravo's files or configuration; adjust its
			// daemon (nil: none).
			setUp func(t *testing.T, c *tlsCluster) func(d *Daemon)
			// The words of a line of alpha's log (it dials bravo), of
			// dr's (bravo dials it) and of bravo's; nil: none expected.
			alpha, dr, bravo []string
		}{
			{
				name: "AnotherNodesCertificate",
				setUp: func(t *testing.T, c *tlsCluster) func(d *Daemon) {
					// A valid certificate, of node charlie: Load refuses
					// it for bravo, so the daemon is handed it directly.
					imposter := c.pki.Identity(t, "charlie", time.Hour)
					return func(d *Daemon) { d.identities["r0"] = imposter }
				},
				alpha: []string{`names node \"charlie\"`, `node \"bravo\" is expected`},
				dr:    []string{`names node \"charlie\"`, `node \"bravo\" is expected`},
				bravo: []string{"refused by the peer", `names node \"charlie\"`},
			},
			{
				// bravo's certificate comes from another CA, and bravo
				// trusts the resource's CA (which is public).
				name: "AnotherCA",
				setUp: func(t *testing.T, c *tlsCluster) func(d *Daemon) {
					foreign := *nodetlstest.New(t).Identity(t, "bravo", time.Hour)
					return func(d *Daemon) {
						foreign.Roots = d.identities["r0"].Roots
						d.identities["r0"] = &foreign
					}
				},
				alpha: []string{"connecting failed", "unknown authority"},
				dr:    []string{"refusing connection", "unknown authority"},
				bravo: []string{"bad certificate"},
			},
			{
				// bravo has a CA of its own, which signed its certificate.
				name: "WholeOtherPKI",
				setUp: func(t *testing.T, c *tlsCluster) func(d *Daemon) {
					c.writeFiles(t, "bravo", nodetlstest.New(t), "bravo", time.Hour)
					return nil
				},
				alpha: []string{"connecting failed", "unknown authority"},
				bravo: []string{"connecting failed", "unknown authority"},
			},
			{
				name: "ExpiredCertificate",
				setUp: func(t *testing.T, c *tlsCluster) func(d *Daemon) {
					expired := c.pki.Identity(t, "bravo", -time.Hour)
					return func(d *Daemon) { d.identities["r0"] = expired }
				},
				alpha: []string{"connecting failed", "expired"},
				dr:    []string{"refusing connection", "expired"},
				bravo: []string{"bad certificate"},
			},
			{
				name: "NoClientCertificate",
				setUp: func(t *testing.T, c *tlsCluster) func(d *Daemon) {
					return func(d *Daemon) {
						id := *d.identities["r0"]
						id.Certificate = tls.Certificate{}
						d.identities["r0"] = &id
					}
				},
				alpha: []string{"connecting failed"}, // bravo cannot serve without a certificate either
				dr:    []string{"refusing connection", "no client certificate"},
				bravo: []string{"connecting failed"},
			},
			{
				name: "Plaintext",
				setUp: func(t *testing.T, c *tlsCluster) func(d *Daemon) {
					c.connExtra["bravo"] = "tls = \"off\"\n      shared_secret = \"s\""
					return nil
				},
				alpha: []string{"refused by the peer", "tls = \\\"off\\\""},
				dr:    []string{"refusing connection", "requires TLS", "without a certificate"},
				bravo: []string{"refused by the peer", "requires TLS"},
			},
		} {
			t.Run(transport+"/"+tc.name, func(t *testing.T) {
				c := newTLSCluster(t, transport)
				adjust := tc.setUp(t, c)
				c.start(t, "alpha", nil)
				c.start(t, "dr", nil)
				c.start(t, "bravo", adjust)
				c.waitConnected(t, "alpha", "dr")
				for node, words := range map[string][]string{"alpha": tc.alpha, "dr": tc.dr, "bravo": tc.bravo} {
					if words != nil {
						c.waitLog(t, node, words...)
					}
				}
				for _, n := range []string{"alpha", "dr"} {
					if got := c.peerConn(t, n, "bravo"); got == "Connected" {
						t.Errorf("%s is connected to the refused bravo", n)
					}
				}
				if got := c.peerConn(t, "alpha", "dr"); got != "Connected" {
					t.Errorf("alpha-dr is %s while bravo is refused, want Connected", got)
				}
			})
		}
	}
}

// TestTLSFilesRefusedAtStart: the daemon refuses to start on TLS files
// it cannot use, naming the configuration line.
func TestTLSFilesRefusedAtStart(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setUp func(t *testing.T, c *tlsCluster)
		want  []string
	}{
		{"ReadableKey", func(t *testing.T, c *tlsCluster) {
			if err := os.Chmod(c.files("alpha").Key, 0o640); err != nil {
				t.Fatal(err)
			}
		}, []string{"alpha.hcl:", `tls key "`, "readable by group or others (mode 0640)", "chmod 600"}},
		{"MissingCert", func(t *testing.T, c *tlsCluster) {
			if err := os.Remove(c.files("alpha").Cert); err != nil {
				t.Fatal(err)
			}
		}, []string{"alpha.hcl:", `tls cert "`, "no such file"}},
		{"AnotherNodesCertificate", func(t *testing.T, c *tlsCluster) {
			c.writeFiles(t, "alpha", c.pki, "bravo", time.Hour)
		}, []string{"alpha.hcl:", `names node "bravo", but this daemon is node "alpha"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newTLSCluster(t, "tcp")
			tc.setUp(t, c)
			_, err := NewDaemon(c.config(t, "alpha"), "alpha", slog.New(slog.NewTextHandler(&syncBuffer{}, nil)), Options{})
			for _, w := range tc.want {
				if err == nil || !strings.Contains(err.Error(), w) {
					t.Fatalf("NewDaemon: %v, want an error with %q", err, w)
				}
			}
		})
	}
}
