package meta

import (
	"bytes"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"sync"
	"unicode/utf8"
)

// The undo log of a consistent resync: while a node is a resync target,
// the driver saves the old content of every block before its first
// overwrite, so that the image from before the resync can be restored
// (see docs/on-disk-format.md and docs/architecture.md). It lives in a
// Device of its own (a file named in the configuration), laid out as
//
//	0        4 KiB   header slot 0 (even sequence numbers)
//	4 KiB    4 KiB   header slot 1 (odd sequence numbers)
//	8 KiB    ...     records, back to back, up to the log's capacity
//
// A header slot (4096 bytes):
//
//	off  size  field
//	  0     8  magic "GEORUNDO"
//	  8     4  format version (UndoVersion = 1)
//	 12     1  state: 0 idle, 1 active, 2 exhausted, 3 rolling back
//	 13     1  node id
//	 14     1  resource name length (1..64)
//	 15     1  disk state saved at Begin (opaque)
//	 16     8  sequence number
//	 24     8  session id (non-zero unless idle)
//	 32     8  data size in bytes
//	 40     4  block size
//	 44     4  reserved, zero
//	 48     8  current generation id saved at Begin
//	 56    16  history generation ids saved at Begin
//	 72    64  resource name, zero padded
//	136     8  capacity: the log's size in bytes, fixed at creation
//	144        reserved, zero
//	4092    4  CRC32C of bytes 0..4091
//
// A record (UndoRecordHeader bytes, then n blocks of old content):
//
//	off  size  field
//	  0     8  magic "GEORUREC"
//	  8     8  session id
//	 16     8  index: 0 for the session's first record, then +1
//	 24     8  first block number
//	 32     4  number of blocks n (>= 1)
//	 36    24  reserved, zero
//	 60     4  CRC32C of bytes 0..59 followed by the n blocks
//
// Records are appended one at a time and synced before the overwrite they
// protect, each written with zeroes in the next record's header position
// (when the capacity leaves room for it). The log's end is the first
// position that does not hold the next valid record of the session
// (magic, session, index, bounds, checksum): those zeroes, a torn last
// record, or a record of an earlier session, end it. A torn record
// protected nothing, since its overwrite waits for the sync. Anything else
// there is damage, not the end: ErrCorrupt. So is a record that fails its
// checksum while the session's next record follows it. Header updates go
// to the slot not holding the current header, as for the superblock, so
// they are atomic.

// Undo log constants; they are part of the format.
const (
	// UndoVersion is the undo log format version this package reads and
	// writes.
	UndoVersion = 1
	// UndoRecordsOffset is where records start.
	UndoRecordsOffset = 2 * PageSize
	// UndoRecordHeader is the size of a record's header.
	UndoRecordHeader = 64
	// MinUndoSize is the smallest capacity: the header slots and one
	// record of one smallest block.
	MinUndoSize = UndoRecordsOffset + UndoRecordHeader + MinBlockSize
)

// UndoState is the state of an undo log.
type UndoState uint8

const (
	// UndoIdle: no session; the node's data is not a resync target's.
	UndoIdle UndoState = iota
	// UndoActive: a session runs: every block overwritten since Begin has
	// its old content in a record, so the image of Begin can be restored.
	UndoActive
	// UndoExhausted: the log ran out of space during the session; blocks
	// were overwritten without saving, and the image of Begin is gone.
	UndoExhausted
	// UndoRollingBack: the records are being written back. A crash in
	// the middle leaves this state, and the rollback starts again (it is
	// idempotent: the records do not change).
	UndoRollingBack
)

// String returns the state's name ("active").
func (s UndoState) String() string {
	switch s {
	case UndoIdle:
		return "idle"
	case UndoActive:
		return "active"
	case UndoExhausted:
		return "exhausted"
	case UndoRollingBack:
		return "rolling back"
	}
	return fmt.Sprintf("UndoState(%d)", uint8(s))
}

// UndoHeader is the decoded content of the current header slot.
type UndoHeader struct {
	// Resource, NodeID, DataSize and BlockSize identify the data the log
	// belongs to; fixed at CreateUndo.
	Resource  string
	NodeID    uint8
	DataSize  uint64
	BlockSize uint32
	State     UndoState
	// Session names the running session's records (0 when idle).
	Session uint64
	// Disk, Current and History are what the superblock held at Begin:
	// the identity of the image a rollback restores.
	Disk    uint8
	Current uint64
	History [2]uint64
	// Capacity is the log's size in bytes, fixed at CreateUndo: a device
	// that ends before it was truncated.
	Capacity uint64
	// Seq counts header writes.
	Seq uint64
}

