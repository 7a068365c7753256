package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/georepl/georepl/configs"
	"github.com/georepl/georepl/transports/nodetls"
)

func TestTLSInit(t *testing.T) {
	dir := t.TempDir()
	tlsDir := filepath.Join(dir, "installed")
	cfg, err := configs.Parse("r0.hcl", configs.DemoTLS(dir, 7000, tlsDir), configs.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out")
	var said bytes.Buffer
	if err := tlsInit(cfg, out, 30*24*time.Hour, time.Now(), &said); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"alpha", "bravo", "dr"} {
		key := filepath.Join(out, n+".key")
		if info, err := os.Stat(key); err != nil || info.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v, mode %v; want 0600", key, err, info.Mode().Perm())
		}
		id, err := nodetls.Load(nodetls.Files{CA: filepath.Join(out, "ca.crt"), Cert: filepath.Join(out, n+".crt"), Key: key})
		if err != nil || id.Node != n {
			t.Errorf("%s's files: %v (names %v)", n, err, id)
		}
		// The printed commands install the node's files where the
		// configuration says.
		for _, cmd := range []string{
			"install -D -m 0644 " + filepath.Join(out, "ca.crt") + " " + filepath.Join(tlsDir, "ca.crt"),
			"install -D -m 0644 " + filepath.Join(out, n+".crt") + " " + filepath.Join(tlsDir, n+".crt"),
			"install -D -m 0600 " + key + " " + filepath.Join(tlsDir, n+".key"),
		} {
			if !strings.Contains(said.String(), cmd) {
				t.Errorf("tls init did not print %q:\n%s", cmd, said.String())
			}
		}
	}
	if info, err := os.Stat(filepath.Join(out, "ca.key")); err != nil || info.Mode().Perm() != 0o600 {
		t.Errorf("ca.key: %v; want mode 0600", err)
	}
	err = tlsInit(cfg, out, time.Hour, time.Now(), &said)
	if err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("a second tls init into the same folder: %v, want a refusal to overwrite", err)
	}
}
