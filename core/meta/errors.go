package meta

import "errors"

// Errors returned by this package. They are wrapped with %w together with
// the details (which offset, which slot, which values), so test them with
// errors.Is, never by string.
var (
	// ErrNoMetadata means that neither superblock slot at the given offset
	// carries the georepl magic: the area was never initialised (or was
	// wiped). The operator's next step is `georepl create-md`, unless the
	// device is known to hold georepl data, in which case the offset is
	// wrong (for internal metadata: the slot count or block size differ from
	// those it was created with).
	ErrNoMetadata = errors.New("no georepl metadata")

	// ErrCorrupt means that metadata is present but unusable: both
	// superblock slots fail their checksum or their validation, or a
	// bitmap has bits set beyond its last block. The message names
	// each slot and what is wrong with it.
	ErrCorrupt = errors.New("corrupt georepl metadata")

	// ErrVersion means that a superblock slot has a valid checksum but a
	// format version this build does not read (see FormatVersion). A newer
	// georepl wrote it; upgrade rather than recreate.
	ErrVersion = errors.New("unsupported metadata format version")

	// ErrTruncated means that the device ends before the metadata layout
	// recorded in the superblock does: the external file was truncated or
	// the backing device shrank.
	ErrTruncated = errors.New("metadata truncated")

	// ErrExists is returned by Create when the target area already holds
	// georepl metadata (valid or damaged) and force was not given.
	ErrExists = errors.New("georepl metadata already present")

	// ErrForeign is returned by Store.Check when the metadata belongs to
	// another resource or node, or describes another data size or block
	// size than the configuration.
	ErrForeign = errors.New("foreign metadata")

	// ErrTooSmall is returned by InternalLayout when the device cannot hold
	// the metadata and at least one block of data.
	ErrTooSmall = errors.New("device too small")

	// ErrInvalidParams reports parameters outside the ranges documented on
	// Params, or a metadata offset that is negative or not PageSize aligned.
	ErrInvalidParams = errors.New("invalid metadata parameters")

	// ErrImmutable is returned by Store.UpdateSuperblock when the update
	// function changed a field fixed at creation (Resource, NodeID, Slots,
	// DataSize, BlockSize, or the length of BitmapUUID). Nothing is written.
	ErrImmutable = errors.New("immutable superblock field changed")

	// ErrSlot reports a bitmap slot index out of range, or the node's own
	// slot, which is never used.
	ErrSlot = errors.New("invalid bitmap slot")

	// ErrBitmapShape reports a bitmap whose length is not BitmapWords, a set
	// bit beyond BitmapBits, or a page index out of range.
	ErrBitmapShape = errors.New("bitmap does not match the metadata layout")
)
