package main

import (
	"github.com/spf13/cobra"

	"github.com/georepl/georepl/cmd/georepl/internal/admin"
)

func resizeCmd() *cobra.Command {
	var assumeClean bool
	cmd := &cobra.Command{
		Use:   "resize [--assume-clean] RESOURCE",
		Short: "Grow RESOURCE to what its grown backing disk holds, online",
		Long: `After growing the backing disk (file or block device) of RESOURCE on this node, make
the resource use the new space without taking it down: the metadata moves to the disk's
new end (a crash leaves either the old size or the new one, each with all its data),
the bitmaps grow, and the export and an attached /dev/nbdX report the new size (a ublk
device cannot change its size on Linux 6.12: resize is refused while one is attached).
Only growing is possible; a disk that shrank or did not grow enough is refused with the
reason. Internal metadata only.

Run it on every node: the connections are closed at the resize and a peer is accepted
again once it runs at the same size (status shows why it is not). The new space is marked
out of sync towards every peer and resynchronised; --assume-clean declares it identical
on every node instead (zero everywhere, as a new file or a discarded volume reads), and
only the area the old metadata held is resynchronised.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, a []string) error {
			return call(cmd, admin.Request{Verb: "resize", Resource: a[0], AssumeClean: assumeClean})
		},
	}
	cmd.Flags().BoolVar(&assumeClean, "assume-clean", false, "declare the new space identical (zero) on every node: no resync of it")
	return cmd
}
