package node

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/georepl/georepl/cmd/georepl/internal/checker"
	"github.com/georepl/georepl/cmd/georepl/internal/hostile"
	"github.com/georepl/georepl/configs"
	"github.com/georepl/georepl/core/wire"
	"github.com/georepl/georepl/transports"
	"github.com/georepl/georepl/transports/builtin"
	"github.com/georepl/georepl/transports/nodetls"
	"github.com/georepl/georepl/transports/nodetls/nodetlstest"
)

// FuzzHandshakeTLS: a peer that passed TLS with bravo's valid certificate
// (so that its bytes reach the handshake's decoder) sends arbitrary bytes
// on the control channel of a connection to alpha. Whatever they are,
// alpha answers with at most its intro and a refusal, never with its hello
// (which only a peer that proved itself gets), and never takes the peer as
// connected: the proof is bound to the TLS session, which the bytes
// cannot know.
func FuzzHandshakeTLS(f *testing.F) {
	builtin.Register()
	pki := nodetlstest.New(f)
	dir := f.TempDir()
	ports, err := checker.FreePorts(2)
	if err != nil {
		f.Fatal(err)
	}
	files := nodetls.Files{CA: filepath.Join(dir, "ca.crt"), Cert: filepath.Join(dir, "alpha.crt"), Key: filepath.Join(dir, "alpha.key")}
	issued, err := pki.CA.Issue("alpha", time.Hour, time.Now())
	if err != nil {
		f.Fatal(err)
	}
	for path, b := range map[string][]byte{files.CA: pki.CA.CertPEM, files.Cert: issued.CertPEM, files.Key: issued.KeyPEM} {
		if err := os.WriteFile(path, b, 0o600); err != nil {
			f.Fatal(err)
		}
	}
	// bravo (id 0) dials alpha (id 1); nothing listens at bravo's address.
	alphaAddr := fmt.Sprintf("127.0.0.1:%d", ports+1)
	src := fmt.Sprintf(`resource "r0" {
  net { connect_retry = "1s" }
  tls {
    ca   = %q
    cert = %q
    key  = %q
  }
  node "bravo" {
    id      = 0
    address = "127.0.0.1:%d"
    disk    = %q
  }
  node "alpha" {
    id      = 1
    address = %q
    disk    = %q
  }
}
`, files.CA, files.Cert, files.Key, ports, filepath.Join(dir, "bravo.img"), alphaAddr, filepath.Join(dir, "alpha.img"))
	cfg, err := configs.Parse(filepath.Join(dir, "r0.hcl"), []byte(src), configs.LoadOptions{})
	if err != nil {
		f.Fatal(err)
	}
	rc, _ := cfg.Resource("r0")
	self, _ := rc.Node("alpha")
	if err := os.WriteFile(self.Disk, nil, 0o644); err != nil {
		f.Fatal(err)
	}
	if err := os.Truncate(self.Disk, 16<<20); err != nil {
		f.Fatal(err)
	}
	if _, err := CreateMetadata(rc, self, false); err != nil {
		f.Fatal(err)
	}
	d, err := NewDaemon(cfg, "alpha", slog.New(slog.DiscardHandler), Options{})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { d.Close() })
	if err := d.UpAll(); err != nil {
		f.Fatal(err)
	}
	bravo := pki.Identity(f, "bravo", time.Hour)

	// Seeds: bravo's intro, then an auth frame that cannot verify, a
	// hello before any proof, a refusal, a frame of the wrong version.
	frames := func(fs ...*wire.Frame) []byte {
		var b bytes.Buffer
		w := wire.NewWriter(&b, wire.CompressionNone)
		for _, fr := range fs {
			if err := w.WriteFrame(fr); err != nil {
				f.Fatal(err)
			}
		}
		if err := w.Flush(); err != nil {
			f.Fatal(err)
		}
		return b.Bytes()
	}
	peer := &hostile.Peer{}
	intro, err := hostile.Message(wire.TypeIntro, peer.Intro("r0", 0, 1), 0)
	if err != nil {
		f.Fatal(err)
	}
	hello, err := hostile.Message(wire.TypeHello, peer.Hello("r0", 0, 1), 0)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(frames(intro))
	f.Add(frames(intro, &wire.Frame{Type: wire.TypeAuth, Payload: make([]byte, 32)}))
	f.Add(frames(intro, hello))
	f.Add(frames(&wire.Frame{Type: wire.TypeRefuse, Payload: []byte("no")}))
	f.Add(frames(hello))
	f.Add([]byte{})

	f.Fuzz(func(t *testing.T, in []byte) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		p, err := hostile.DialWith(ctx, "tcp", alphaAddr, transports.Options{TLS: bravo.ClientConfig("r0", nil)})
		if err != nil {
			t.Fatalf("TLS with bravo's certificate: %v", err)
		}
		defer p.Close()
		if err := p.SendRaw(transports.ChannelControl, in); err != nil {
			return // alpha hung up already
		}
		// alpha answers at once or waits for more (up to its handshake
		// timeout). Its answers to what it has take a few milliseconds;
		// a longer wait would make each input, and the minimisation of
		// the many inputs a whole daemon's changing coverage makes look
		// new, too slow to fuzz.
		got, _ := p.ReadAll(50 * time.Millisecond)
		for i, fr := range got {
			switch {
			case fr.Type == wire.TypeIntro && i == 0:
			case fr.Type == wire.TypeRefuse:
			default:
				t.Fatalf("alpha sent a %v frame (frame %d) to a peer that proved nothing", fr.Type, i)
			}
		}
		st, err := d.Status("r0")
		if err != nil {
			t.Fatal(err)
		}
		for _, ps := range st[0].Peers {
			if ps.Conn == "Connected" {
				t.Fatalf("alpha is connected to %s", ps.Name)
			}
		}
	})
}
