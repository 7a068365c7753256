// Package checker is georepl's crash-consistency harness, usable against any
// georepl setup (`georepl check write` / `georepl check verify`).
//
// The workload writes tagged 4 KiB blocks through an NBD export: each block
// carries a magic, the run id, its block index, a sequence number and a
// CRC32C, so that an image read back later tells, for every block, which
// write it holds. No two writes to one block are ever in flight at once, so
// the writes to a block are totally ordered. The workload records every
// submission and completion on one logical clock, in a log file that is
// synced as it goes (the workload is the application: what it saw complete
// is what the replication promised).
//
// After a node is killed, Verify reads a surviving node's image and checks:
//
//   - Durable (protocol C peers): every write that completed is present
//     (the block holds that write or a later write to the same block).
//   - Ordered (every peer): the image is write-order consistent: no write
//     is present while a write that completed before it was submitted is
//     missing. With cMin the earliest completion among missing writes, no
//     present write may have been submitted after cMin.
//
// A write "present" means its block holds it or a later write to that
// block; "missing" means the block holds an earlier write or none.
package checker

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
)

// BlockSize is the size of a tagged block.
const BlockSize = 4096

const magic = "GRCHK001"

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Tag is what a tagged block carries.
type Tag struct {
	Run   uint64
	Block uint64
	Seq   uint64 // 1-based; 0 never appears in a tag
}

// EncodeBlock fills b (BlockSize bytes) with a tagged block.
func EncodeBlock(b []byte, t Tag) {
	copy(b, magic)
	binary.LittleEndian.PutUint64(b[8:], t.Run)
	binary.LittleEndian.PutUint64(b[16:], t.Block)
	binary.LittleEndian.PutUint64(b[24:], t.Seq)
	// Fill the rest with a pattern derived from the tag so that a torn
	// or misplaced block fails its checksum.
	x := t.Seq*0x9E3779B97F4A7C15 ^ t.Block
	for i := 32; i < BlockSize-4; i += 8 {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		binary.LittleEndian.PutUint64(b[i:], x)
	}
	binary.LittleEndian.PutUint32(b[BlockSize-4:], crc32.Checksum(b[:BlockSize-4], castagnoli))
}

// DecodeBlock reads a tagged block. ok is false for a block that holds no
// tag of this run (zeroes, or an intact block of an earlier run: a block
// whose writes of this run were all still in flight keeps its old content);
// err reports a block that is neither: torn, corrupt, or misplaced.
func DecodeBlock(b []byte, run, index uint64) (t Tag, ok bool, err error) {
	if string(b[:8]) != magic {
		for _, c := range b {
			if c != 0 {
				return Tag{}, false, fmt.Errorf("block %d holds neither zeroes nor a tagged block", index)
			}
		}
		return Tag{}, false, nil
	}
	if crc32.Checksum(b[:BlockSize-4], castagnoli) != binary.LittleEndian.Uint32(b[BlockSize-4:]) {
		return Tag{}, false, fmt.Errorf("block %d: checksum mismatch (torn or corrupt write)", index)
	}
	t = Tag{Run: binary.LittleEndian.Uint64(b[8:]), Block: binary.LittleEndian.Uint64(b[16:]), Seq: binary.LittleEndian.Uint64(b[24:])}
	if t.Run != run {
		return Tag{}, false, nil
	}
	if t.Block != index {
		return Tag{}, false, fmt.Errorf("block %d holds the block written for index %d (misplaced write)", index, t.Block)
	}
	return t, true, nil
}

// Record is one line of the log: a write submitted or completed, or a
// flush completed, at a point of the logical clock.
type Record struct {
	Clock uint64
	Kind  byte // 'S' submitted, 'C' completed, 'F' flush completed (Seq: the flush's own number)
	Seq   uint64
	Block uint64
}

// Log collects the workload's records and writes them to a file.
type Log struct {
	w     *bufio.Writer
	f     *os.File
	clock uint64
}

// CreateLog starts a log file: a header line, then one record per line.
func CreateLog(path string, run, firstBlock, blocks uint64) (*Log, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	l := &Log{f: f, w: bufio.NewWriter(f)}
	fmt.Fprintf(l.w, "georepl-check run=%d first=%d blocks=%d\n", run, firstBlock, blocks)
	return l, nil
}

// Add appends a record with the next clock value. Not safe for concurrent
// use: the workload serialises calls.
func (l *Log) Add(kind byte, seq, block uint64) error {
	l.clock++
	_, err := fmt.Fprintf(l.w, "%d %c %d %d\n", l.clock, kind, seq, block)
	return err
}

// Sync pushes the log to stable storage.
func (l *Log) Sync() error {
	if err := l.w.Flush(); err != nil {
		return err
	}
	return l.f.Sync()
}

// Close syncs and closes the log.
func (l *Log) Close() error {
	err := l.Sync()
	return errors.Join(err, l.f.Close())
}

// History is a parsed log.
type History struct {
	Run, FirstBlock, Blocks uint64
	Writes                  map[uint64]*Write // by seq
	// PerBlock lists each block's writes in submission order.
	PerBlock map[uint64][]*Write
}

// Write is one write of the workload.
type Write struct {
	Seq, Block          uint64
	Submitted, Complete uint64 // clock values; Complete 0: never completed
	order               int    // position among its block's writes
}

// NewHistory returns an empty history of run over blocks blocks from
// firstBlock, for a workload recorded other than by a Log (the
// simulator's); Add fills it.
func NewHistory(run, firstBlock, blocks uint64) *History {
	return &History{Run: run, FirstBlock: firstBlock, Blocks: blocks, Writes: map[uint64]*Write{}, PerBlock: map[uint64][]*Write{}}
}