// ErrUndoFull is returned by UndoLog.Append when the record does not fit
// in the log's capacity; nothing was written.
var ErrUndoFull = errors.New("undo log full")

var (
	undoMagic   = [8]byte{'G', 'E', 'O', 'R', 'U', 'N', 'D', 'O'}
	recordMagic = [8]byte{'G', 'E', 'O', 'R', 'U', 'R', 'E', 'C'}
)

// UndoLog is an opened undo log. Its methods are safe for concurrent use;
// they are serialised by one mutex. It does not own the Device.
type UndoLog struct {
	dev  Device
	size int64

	mu   sync.Mutex
	hdr  UndoHeader
	tail int64  // where the next record goes
	next uint64 // the next record's index
}

// CreateUndo writes an idle undo log for the given data into dev, whose
// capacity is size bytes (at least MinUndoSize), and returns it opened.
// It writes the log's last byte, so that the device has its full size (a
// file stays sparse).
// Unless force is set it refuses, wrapping ErrExists, to overwrite a log
// that is not idle: it may be the only way back to a consistent image.
func CreateUndo(dev Device, size int64, resource string, nodeID uint8, dataSize uint64, blockSize uint32, force bool) (*UndoLog, error) {
	if resource == "" || len(resource) > MaxResourceLen || !utf8.ValidString(resource) {
		return nil, fmt.Errorf("meta: %w: resource name %q must be 1 to %d bytes of UTF-8", ErrInvalidParams, resource, MaxResourceLen)
	}
	if _, err := newLayout(dataSize, 1, blockSize); err != nil {
		return nil, err
	}
	if blockSize == 0 {
		blockSize = DefaultBlockSize
	}
	if size < UndoRecordsOffset+UndoRecordHeader+int64(blockSize) {
		return nil, fmt.Errorf("meta: %w: an undo log of %d bytes holds no record of a %d-byte block; need at least %d",
			ErrInvalidParams, size, blockSize, UndoRecordsOffset+UndoRecordHeader+int64(blockSize))
	}
	if old, err := OpenUndo(dev); err == nil && !force && old.Header().State != UndoIdle {
		h := old.Header()
		return nil, fmt.Errorf("meta: %w: undo log of resource %q, node %d, holds a %s session; force overwriting it only if the image it restores is expendable",
			ErrExists, h.Resource, h.NodeID, h.State)
	}
	h := UndoHeader{Resource: resource, NodeID: nodeID, DataSize: dataSize, BlockSize: blockSize, Capacity: uint64(size)}
	if _, err := dev.WriteAt([]byte{0}, size-1); err != nil {
		return nil, fmt.Errorf("meta: extending the undo log to %d bytes: %w", size, err)
	}
	for seq := range uint64(2) {
		h.Seq = seq
		if _, err := dev.WriteAt(encodeUndoHeader(h), int64(seq)*PageSize); err != nil {
			return nil, fmt.Errorf("meta: writing undo header slot %d: %w", seq, err)
		}
	}
	if err := dev.Sync(); err != nil {
		return nil, fmt.Errorf("meta: sync after creating the undo log: %w", err)
	}
	return &UndoLog{dev: dev, size: size, hdr: h, tail: UndoRecordsOffset}, nil
}

