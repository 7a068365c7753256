package main

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/georepl/georepl/configs"
	"github.com/georepl/georepl/plugins/host"
	"github.com/georepl/georepl/plugins/sdk"
	"github.com/georepl/georepl/transports"
	"github.com/georepl/georepl/transports/builtin"
	"github.com/georepl/georepl/transports/quic"
	"github.com/georepl/georepl/transports/tcp"
)

// georeplVersion is this binary's module version, "(devel)" when built
// from a work tree.
func georeplVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		return bi.Main.Version
	}
	return "unknown"
}

// where names the place of a block in the configuration, for errors.
func where(p *configs.Plugin) string {
	r := p.DeclRange
	return fmt.Sprintf("%s:%d:%d", r.Filename, r.Start.Line, r.Start.Column)
}

// startPlugin starts the plugin of block p; errors name the block.
func startPlugin(p *configs.Plugin, log *slog.Logger) (*host.Plugin, error) {
	pl, err := host.Start(host.Config{Name: p.Name, Path: p.Path, Args: p.Args, SHA256: p.SHA256, Config: p.Config, Log: log})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", where(p), err)
	}
	return pl, nil
}

// plugins are the plugin processes of this daemon (or validate run).
type plugins []*host.Plugin

// startPlugins starts every plugin of cfg, one process each, and
// registers each as a transport. On error it stops those it started.
func startPlugins(cfg *configs.Config, log *slog.Logger) (plugins, error) {
	var ps plugins
	for _, p := range cfg.Plugins {
		pl, err := startPlugin(p, log)
		if err != nil {
			ps.close()
			return nil, err
		}
		transports.Register(p.Name, pl)
		ps = append(ps, pl)
	}
	return ps, nil
}

func (ps plugins) close() {
	for _, p := range ps {
		p.Close()
	}
}

// pluginServeCmd serves a built-in transport as a plugin, so that the
// plugin path can be tested (and used) with georepl's own transports.
func pluginServeCmd() *cobra.Command {
	return &cobra.Command{
		Use:    "plugin-serve TRANSPORT",
		Short:  "Serve a built-in transport as a transport plugin (started by georepl itself)",
		Hidden: true,
		Args:   cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, a []string) error {
			switch a[0] {
			case "tcp": // its sockets are handed to georepl
				sdk.Serve(builtinPlugin{tcp.New()})
			case "quic": // no socket per channel: through shared-memory rings
				sdk.Serve(builtinPlugin{quic.New()})
			default:
				return fmt.Errorf("plugin-serve %s: no such built-in transport (%s)", a[0], strings.Join(builtin.Names(), ", "))
			}
			return nil
		},
	}
}

// builtinPlugin is a built-in transport served as a plugin. It takes no
// configuration.
type builtinPlugin struct{ transports.Transport }

func (builtinPlugin) Configure(config json.RawMessage) error {
	var c map[string]any
	if err := json.Unmarshal(config, &c); err != nil || len(c) > 0 {
		return fmt.Errorf("a built-in transport takes no config, got %s", config)
	}
	return nil
}

func (builtinPlugin) Version() string { return georeplVersion() }

func pluginsCmd() *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:   "plugins --config DIR",
		Short: "List the transports available: built-in and plugins, with version, path and checksum",
		Long: `List every transport the configuration in DIR can name: the built-ins, and each plugin
block's, which is started to check it (binary present, sha256 as configured, protocol
version, configuration accepted) and stopped again. Needs no daemon. Exits non-zero if a
plugin fails its check.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(dir)
			if err != nil {
				return err
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "TRANSPORT\tKIND\tVERSION\tPATH\tSHA256\tSTATE")
			for _, name := range builtin.Names() {
				fmt.Fprintf(w, "%s\tbuilt-in\t%s\t-\t-\tok\n", name, georeplVersion())
			}
			var failed []error
			for _, p := range cfg.Plugins {
				sum, state := hex.EncodeToString(p.SHA256), "ok"
				version := "-"
				pl, err := startPlugin(p, slog.New(slog.DiscardHandler))
				switch {
				case errors.Is(err, host.ErrChecksum):
					sum, state = sum+" (MISMATCH)", "checksum mismatch"
				case err != nil:
					state = "failed"
				default:
					version = pl.Info().Version
					sum += " (verified)"
					pl.Close()
				}
				if err != nil {
					failed = append(failed, err)
				}
				fmt.Fprintf(w, "%s\tplugin\t%s\t%s\t%s\t%s\n", p.Name, version, p.Path, sum, state)
			}
			w.Flush()
			for _, err := range failed {
				fmt.Fprintln(cmd.ErrOrStderr(), err)
			}
			if len(failed) > 0 {
				return fmt.Errorf("%d of %d plugins failed their check", len(failed), len(cfg.Plugins))
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "config", "/etc/georepl", "configuration directory")
	return cmd
}

// checkPlugins starts and stops every plugin of cfg, for validate.
func checkPlugins(cfg *configs.Config) error {
	var errs []error
	for _, p := range cfg.Plugins {
		pl, err := startPlugin(p, slog.New(slog.DiscardHandler))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		pl.Close()
	}
	return errors.Join(errs...)
}
