package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/georepl/georepl/cmd/georepl/internal/checker"
	"github.com/georepl/georepl/kmod/nbd"
)

func checkCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Crash-consistency checker: tagged writes, a log of completions, verification of images",
		Long: `The crash-consistency checker, for your own setup as much as for georepl's tests.

  georepl check write  --export unix:/run/georepl/r0.sock --log run.log
      writes tagged 4 KiB blocks through the export until interrupted or until a write
      fails (e.g. the primary died), logging every submission and completion; with
      --tls-certificates DIR it starts TLS (an export with export_tls);
  georepl check verify --log run.log --image /dev/vg0/r0 [--durable]
      checks a node's image against the log: write-order consistency always, and with
      --durable (protocol C peers) that every completed write is present;
  georepl check soak   --runs 100 | --duration 1h
      runs a four-node cluster on loopback (protocol C, B and A peers), kills the primary
      at random moments, verifies every survivor and the resync, and prints the count of
      runs and failures.`,
	}
	cmd.AddCommand(checkWriteCmd(), checkVerifyCmd(), checkSoakCmd())
	return cmd
}

func checkWriteCmd() *cobra.Command {
	var export, logPath, name, tlsDir string
	var blocks uint64
	var depth, flushEvery int
	cmd := &cobra.Command{
		Use:   "write --export SPEC --log FILE",
		Short: "Write tagged blocks through an NBD export, logging completions",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			client, err := dialExport(ctx, export, name, tlsDir)
			if err != nil {
				return err
			}
			defer client.Close()
			if blocks == 0 {
				blocks = uint64(client.Size()) / checker.BlockSize
			}
			w := checker.Workload{Run: rand.Uint64() >> 1, Blocks: blocks, Depth: depth, FlushEvery: flushEvery}
			log, err := checker.CreateLog(logPath, w.Run, w.FirstBlock, w.Blocks)
			if err != nil {
				return err
			}
			n, err := checker.RunWorkload(ctx, client, log, w)
			err = errors.Join(err, log.Close())
			fmt.Fprintf(cmd.OutOrStdout(), "%d writes completed; log in %s\n", n, logPath)
			return err
		},
	}
	cmd.Flags().StringVar(&export, "export", "", "NBD export: unix:PATH or tcp:HOST:PORT (required)")
	cmd.Flags().StringVar(&name, "name", "", "export name (default: the server's default export)")
	cmd.Flags().StringVar(&tlsDir, "tls-certificates", "", "start TLS (NBD_OPT_STARTTLS) with the files in this directory: the export's CA and a client certificate and key, as qemu and libnbd name them (ca-cert.pem, client-cert.pem, client-key.pem) or as 'georepl tls init' writes them (export-ca.crt, client.crt, client.key)")
	cmd.Flags().StringVar(&logPath, "log", "check.log", "where to write the log")
	cmd.Flags().Uint64Var(&blocks, "blocks", 0, "size of the checked region in 4 KiB blocks (default: the whole export)")
	cmd.Flags().IntVar(&depth, "depth", 8, "writes in flight")
	cmd.Flags().IntVar(&flushEvery, "flush-every", 32, "flush after this many completed writes (0: never)")
	cmd.MarkFlagRequired("export")
	return cmd
}

func checkVerifyCmd() *cobra.Command {
	var logPath, image string
	var durable bool
	cmd := &cobra.Command{
		Use:   "verify --log FILE --image PATH",
		Short: "Check a node's image against a check log",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			lf, err := os.Open(logPath)
			if err != nil {
				return err
			}
			defer lf.Close()
			h, err := checker.ReadLog(lf)
			if err != nil {
				return err
			}
			img, err := os.Open(image)
			if err != nil {
				return err
			}
			defer img.Close()
			res, err := checker.Verify(h, img, durable)
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), res)
			if !res.OK() {
				return errors.New("the image violates the checked guarantees")
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&logPath, "log", "check.log", "the log written by 'georepl check write'")
	cmd.Flags().StringVar(&image, "image", "", "the node's disk or image file (its data area starts at byte 0) (required)")
	cmd.Flags().BoolVar(&durable, "durable", false, "also require every completed write (protocol C peers)")
	cmd.MarkFlagRequired("image")
	return cmd
}

func checkSoakCmd() *cobra.Command {
	var runs int
	var duration time.Duration
	var dir, rejoin string
	var keep bool
	cmd := &cobra.Command{
		Use:   "soak [--runs N | --duration D]",
		Short: "Kill the primary of a loopback cluster at random moments and check every survivor",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if runs == 0 && duration == 0 {
				return errors.New("give --runs or --duration")
			}
			exe, err := os.Executable()
			if err != nil {
				return err
			}
			if dir == "" {
				if dir, err = os.MkdirTemp("", "georepl-soak-"); err != nil {
					return err
				}
				if !keep {
					defer os.RemoveAll(dir)
				}
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			res, err := checker.Soak(ctx, checker.SoakOptions{Bin: exe, Dir: dir, Runs: runs, Duration: duration, Seed: uint64(time.Now().UnixNano()), Out: cmd.OutOrStdout(), Rejoin: rejoin})
			if err != nil && !errors.Is(err, context.Canceled) {
				return err
			}
			for _, f := range res.Failed {
				fmt.Fprintln(cmd.OutOrStdout(), "FAILED", f)
			}
			if res.Failures > 0 {
				return fmt.Errorf("%d of %d runs failed (logs in %s)", res.Failures, res.Runs, dir)
			}
			return nil
		},
	}
	cmd.Flags().IntVar(&runs, "runs", 0, "number of kill points")
	cmd.Flags().DurationVar(&duration, "duration", 0, "run kill points for this long")
	cmd.Flags().StringVar(&dir, "dir", "", "working folder (default: a temporary one)")
	cmd.Flags().BoolVar(&keep, "keep", false, "keep the temporary folder")
	cmd.Flags().StringVar(&rejoin, "rejoin", checker.RejoinFull, "how the killed primary and lagging peers rejoin: full (fresh metadata, full sync) or bitmap (reconnect as they are)")
	return cmd
}

// dialExport connects to the NBD export at spec, with TLS and the client
// files in tlsDir if not empty. An export that requires TLS, dialled
// without, is an error that says how to give the files.
func dialExport(ctx context.Context, spec, name, tlsDir string) (*nbd.Client, error) {
	if tlsDir == "" {
		client, err := nbd.Dial(ctx, spec, name)
		var exportErr *nbd.ExportError
		if errors.As(err, &exportErr) && exportErr.TLSRequired() {
			return nil, fmt.Errorf("%w: give --tls-certificates DIR, a directory with the export's CA and a client certificate and key", err)
		}
		return client, err
	}
	config, err := nbd.LoadClientTLS(tlsDir)
	if err != nil {
		return nil, err
	}
	return nbd.DialTLS(ctx, spec, name, config)
}