// OpenUndo reads the undo log in dev. If a session is recorded it finds
// the log's end by reading the records. A header with no valid slot gives
// ErrNoMetadata (never written) or ErrCorrupt, a newer format ErrVersion;
// each names the slots and what is wrong. A damaged record followed by a
// valid one is ErrCorrupt too, naming it; a device that ends before the
// capacity in the header is ErrTruncated (records may be missing).
func OpenUndo(dev Device) (*UndoLog, error) {
	var best *UndoHeader
	var problems []string
	version, noMagic := false, 0
	for slot := range 2 {
		buf := make([]byte, PageSize)
		if _, err := dev.ReadAt(buf, int64(slot)*PageSize); err != nil && !errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("meta: reading undo header slot %d: %w", slot, err)
		}
		h, err := decodeUndoHeader(buf)
		switch {
		case err == nil && h.Seq%2 != uint64(slot):
			err = fmt.Errorf("sequence %d in slot %d", h.Seq, slot)
		case errors.Is(err, ErrNoMetadata):
			noMagic++
		case errors.Is(err, ErrVersion):
			version = true
		}
		if err != nil {
			problems = append(problems, fmt.Sprintf("slot %d at offset %d: %v", slot, slot*PageSize, err))
			continue
		}
		if best == nil || h.Seq > best.Seq {
			best = &h
		}
	}
	switch {
	case best != nil:
	case noMagic == 2:
		return nil, fmt.Errorf("meta: %w: no undo log header (magic GEORUNDO) in either slot", ErrNoMetadata)
	case version:
		return nil, fmt.Errorf("meta: %w: undo log: %s", ErrVersion, joinProblems(problems))
	default:
		return nil, fmt.Errorf("meta: %w: undo log: %s", ErrCorrupt, joinProblems(problems))
	}
	size := int64(best.Capacity)
	truncated := fmt.Errorf("meta: %w: the undo log ends before its capacity of %d bytes (its header at offset %d says so): records may be lost",
		ErrTruncated, size, best.Seq%2*PageSize)
	if sz, ok := dev.(Sizer); ok {
		if sz.Size() < size {
			return nil, truncated
		}
	} else if _, err := dev.ReadAt(make([]byte, 1), size-1); errors.Is(err, io.EOF) {
		return nil, truncated
	} else if err != nil {
		return nil, fmt.Errorf("meta: reading the undo log's last byte at offset %d: %w", size-1, err)
	}
	u := &UndoLog{dev: dev, size: size, hdr: *best, tail: UndoRecordsOffset}
	if u.hdr.State != UndoIdle {
		if err := u.scan(nil); err != nil {
			return nil, err
		}
	}
	return u, nil
}

func joinProblems(p []string) string {
	var b bytes.Buffer
	for i, s := range p {
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(s)
	}
	return b.String()
}

// Header returns a copy of the current header.
func (u *UndoLog) Header() UndoHeader {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.hdr
}

// Used returns the bytes the session's records take, and the capacity
// left for records.
func (u *UndoLog) Used() (used, free int64) {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.tail - UndoRecordsOffset, u.size - u.tail
}

// Begin starts a session with id session (non-zero): the log is empty and
// active, and remembers the superblock's disk state and generation ids.
// Durable on return.
func (u *UndoLog) Begin(session uint64, disk uint8, current uint64, history [2]uint64) error {
	if session == 0 {
		return fmt.Errorf("meta: %w: undo session id 0", ErrInvalidParams)
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	h := u.hdr
	h.State, h.Session, h.Disk, h.Current, h.History = UndoActive, session, disk, current, history
	if err := u.writeHeader(h); err != nil {
		return err
	}
	u.tail, u.next = UndoRecordsOffset, 0
	return nil
}

// SetState moves a session to state (UndoExhausted or UndoRollingBack).
// Durable on return.
func (u *UndoLog) SetState(state UndoState) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.hdr.State == UndoIdle || state == UndoIdle || state == UndoActive {
		return fmt.Errorf("meta: %w: undo log state %s to %s", ErrInvalidParams, u.hdr.State, state)
	}
	h := u.hdr
	h.State = state
	return u.writeHeader(h)
}

// End forgets the session: the log is idle. Durable on return.
func (u *UndoLog) End() error {
	u.mu.Lock()
	defer u.mu.Unlock()
	h := u.hdr
	h.State, h.Session, h.Disk, h.Current, h.History = UndoIdle, 0, 0, 0, [2]uint64{}
	if err := u.writeHeader(h); err != nil {
		return err
	}
	u.tail, u.next = UndoRecordsOffset, 0
	return nil
}

func (u *UndoLog) writeHeader(h UndoHeader) error {
	h.Seq = u.hdr.Seq + 1
	off := int64(h.Seq%2) * PageSize
	if _, err := u.dev.WriteAt(encodeUndoHeader(h), off); err != nil {
		return fmt.Errorf("meta: writing undo header at offset %d: %w", off, err)
	}
	if err := u.dev.Sync(); err != nil {
		return fmt.Errorf("meta: sync after writing the undo header: %w", err)
	}
	u.hdr = h
	return nil
}

