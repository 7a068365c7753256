// Package storage is a node's disk for one resource, below the driver: it
// opens the backing disk, the metadata (internal or external) and the
// consistent-resync undo log, checks that they belong to this node and
// resource, and recovers what an unclean shutdown or an interrupted resync
// left before anything else may write. It starts no goroutine and knows
// nothing of NBD, the engine's mutex or the links: the driver (package
// node) runs the goroutines over what it owns.
//
// What it owns:
//
//   - Open, CreateMetadata and DumpMetadata (disk.go): the disks' layout
//     and one cleanup of what was opened when attaching fails. Config is
//     all it knows of the configuration.
//   - Recovery at attach, in this order: the undo log's session
//     (undorecovery.go: a rollback the operator asked for, or one a crash
//     interrupted; a finished session discarded), then the activity log of
//     an unclean shutdown (alrecovery.go: its extents marked for every
//     peer).
//   - The flush gate (SyncGate, syncgate.go): the one owner of the backing
//     disk's flushes, which keeps a failed flush from passing for a
//     successful one.
//   - The activity log's policy (ALTable, altable.go): which extents are
//     active, when one may be retired, which transaction makes an
//     activation durable. The driver's activity log (its writer goroutine,
//     its waits) drives it.
//   - The copy-before-write layer of a consistent resync (UndoGuard,
//     UndoRegion, undoguard.go).
//
// The on-disk formats these use (superblock, bitmaps, activity-log slots,
// undo-log records) are package core/meta's; this package is what the
// node does with them at run time.
//
// The data area is a stack of layers, each an Area over the next: the
// UndoRegion over the driver's activity-log region over Disk.Region
// (a GatedRegion of the backing disk). A write goes down the stack: its old
// blocks saved while a consistent resync runs, its extents made durably
// active, then the disk.
package storage
