package configs

import (
	"path/filepath"
	"testing"
	"time"
)

func TestMetricsAddress(t *testing.T) {
	cfg, err := Parse("r0.hcl", []byte(withTwoNodes("")), LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.MetricsAddress != "" {
		t.Fatalf("metrics_address defaults to %q; want off", cfg.MetricsAddress)
	}
	for _, addr := range []string{"127.0.0.1:9942", "[::1]:9942", "0.0.0.0:9942", "localhost:0"} {
		cfg, err := Parse("r0.hcl", []byte("metrics_address = \""+addr+"\"\n"+withTwoNodes("")), LoadOptions{})
		if err != nil {
			t.Fatalf("%s: %v", addr, err)
		}
		if cfg.MetricsAddress != addr {
			t.Errorf("metrics_address = %q; want %q", cfg.MetricsAddress, addr)
		}
	}
	for _, addr := range []string{":9942", "9942", "127.0.0.1", "127.0.0.1:http", "127.0.0.1:70000"} {
		cfg, err := Parse("r0.hcl", []byte("metrics_address = \""+addr+"\"\n"+withTwoNodes("")), LoadOptions{})
		checkDiagnosticsError(t, cfg, err, []string{"Invalid metrics_address", "explicit host"})
	}
	dir := writeFiles(t, map[string]string{
		"a.hcl": "metrics_address = \"127.0.0.1:9942\"\n" + withTwoNodes(""),
		"b.hcl": "metrics_address = \"127.0.0.1:9943\"\n",
	})
	cfg, err = LoadDir(dir, LoadOptions{})
	checkDiagnosticsError(t, cfg, err, []string{"Duplicate metrics_address", filepath.Join(dir, "a.hcl") + ":1:1"})
}

func TestRPOWarning(t *testing.T) {
	src := withTwoNodes(`net {
    rpo_warning = "30s"
  }
  handlers {
    rpo_exceeded = "/usr/local/bin/page-ops --rpo"
  }
  connection "alpha" "bravo" {
    net {
      rpo_warning = "2m"
    }
  }`)
	cfg, err := Parse("r0.hcl", []byte(src), LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	r := cfg.Resources[0]
	if r.Net.RPOWarning != 30*time.Second {
		t.Errorf("resource rpo_warning = %v; want 30s", r.Net.RPOWarning)
	}
	lk, err := r.Link("alpha", "bravo")
	if err != nil {
		t.Fatal(err)
	}
	if lk.Net.RPOWarning != 2*time.Minute {
		t.Errorf("connection rpo_warning = %v; want 2m", lk.Net.RPOWarning)
	}
	if got := r.Handlers.RPOExceeded; len(got) != 2 || got[0] != "/usr/local/bin/page-ops" {
		t.Errorf("rpo_exceeded = %q", got)
	}
	cfg, err = Parse("r0.hcl", []byte(withTwoNodes("handlers {\n    rpo_exceeded = \"page-ops\"\n  }")), LoadOptions{})
	checkDiagnosticsError(t, cfg, err, []string{"rpo_exceeded = \"page-ops\" must start with the absolute path"})
	cfg, err = Parse("r0.hcl", []byte(withTwoNodes("net {\n    rpo_warning = \"0s\"\n  }")), LoadOptions{})
	checkDiagnosticsError(t, cfg, err, []string{"rpo_warning", "greater than zero"})
}