// Add appends w to the history: it comes after every write to its block
// added before. Histories may share Write values: two that list the same
// writes of a block first (one is the other cut short and continued)
// agree on their positions.
func (h *History) Add(w *Write) {
	w.order = len(h.PerBlock[w.Block])
	h.Writes[w.Seq] = w
	h.PerBlock[w.Block] = append(h.PerBlock[w.Block], w)
}

// ReadLog parses a log file; a torn last line (the workload was killed
// while writing it) is ignored.
func ReadLog(r io.Reader) (*History, error) {
	sc := bufio.NewScanner(r)
	if !sc.Scan() {
		return nil, errors.New("empty check log")
	}
	var run, first, blocks uint64
	if _, err := fmt.Sscanf(sc.Text(), "georepl-check run=%d first=%d blocks=%d", &run, &first, &blocks); err != nil {
		return nil, fmt.Errorf("check log header: %w", err)
	}
	h := NewHistory(run, first, blocks)
	line := 1
	for sc.Scan() {
		line++
		f := strings.Fields(sc.Text())
		if len(f) != 4 || len(f[1]) != 1 {
			continue // torn last line
		}
		clock, err1 := strconv.ParseUint(f[0], 10, 64)
		seq, err2 := strconv.ParseUint(f[2], 10, 64)
		block, err3 := strconv.ParseUint(f[3], 10, 64)
		if err := errors.Join(err1, err2, err3); err != nil {
			return nil, fmt.Errorf("check log line %d: %w", line, err)
		}
		switch f[1][0] {
		case 'S':
			h.Add(&Write{Seq: seq, Block: block, Submitted: clock})
		case 'C':
			w, ok := h.Writes[seq]
			if !ok {
				return nil, fmt.Errorf("check log line %d: completion of write %d that was never submitted", line, seq)
			}
			w.Complete = clock
		}
	}
	return h, sc.Err()
}

// Result is what Verify found.
type Result struct {
	Writes, Completed, Present int
	// Lost are completed writes that are missing (a violation only where
	// durability is required).
	Lost []uint64
	// OrderViolations name pairs (missing A completed before present B was
	// submitted).
	OrderViolations []string
	// Corrupt names blocks that hold garbage.
	Corrupt []string
}

// Verify checks an image (a reader positioned at the resource's byte 0)
// against the history. durable asks for the protocol C guarantee too.
func Verify(h *History, image io.ReaderAt, durable bool) (*Result, error) {
	res := &Result{Writes: len(h.Writes)}
	// present[seq] for every write: its block holds it or a later one.
	present := map[uint64]bool{}
	buf := make([]byte, BlockSize)
	for block, writes := range h.PerBlock {
		if _, err := image.ReadAt(buf, int64(h.FirstBlock+block)*BlockSize); err != nil {
			return nil, fmt.Errorf("reading block %d of the image: %w", h.FirstBlock+block, err)
		}
		tag, ok, err := DecodeBlock(buf, h.Run, block)
		if err != nil {
			res.Corrupt = append(res.Corrupt, err.Error())
			continue
		}
		holds := -1 // position of the write the block holds
		if ok {
			w, known := h.Writes[tag.Seq]
			if !known || w.Block != block {
				res.Corrupt = append(res.Corrupt, fmt.Sprintf("block %d holds write %d, which the log does not know for it", block, tag.Seq))
				continue
			}
			holds = w.order
		}
		for _, w := range writes {
			if w.order <= holds {
				present[w.Seq] = true
			}
		}
	}
	// Order: cMin is the earliest completion among missing writes.
	var cMin uint64
	var cMinSeq uint64
	for _, w := range h.Writes {
		if w.Complete != 0 {
			res.Completed++
		}
		if present[w.Seq] {
			res.Present++
			continue
		}
		if w.Complete != 0 {
			res.Lost = append(res.Lost, w.Seq)
			if cMin == 0 || w.Complete < cMin {
				cMin, cMinSeq = w.Complete, w.Seq
			}
		}
	}
	sort.Slice(res.Lost, func(i, j int) bool { return res.Lost[i] < res.Lost[j] })
	if cMin != 0 {
		for _, w := range h.Writes {
			if present[w.Seq] && w.Submitted > cMin {
				res.OrderViolations = append(res.OrderViolations,
					fmt.Sprintf("write %d (block %d) is present but write %d (block %d), completed before it was submitted, is missing",
						w.Seq, w.Block, cMinSeq, h.Writes[cMinSeq].Block))
				if len(res.OrderViolations) >= 10 {
					break
				}
			}
		}
	}
	if !durable {
		res.Lost = nil
	}
	return res, nil
}

// OK reports whether the result shows no violation.
func (r *Result) OK() bool {
	return len(r.Lost) == 0 && len(r.OrderViolations) == 0 && len(r.Corrupt) == 0
}

// String summarises the result for people.
func (r *Result) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d writes, %d completed, %d present", r.Writes, r.Completed, r.Present)
	if len(r.Lost) > 0 {
		fmt.Fprintf(&b, "; %d completed writes LOST (first: %v)", len(r.Lost), r.Lost[:min(5, len(r.Lost))])
	}
	for _, v := range r.OrderViolations {
		fmt.Fprintf(&b, "; ORDER: %s", v)
	}
	for _, c := range r.Corrupt[:min(5, len(r.Corrupt))] {
		fmt.Fprintf(&b, "; CORRUPT: %s", c)
	}
	return b.String()
}
