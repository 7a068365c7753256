package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/georepl/georepl/configs"
	"github.com/georepl/georepl/transports/nodetls"
)

func tlsCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "tls",
		Short: "Make the certificates of the nodes' TLS identities",
	}
	var dir, out string
	var days int
	initCmd := &cobra.Command{
		Use:   "init --config DIR --out DIR",
		Short: "Create a CA and a key and certificate for every node of the configuration",
		Long: `Create, in OUT (which must not hold them already), a certificate authority (ca.crt,
ca.key) and, for every node named in the configuration, NAME.crt and NAME.key: ECDSA
P-256 keys, certificates naming the node as georepl://node/NAME, for client and server
use. Keys are written 0600. Then print, for each node, the commands that install its
files where the configuration's tls blocks say (or a tls block to add). Keep ca.key off
the nodes: whoever holds it can make a certificate for any node.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(dir)
			if err != nil {
				return err
			}
			return tlsInit(cfg, out, time.Duration(days)*24*time.Hour, time.Now(), cmd.OutOrStdout())
		},
	}
	initCmd.Flags().StringVar(&dir, "config", "/etc/georepl", "configuration directory")
	initCmd.Flags().StringVar(&out, "out", "", "folder for the new files (created if missing)")
	initCmd.Flags().IntVar(&days, "days", 825, "validity of the node certificates, in days (the CA's is ten years)")
	initCmd.MarkFlagRequired("out")
	cmd.AddCommand(initCmd)
	return cmd
}

// caValidity is the CA's validity; node certificates are renewed with the
// same CA (tls init makes a new one).
const caValidity = 10 * 365 * 24 * time.Hour

// tlsInit writes a CA and the certificate and key of every node of cfg
// into out, and tells on w how to install them.
func tlsInit(cfg *configs.Config, out string, validity time.Duration, now time.Time, w io.Writer) error {
	if validity <= 0 {
		return fmt.Errorf("--days must be at least 1")
	}
	var nodes []string
	for _, r := range cfg.Resources {
		for _, n := range r.Nodes {
			if !slices.Contains(nodes, n.Name) {
				nodes = append(nodes, n.Name)
			}
		}
	}
	exports := exportHosts(cfg)
	files := []string{"ca.crt", "ca.key"}
	for _, n := range nodes {
		files = append(files, n+".crt", n+".key")
	}
	if len(exports) > 0 {
		files = append(files, "export-ca.crt", "export-ca.key", "client.crt", "client.key")
		for _, n := range nodes {
			if exports[n] != nil {
				files = append(files, n+"-export.crt", n+"-export.key")
			}
		}
	}
	for _, f := range files {
		if _, err := os.Lstat(filepath.Join(out, f)); !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%s already exists (or cannot be checked: %v): tls init does not overwrite; choose another --out", filepath.Join(out, f), err)
		}
	}
	if err := os.MkdirAll(out, 0o700); err != nil {
		return err
	}
	ca, err := nodetls.NewCA("georepl CA", caValidity, now)
	if err != nil {
		return err
	}
	if err := writeNew(filepath.Join(out, "ca.crt"), ca.CertPEM, 0o644); err != nil {
		return err
	}
	if err := writeNew(filepath.Join(out, "ca.key"), ca.KeyPEM, 0o600); err != nil {
		return err
	}
	for _, n := range nodes {
		issued, err := ca.Issue(n, validity, now)
		if err != nil {
			return err
		}
		if err := writeNew(filepath.Join(out, n+".crt"), issued.CertPEM, 0o644); err != nil {
			return err
		}
		if err := writeNew(filepath.Join(out, n+".key"), issued.KeyPEM, 0o600); err != nil {
			return err
		}
	}
	if len(exports) > 0 {
		if err := exportInit(nodes, exports, out, validity, now); err != nil {
			return err
		}
	}
	fmt.Fprintf(w, "Wrote a CA and the certificates of %d nodes to %s (node certificates valid until %s).\n",
		len(nodes), out, now.Add(validity).UTC().Format("2006-01-02"))
	fmt.Fprintf(w, "Keep %s off the nodes: whoever holds it can make a certificate for any node.\n", filepath.Join(out, "ca.key"))
	for _, n := range nodes {
		fmt.Fprintf(w, "\n# on node %s, with %s, %s and %s copied there (e.g. with scp):\n", n,
			filepath.Join(out, "ca.crt"), filepath.Join(out, n+".crt"), filepath.Join(out, n+".key"))
		installed := map[string]bool{}
		install := func(files ...fileInstall) {
			for _, f := range files {
				if f.dst == "" || installed[f.dst] {
					continue
				}
				installed[f.dst] = true
				fmt.Fprintf(w, "install -D -m %s %s %s\n", f.mode, f.src, f.dst)
			}
		}
		for _, r := range cfg.Resources {
			self, err := r.Node(n)
			if err != nil {
				continue
			}
			if self.TLS == nil {
				fmt.Fprintf(w, "# resource %s has no tls block yet: add to it, for example,\n#   tls {\n#     ca   = \"/etc/georepl/tls/ca.crt\"\n#     cert = \"/etc/georepl/tls/node.crt\"\n#     key  = \"/etc/georepl/tls/node.key\"\n#   }\n# and install the files there.\n", r.Name)
			} else {
				install(fileInstall{filepath.Join(out, "ca.crt"), self.TLS.CA, "0644"},
					fileInstall{filepath.Join(out, n+".crt"), self.TLS.Cert, "0644"},
					fileInstall{filepath.Join(out, n+".key"), self.TLS.Key, "0600"})
			}
			if self.ExportTLS != nil {
				install(fileInstall{filepath.Join(out, "export-ca.crt"), self.ExportTLS.CA, "0644"},
					fileInstall{filepath.Join(out, n+"-export.crt"), self.ExportTLS.Cert, "0644"},
					fileInstall{filepath.Join(out, n+"-export.key"), self.ExportTLS.Key, "0600"})
			}
		}
	}
	if len(exports) > 0 {
		fmt.Fprintf(w, "\nFor the exports' clients: %s and %s are a client certificate and key of the export CA; qemu and libnbd read them from a directory as client-cert.pem and client-key.pem, with %s as ca-cert.pem. Keep %s off the nodes too.\n",
			filepath.Join(out, "client.crt"), filepath.Join(out, "client.key"), filepath.Join(out, "export-ca.crt"), filepath.Join(out, "export-ca.key"))
	}
	return nil
}

// fileInstall is a file tls init wrote (src) and where the configuration
// wants it on a node (dst), with its mode.
type fileInstall struct{ src, dst, mode string }

// exportHosts are, by node, the hosts the certificate of the node's
// export names: the host of every export with an export_tls block, or the
// host of the node's address for an export that listens on every address.
func exportHosts(cfg *configs.Config) map[string][]string {
	hosts := map[string][]string{}
	for _, r := range cfg.Resources {
		for _, n := range r.Nodes {
			if n.ExportTLS == nil {
				continue
			}
			host := ""
			if hostPort, ok := strings.CutPrefix(n.Export, "tcp:"); ok {
				host, _, _ = net.SplitHostPort(hostPort)
			}
			if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
				host, _, _ = net.SplitHostPort(n.Address)
			}
			if !slices.Contains(hosts[n.Name], host) {
				hosts[n.Name] = append(hosts[n.Name], host)
			}
		}
	}
	return hosts
}

// exportInit writes the export CA, each exporting node's export
// certificate and key, and one client certificate and key into out.
func exportInit(nodes []string, exports map[string][]string, out string, validity time.Duration, now time.Time) error {
	ca, err := nodetls.NewCA("georepl export CA", caValidity, now)
	if err != nil {
		return err
	}
	type file struct {
		name string
		data []byte
		mode os.FileMode
	}
	write := []file{{"export-ca.crt", ca.CertPEM, 0o644}, {"export-ca.key", ca.KeyPEM, 0o600}}
	for _, n := range nodes {
		if exports[n] == nil {
			continue
		}
		issued, err := ca.IssueExport(n+" export", exports[n], validity, now)
		if err != nil {
			return err
		}
		write = append(write, file{n + "-export.crt", issued.CertPEM, 0o644}, file{n + "-export.key", issued.KeyPEM, 0o600})
	}
	client, err := ca.IssueClient("georepl nbd client", validity, now)
	if err != nil {
		return err
	}
	write = append(write, file{"client.crt", client.CertPEM, 0o644}, file{"client.key", client.KeyPEM, 0o600})
	for _, f := range write {
		if err := writeNew(filepath.Join(out, f.name), f.data, f.mode); err != nil {
			return err
		}
	}
	return nil
}

// writeNew writes b to a new file at path with mode perm.
func writeNew(path string, b []byte, perm os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