// Append saves the old content of blocks [first, first+len(data)/BlockSize)
// in a new record of the active session, durably on return. It returns
// ErrUndoFull, writing nothing, when the record does not fit.
func (u *UndoLog) Append(first uint64, data []byte) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	bs := uint64(u.hdr.BlockSize)
	n := uint64(len(data)) / bs
	switch {
	case u.hdr.State != UndoActive:
		return fmt.Errorf("meta: %w: append to an undo log that is %s", ErrInvalidParams, u.hdr.State)
	case n == 0 || uint64(len(data)) != n*bs || n > 1<<31 || first+n < first || (first+n)*bs > u.hdr.DataSize+bs-1:
		return fmt.Errorf("meta: %w: undo record of %d bytes at block %d (block size %d, data size %d)",
			ErrInvalidParams, len(data), first, bs, u.hdr.DataSize)
	}
	need := int64(UndoRecordHeader) + int64(len(data))
	if u.tail+need > u.size {
		return fmt.Errorf("meta: %w: a record of %d bytes at offset %d passes the capacity of %d bytes",
			ErrUndoFull, need, u.tail, u.size)
	}
	// Zeroes where the next record's header goes, in the same write when
	// it fits: the log ends right after this record, whatever the bytes
	// beyond it held (records after a damaged one, the rest of a longer
	// torn one), so none of them can read as the session's next record.
	end := need
	if u.tail+need+UndoRecordHeader <= u.size {
		end += UndoRecordHeader
	}
	rec := make([]byte, end)
	copy(rec[:8], recordMagic[:])
	le.PutUint64(rec[8:], u.hdr.Session)
	le.PutUint64(rec[16:], u.next)
	le.PutUint64(rec[24:], first)
	le.PutUint32(rec[32:], uint32(n))
	copy(rec[UndoRecordHeader:], data)
	le.PutUint32(rec[60:], recordCRC(rec[:60], rec[UndoRecordHeader:need]))
	if _, err := u.dev.WriteAt(rec, u.tail); err != nil {
		return fmt.Errorf("meta: writing undo record %d at offset %d: %w", u.next, u.tail, err)
	}
	if err := u.dev.Sync(); err != nil {
		return fmt.Errorf("meta: sync after undo record %d: %w", u.next, err)
	}
	u.tail += need
	u.next++
	return nil
}

func recordCRC(hdr, data []byte) uint32 {
	return crc32.Update(crc32.Checksum(hdr, castagnoli), castagnoli, data)
}

// Records calls fn for every record of the session, oldest first, with
// its first block and its blocks' old content (valid only during the
// call). It stops at fn's first error and returns it.
func (u *UndoLog) Records(fn func(first uint64, data []byte) error) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.hdr.State == UndoIdle {
		return nil
	}
	return u.scan(fn)
}

