// Package meta reads and writes georepl's on-disk metadata: the superblock
// (identity, disk state, generation ids), the per-peer out-of-sync bitmaps
// and the activity log of one node of one resource.
//
// It is a leaf package: it knows nothing of the engine. Disk states are
// opaque bytes and bitmaps are []uint64 words; the engine (package core)
// gives them meaning.
//
// # Using it
//
// Metadata is either internal, at the end of the backing device whose front
// holds the data, or external, in a separate file:
//
//	// internal: the layout follows from the device size
//	dataSize, metaOff, _, err := meta.InternalLayout(devSize, slots, blockSize)
//	// external: the file needs meta.ExternalSize(dataSize, slots, blockSize) bytes
//	metaOff := int64(0)
//
//	// once, by `georepl create-md`:
//	st, err := meta.Create(dev, metaOff, meta.Params{
//		Resource: "r0", NodeID: 1, Slots: 3, DataSize: dataSize,
//		DiskState: uint8(core.Inconsistent),
//	}, false)
//
//	// at every attach:
//	st, err := meta.Open(dev, metaOff)
//	err = st.Check("r0", 1, dataSize, blockSize) // ErrForeign if not ours
//	words, err := st.ReadBitmap(peer)            // bitmap towards node peer
//	err = st.WriteBitmapPages(peer, words, dirtyPages)
//	err = st.UpdateSuperblock(func(sb *meta.Superblock) {
//		sb.Current, sb.History[0] = newGen, sb.Current
//	})
//	extents, err := st.ReadActivityLog()  // non-empty: unclean shutdown
//	err = st.WriteActivityLog(extents)    // durable on return
//
// Slots is the highest node id of the resource plus one: slot i holds the
// bitmap towards node i, and the node's own slot stays unused. Every write
// method syncs the device before returning: a nil error means durable. A
// Store is safe for concurrent use. A Device that also implements Sizer
// lets Open detect truncation without reading past its end. Summary (JSON)
// and Dump (text) describe the metadata for `georepl dump-md`.
//
// Errors are the Err* sentinels, wrapped with what went wrong and
// where (offsets, slots, stored and expected values); test them with
// errors.Is. ErrNoMetadata, ErrCorrupt, ErrVersion and ErrTruncated come
// from Open; docs/on-disk-format.md tells the operator what to do for each.
//
// # Layout
//
// All integers are little-endian; every area starts PageSize (4 KiB)
// aligned. Offsets are relative to the start of the metadata area (the
// offset given to Create and Open):
//
//	0        4 KiB   superblock slot 0 (holds even sequence numbers)
//	4 KiB    4 KiB   superblock slot 1 (holds odd sequence numbers)
//	8 KiB    256 KiB activity log: two slots of 128 KiB (see below)
//	264 KiB  S * B   bitmaps: S slots of B bytes, slot i towards node id i
//
// B is ceil(DataSize/BlockSize) bits rounded up to whole uint64 words and
// then to a PageSize multiple. Word w of a slot is stored at byte 8*w; bit
// i of the bitmap is bit i%64 (least significant first) of word i/64. A
// set bit means the block [i*BlockSize, (i+1)*BlockSize) differs from that
// peer's copy. The slot of the node itself stays zero.
//
// A superblock slot (4096 bytes):
//
//	off  size  field
//	  0     8  magic "GEOREPLM"
//	  8     4  format version (FormatVersion = 3; versions 1 and 2 are read too)
//	 12     4  flags: bit 0 = primary; other bits zero
//	 16     8  sequence number
//	 24     1  node id
//	 25     1  number of bitmap slots (1..32)
//	 26     1  disk state (opaque)
//	 27     1  resource name length (1..64)
//	 28     4  bitmap block size (power of two, 512..64 MiB)
//	 32    64  resource name (UTF-8), zero padded
//	 96     8  usable data size in bytes
//	104     8  current generation id
//	112    16  history generation ids [2]
//	128     8  activity log offset (8192)     136  8  its length (262144)
//	144     8  bitmap area offset (270336)    152  8  its length (S * B)
//	160     8  bytes per bitmap slot (B)
//	168     8  promotion time, Unix ns (version 2; zero in version 1)
//	176     8  failover term, the highest seen (version 3; zero before)
//	184    72  reserved, zero
//	256   8*S  bitmap uuid per slot (generation id the bitmap started from)
//	 ..        reserved, zero
//	4092    4  CRC32C (Castagnoli) of bytes 0..4091
//
// # Activity log
//
// The activity log is the set of active 4 MiB extents
// (ActivityLogExtentSize): extent x covers the data bytes [x*4 MiB,
// (x+1)*4 MiB). Each transaction is a full snapshot of the set, written
// by WriteActivityLog into two alternating slots (slot 0 at 8 KiB holds
// even sequence numbers, slot 1 at 136 KiB odd ones) and synced:
//
//	off    size  field
//	  0       8  magic "GEORALOG"
//	  8       8  sequence number, >= 1, in slot seq%2
//	 16       4  extent size (4 MiB)
//	 20       4  number of extents n (0..MaxActivityLogExtents)
//	 24     8*n  extent numbers, strictly increasing, each < ActivityLogExtents
//	24+8n     4  CRC32C of bytes 0..23+8n
//
// ReadActivityLog takes the valid slot with the higher sequence. A slot
// without the magic holds no transaction; a torn transaction fails its
// checksum and the other slot stands, so a write is atomic. Both slots
// without a valid transaction read as an empty log (Create zeroes the
// area: format version 1 metadata from before the activity log stays
// valid); both damaged is ErrCorrupt. Snapshots rather than a ring of
// incremental records: a few thousand extents fit in a few pages, so a
// snapshot costs one write and one sync like a ring record, and reading
// needs no replay.
//
// # Update protocol
//
// Create invalidates both slots and syncs, zeroes the activity log and the
// bitmaps and syncs, then writes sequence 0 to slot 0 and sequence 1 to
// slot 1 and syncs. UpdateSuperblock writes sequence n+1 into slot
// (n+1)%2, the slot not holding the current superblock, and syncs. Open
// takes the valid slot with the higher sequence. A torn or lost update
// therefore leaves the previous superblock in the other slot: updates are
// atomic. Bitmap pages are written in place and have no checksum; the
// engine keeps them safe by ordering (set before the data changes, clear
// after it is in sync).
package meta
