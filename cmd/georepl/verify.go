package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/georepl/georepl/cmd/georepl/internal/admin"
	"github.com/georepl/georepl/cmd/georepl/internal/node"
)

func verifyCmd() *cobra.Command {
	var timeout time.Duration
	var noWait bool
	cmd := &cobra.Command{
		Use:   "verify RESOURCE [PEER]",
		Short: "On the Primary: compare the data with PEER (default: every peer in sync) by checksum, online",
		Long: `Compare RESOURCE's data on this node, the Primary, with PEER's (default: every connected
peer in sync) while the application keeps writing: both nodes hash the device in chunks,
each at the same point of the write stream, with the connection's csums algorithm (xxh64
when csums is "none"). Verify changes no data. Blocks that differ are printed and marked
out of sync; 'georepl disconnect' and 'georepl connect' resynchronise them.

The command waits for the end and prints the result per peer (a progress line per peer
on a terminal); --no-wait only starts it, and 'georepl status' shows the progress and
the result.`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, a []string) error {
			req := admin.Request{Verb: "verify", Resource: a[0]}
			if len(a) == 2 {
				req.Peer = a[1]
			}
			if err := call(cmd, req); err != nil {
				return err
			}
			if noWait {
				return nil
			}
			ctx := cmd.Context()
			if timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, timeout)
				defer cancel()
			}
			cmd.SetContext(ctx)
			return waitVerify(cmd, a[0], req.Peer, isTerminal(os.Stdout))
		},
	}
	cmd.Flags().DurationVar(&timeout, "timeout", 0, "give up waiting after this long (0: wait forever); the verify goes on")
	cmd.Flags().BoolVar(&noWait, "no-wait", false, "start the verify and return")
	return cmd
}

// waitVerify polls the status until no verify with the peer (every peer
// when empty) runs, then prints the results.
func waitVerify(cmd *cobra.Command, res, peer string, tty bool) error {
	out := cmd.OutOrStdout()
	live := liveLines{out: out}
	for {
		sts, err := fetchStatus(cmd, admin.Request{Verb: "status", Resource: res})
		if err != nil {
			if cmd.Context().Err() != nil {
				return fmt.Errorf("verify %s: gave up waiting; it goes on (see georepl status)", res)
			}
			return err
		}
		running := false
		var lines []string
		for _, p := range sts[0].Peers {
			if p.Verify == nil || (peer != "" && p.Name != peer) {
				continue
			}
			running = running || p.Verify.Running
			lines = append(lines, fmt.Sprintf("%s: %s", p.Name, p.Verify.Summary()))
		}
		if tty {
			live.draw(lines)
		}
		if !running {
			if !tty {
				for _, l := range lines {
					fmt.Fprintln(out, l)
				}
			}
			return verifyResult(sts[0], peer)
		}
		select {
		case <-cmd.Context().Done():
			return fmt.Errorf("verify %s: gave up waiting; it goes on (see georepl status)", res)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// verifyResult is an error if a verify stopped before the end.
func verifyResult(st *node.ResourceStatus, peer string) error {
	for _, p := range st.Peers {
		if p.Verify != nil && (peer == "" || p.Name == peer) && p.Verify.Stopped != "" {
			return fmt.Errorf("verify of %s with %s stopped before the end: %s", st.Name, p.Name, p.Verify.Stopped)
		}
	}
	return nil
}