// scan reads the session's records from the start, calling fn (if not
// nil) for each, and sets tail and next to the log's end.
func (u *UndoLog) scan(fn func(first uint64, data []byte) error) error {
	bs := int64(u.hdr.BlockSize)
	off, idx := int64(UndoRecordsOffset), uint64(0)
	hdr := make([]byte, UndoRecordHeader)
	var data []byte
	for off+UndoRecordHeader+bs <= u.size {
		if _, err := u.dev.ReadAt(hdr, off); err != nil {
			if errors.Is(err, io.EOF) {
				break // a sparse or short file: nothing was written here
			}
			return fmt.Errorf("meta: reading undo record %d at offset %d: %w", idx, off, err)
		}
		first, n := le.Uint64(hdr[24:]), int64(le.Uint32(hdr[32:]))
		if !bytes.Equal(hdr[:8], recordMagic[:]) || le.Uint64(hdr[8:]) != u.hdr.Session || le.Uint64(hdr[16:]) != idx ||
			n == 0 || off+UndoRecordHeader+n*bs > u.size || first+uint64(n) < first ||
			(first+uint64(n))*uint64(bs) > u.hdr.DataSize+uint64(bs)-1 {
			if err := endOfRecords(hdr, u.hdr.Session, idx); err != nil {
				return fmt.Errorf("meta: %w: undo record %d at offset %d: %v: the log is damaged there, and the records after it would be lost to a rollback",
					ErrCorrupt, idx, off, err)
			}
			break
		}
		if int64(cap(data)) < n*bs {
			data = make([]byte, n*bs)
		}
		data = data[:n*bs]
		if _, err := u.dev.ReadAt(data, off+UndoRecordHeader); err != nil {
			if errors.Is(err, io.EOF) {
				break // torn at the end of the file
			}
			return fmt.Errorf("meta: reading undo record %d at offset %d: %w", idx, off, err)
		}
		if recordCRC(hdr[:60], data) != le.Uint32(hdr[60:]) {
			// Torn, if it is the last record: its overwrite never
			// happened. A valid next record after it means damage
			// instead, and the blocks it held are lost for a rollback.
			next := off + UndoRecordHeader + n*bs
			if next+UndoRecordHeader <= u.size {
				nh := make([]byte, UndoRecordHeader)
				if _, err := u.dev.ReadAt(nh, next); err == nil && bytes.Equal(nh[:8], recordMagic[:]) &&
					le.Uint64(nh[8:]) == u.hdr.Session && le.Uint64(nh[16:]) == idx+1 {
					return fmt.Errorf("meta: %w: undo record %d at offset %d (blocks %d to %d) fails its checksum while record %d follows it: the log is damaged, not torn",
						ErrCorrupt, idx, off, first, first+uint64(n)-1, idx+1)
				}
			}
			break
		}
		if fn != nil {
			if err := fn(first, data); err != nil {
				return err
			}
		}
		off += UndoRecordHeader + n*bs
		idx++
	}
	u.tail, u.next = off, idx
	return nil
}

// endOfRecords says why hdr, where record idx of session would be and is
// not, cannot be the log's end; nil if it can. Every Append writes zeroes
// where the next record's header goes, in the same write as its record,
// and Begin starts a session where the previous one's first record may
// lie. So the end reads as zeroes, as a record of another session, or as
// the start of record idx torn after its first bytes (zeroes after them,
// and those bytes the magic, session and index it was to have); anything
// else is a header that damage changed, and the records after it belong
// to the image a rollback restores.
func endOfRecords(hdr []byte, session, idx uint64) error {
	if bytes.Equal(hdr[:8], recordMagic[:]) && le.Uint64(hdr[8:]) != session {
		return nil // an earlier session's record
	}
	written := len(hdr)
	for written > 0 && hdr[written-1] == 0 {
		written--
	}
	want := le.AppendUint64(le.AppendUint64(append([]byte(nil), recordMagic[:]...), session), idx)
	if n := min(written, len(want)); bytes.Equal(hdr[:n], want[:n]) {
		return nil // zeroes, or a torn Append of record idx
	}
	if !bytes.Equal(hdr[:8], recordMagic[:]) {
		return errors.New("a record header without its magic")
	}
	return fmt.Errorf("a header of this session with index %d where %d belongs", le.Uint64(hdr[16:]), idx)
}

// Check reports, wrapping ErrForeign, an undo log that belongs to other
// data than resource, nodeID, dataSize and blockSize describe.
func (u *UndoLog) Check(resource string, nodeID uint8, dataSize uint64, blockSize uint32) error {
	h := u.Header()
	if h.Resource != resource || h.NodeID != nodeID || h.DataSize != dataSize || h.BlockSize != blockSize {
		return fmt.Errorf("meta: %w: the undo log belongs to resource %q, node %d, %d bytes of data in blocks of %d; this is resource %q, node %d, %d bytes in blocks of %d",
			ErrForeign, h.Resource, h.NodeID, h.DataSize, h.BlockSize, resource, nodeID, dataSize, blockSize)
	}
	return nil
}

// Byte offsets of the undo header fields; see the layout above.
const (
	uOffVersion  = 8
	uOffState    = 12
	uOffNodeID   = 13
	uOffNameLen  = 14
	uOffDisk     = 15
	uOffSeq      = 16
	uOffSession  = 24
	uOffDataSize = 32
	uOffBlock    = 40
	uOffCurrent  = 48
	uOffHistory  = 56
	uOffName     = 72
	uOffCapacity = uOffName + MaxResourceLen // 136
	uOffTail     = uOffCapacity + 8          // reserved up to the CRC
)

