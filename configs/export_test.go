package configs

import (
	"strings"
	"testing"
)

// withExport is withTwoNodes with alpha's node block extended by lines
// (from line 6 on).
func withExport(lines string) string {
	return strings.Replace(withTwoNodes(""), `disk    = "/dev/a"`, "disk    = \"/dev/a\"\n"+lines, 1)
}

const exportTLSBlock = `    export_tls {
      ca   = "/etc/georepl/export/clients-ca.crt"
      cert = "/etc/georepl/export/export.crt"
      key  = "/etc/georepl/export/export.key"
    }`

func TestExportTLS(t *testing.T) {
	cfg, err := Parse("r0.hcl", []byte(withExport("    export = \"tcp:192.0.2.1:10809\"\n"+exportTLSBlock)), LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	alpha, _ := cfg.Resources[0].Node("alpha")
	f := alpha.ExportTLS
	if f == nil || f.CA != "/etc/georepl/export/clients-ca.crt" || f.Cert != "/etc/georepl/export/export.crt" || f.Key != "/etc/georepl/export/export.key" {
		t.Fatalf("alpha's export TLS files = %+v", f)
	}
	if got := f.Where("key"); got != "r0.hcl:10:7" {
		t.Errorf("the export key is at %s, want r0.hcl:10:7", got)
	}
	bravo, _ := cfg.Resources[0].Node("bravo")
	if bravo.ExportTLS != nil {
		t.Errorf("bravo has export TLS files %+v, but no export_tls block", bravo.ExportTLS)
	}
}

// TestExportOnTheNetwork: a tcp export that is not on a loopback address
// needs TLS, or export_insecure = true to say that anyone who reaches the
// port may read and write the device.
func TestExportOnTheNetwork(t *testing.T) {
	for _, export := range []string{"unix:/run/georepl/r0.sock", "tcp:127.0.0.1:10809", "tcp:127.0.0.2:10809", "tcp:[::1]:10809", "tcp:localhost:10809"} {
		if _, err := Parse("r0.hcl", []byte(withExport("    export = \""+export+"\"")), LoadOptions{}); err != nil {
			t.Errorf("export = %q without TLS: %v, want it accepted", export, err)
		}
	}
	for _, export := range []string{"tcp:0.0.0.0:10809", "tcp:192.0.2.1:10809", "tcp:[::]:10809", "tcp:nbd.example.com:10809"} {
		_, err := Parse("r0.hcl", []byte(withExport("    export = \""+export+"\"")), LoadOptions{})
		want := "r0.hcl:6:14: Unprotected export; export = \"" + export + "\" serves the device in the clear to anyone who reaches"
		if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "export_tls") || !strings.Contains(err.Error(), "export_insecure = true") {
			t.Errorf("export = %q without TLS: %v, want an error containing %q naming export_tls and export_insecure", export, err, want)
		}
		cfg, err := Parse("r0.hcl", []byte(withExport("    export = \""+export+"\"\n    export_insecure = true")), LoadOptions{})
		if err != nil {
			t.Errorf("export = %q with export_insecure = true: %v", export, err)
			continue
		}
		if alpha, _ := cfg.Resources[0].Node("alpha"); !alpha.ExportInsecure {
			t.Errorf("export = %q: ExportInsecure is false", export)
		}
	}
}

func TestExportTLSErrors(t *testing.T) {
	for _, tc := range []struct {
		name, lines, want string
	}{
		{"without export", exportTLSBlock, `r0.hcl:6:5: Export TLS without export; export_tls needs an export in the same node block`},
		{"missing key", "    export = \"tcp:192.0.2.1:10809\"\n    export_tls {\n      ca   = \"/ca\"\n      cert = \"/c\"\n    }",
			`r0.hcl:7:5: Missing export TLS file; export_tls has no key`},
		{"with a kernel nbd device", "    export = \"tcp:127.0.0.1:10809\"\n    device = \"nbd\"\n" + exportTLSBlock,
			`r0.hcl:7:14: Device without TLS; device = "nbd" attaches the kernel's nbd driver through the export, and it cannot speak TLS`},
		{"with device auto", "    export = \"tcp:127.0.0.1:10809\"\n    device = \"auto\"\n" + exportTLSBlock,
			`r0.hcl:7:14: Device without TLS; device = "auto"`},
		{"insecure and TLS", "    export = \"tcp:192.0.2.1:10809\"\n    export_insecure = true\n" + exportTLSBlock,
			`r0.hcl:7:23: Contradictory export settings; export_insecure = true accepts an export without TLS, but this node has an export_tls block`},
		{"duplicate block", "    export = \"tcp:192.0.2.1:10809\"\n" + exportTLSBlock + "\n" + exportTLSBlock,
			`Duplicate export_tls block`},
	} {
		_, err := Parse("r0.hcl", []byte(withExport(tc.lines)), LoadOptions{})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error containing %q", tc.name, err, tc.want)
		}
	}
	// A ublk device is served by the daemon itself, not through the export.
	if _, err := Parse("r0.hcl", []byte(withExport("    export = \"tcp:192.0.2.1:10809\"\n    device = \"ublk\"\n"+exportTLSBlock)), LoadOptions{}); err != nil {
		t.Errorf("export_tls with a ublk device: %v", err)
	}
}