func encodeUndoHeader(h UndoHeader) []byte {
	b := make([]byte, PageSize)
	copy(b, undoMagic[:])
	le.PutUint32(b[uOffVersion:], UndoVersion)
	b[uOffState] = byte(h.State)
	b[uOffNodeID] = h.NodeID
	b[uOffNameLen] = byte(len(h.Resource))
	b[uOffDisk] = h.Disk
	le.PutUint64(b[uOffSeq:], h.Seq)
	le.PutUint64(b[uOffSession:], h.Session)
	le.PutUint64(b[uOffDataSize:], h.DataSize)
	le.PutUint32(b[uOffBlock:], h.BlockSize)
	le.PutUint64(b[uOffCurrent:], h.Current)
	le.PutUint64(b[uOffHistory:], h.History[0])
	le.PutUint64(b[uOffHistory+8:], h.History[1])
	copy(b[uOffName:], h.Resource)
	le.PutUint64(b[uOffCapacity:], h.Capacity)
	le.PutUint32(b[offCRC:], crc32.Checksum(b[:offCRC], castagnoli))
	return b
}

// decodeUndoHeader validates one header slot: ErrNoMetadata without the
// magic, ErrVersion for another version, ErrCorrupt otherwise.
func decodeUndoHeader(b []byte) (UndoHeader, error) {
	if len(b) < PageSize {
		return UndoHeader{}, fmt.Errorf("%w: %d bytes, want %d", ErrCorrupt, len(b), PageSize)
	}
	if !bytes.Equal(b[:8], undoMagic[:]) {
		return UndoHeader{}, ErrNoMetadata
	}
	if got, want := le.Uint32(b[offCRC:]), crc32.Checksum(b[:offCRC], castagnoli); got != want {
		return UndoHeader{}, fmt.Errorf("%w: checksum %08x, computed %08x (torn or damaged)", ErrCorrupt, got, want)
	}
	if v := le.Uint32(b[uOffVersion:]); v != UndoVersion {
		return UndoHeader{}, fmt.Errorf("%w: version %d, this build reads %d", ErrVersion, v, UndoVersion)
	}
	h := UndoHeader{
		State: UndoState(b[uOffState]), NodeID: b[uOffNodeID], Disk: b[uOffDisk],
		Seq: le.Uint64(b[uOffSeq:]), Session: le.Uint64(b[uOffSession:]),
		DataSize: le.Uint64(b[uOffDataSize:]), BlockSize: le.Uint32(b[uOffBlock:]),
		Current:  le.Uint64(b[uOffCurrent:]),
		History:  [2]uint64{le.Uint64(b[uOffHistory:]), le.Uint64(b[uOffHistory+8:])},
		Capacity: le.Uint64(b[uOffCapacity:]),
	}
	nameLen := int(b[uOffNameLen])
	h.Resource = string(b[uOffName : uOffName+min(nameLen, MaxResourceLen)])
	switch {
	case h.State > UndoRollingBack:
		return UndoHeader{}, fmt.Errorf("%w: unknown state %d", ErrCorrupt, h.State)
	case (h.State == UndoIdle) != (h.Session == 0):
		return UndoHeader{}, fmt.Errorf("%w: state %s with session %x", ErrCorrupt, h.State, h.Session)
	case nameLen == 0 || nameLen > MaxResourceLen || !utf8.ValidString(h.Resource) ||
		!isZero(b[uOffName+nameLen:uOffCapacity]) || !isZero(b[uOffTail:offCRC]) || !isZero(b[44:48]):
		return UndoHeader{}, fmt.Errorf("%w: bad resource name or non-zero reserved bytes", ErrCorrupt)
	}
	if _, err := newLayout(h.DataSize, 1, h.BlockSize); err != nil || h.BlockSize == 0 {
		return UndoHeader{}, fmt.Errorf("%w: data size %d, block size %d", ErrCorrupt, h.DataSize, h.BlockSize)
	}
	if h.Capacity < UndoRecordsOffset+UndoRecordHeader+uint64(h.BlockSize) || h.Capacity > MaxDataSize {
		return UndoHeader{}, fmt.Errorf("%w: capacity %d bytes holds no record of a %d-byte block", ErrCorrupt, h.Capacity, h.BlockSize)
	}
	return h, nil
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
