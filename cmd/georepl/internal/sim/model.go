package sim

import (
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"

	"github.com/georepl/georepl/cmd/georepl/internal/checker"
)

// The model is what the application saw: every write it issued (tagged
// 4 KiB blocks, checker.EncodeBlock: a block tells which write it holds),
// when it was issued and completed on one logical clock, which flushes
// completed, and which Primary took it. It is the reference the checker
// holds every node's image against.
//
// Writes belong to terms. A term is the time one node is Primary, from
// its promotion; its lineage (a checker.History) lists, per block, the
// writes that block went through in the data of that Primary: what the
// Primary held when it was promoted (its base, each block's chain cut
// where the base holds it) followed by the writes the term issued. A
// failover may lose writes (protocol A, or a forced promotion): they are
// in the old term's lineage and not in the new one's. An image is a state
// some Primary's data passed through when it is write-order consistent
// with the lineage of some term (checker.Verify: no write present while a
// write that completed before it was issued is missing, no block holding
// anything but zeroes or a write of its chain).

// mwrite is one block of an application write.
type mwrite struct {
	*checker.Write
	term *term
	fua  bool
	// durableOn lists the nodes whose disk holds the write durably: it
	// completed and then a flush (or its own FUA) made it durable on the
	// Primary and on every protocol C peer that flush waited for. Each
	// keeps it across its own power loss; promoted, it must hold it.
	durableOn []string
	// acked lists the protocol B and C peers that had the write when it
	// completed: while they do not crash, they hold it (a promotion of
	// one must not lose it).
	acked []string
	// peersAtIssue are those peers' connections to the Primary when the
	// write was issued, replicating (Established, UpToDate).
	peersAtIssue map[string][]*conn
	failed       bool
}

// durableAlso adds nodes to w.durableOn.
func (w *mwrite) durableAlso(nodes []string) {
	for _, n := range nodes {
		if !slices.Contains(w.durableOn, n) {
			w.durableOn = append(w.durableOn, n)
		}
	}
}

// term is one node's time as Primary.
type term struct {
	id      int
	primary string
	forced  bool
	parent  *term
	hist    *checker.History
	// based: the base is known (until then the Primary takes no writes).
	based bool
}

type model struct {
	run    uint64
	blocks uint64
	clock  uint64
	seq    uint64
	writes map[uint64]*mwrite
	terms  []*term
	// written lists the blocks any write went to, in order.
	written []uint64
	// decoded caches the tag each page holds, by the page's first byte:
	// a simulated disk never changes a page in place.
	decoded map[*byte]decodedTag
}

type decodedTag struct {
	seq uint64
	err error
}

func newModel(run, blocks uint64) *model {
	return &model{run: run, blocks: blocks, writes: map[uint64]*mwrite{}, decoded: map[*byte]decodedTag{}}
}

func (m *model) tick() uint64 {
	m.clock++
	return m.clock
}

// newTerm starts a term whose base is not known yet.
func (m *model) newTerm(primary string, forced bool) *term {
	t := &term{id: len(m.terms) + 1, primary: primary, forced: forced, hist: checker.NewHistory(m.run, 0, m.blocks)}
	m.terms = append(m.terms, t)
	return t
}

// tags decodes the block tags of an image: the write each written block
// holds (0: zeroes or a block of no write), and the blocks holding
// anything else.
func (m *model) tags(img io.ReaderAt, blocks []uint64) (held map[uint64]uint64, corrupt []string) {
	held = map[uint64]uint64{}
	if v, ok := img.(viewReader); ok {
		for _, b := range blocks {
			page := v.d.view[int64(b)]
			if page == nil {
				continue // zeroes
			}
			key := &page[0]
			dt, ok := m.decoded[key]
			if !ok {
				tag, found, err := checker.DecodeBlock(page, m.run, b)
				dt = decodedTag{err: err}
				if found {
					dt.seq = tag.Seq
				}
				m.decoded[key] = dt
			}
			switch {
			case dt.err != nil:
				corrupt = append(corrupt, dt.err.Error())
			case dt.seq != 0:
				held[b] = dt.seq
			}
		}
		return held, corrupt
	}
	buf := make([]byte, checker.BlockSize)
	for _, b := range blocks {
		if _, err := img.ReadAt(buf, int64(b)*checker.BlockSize); err != nil {
			corrupt = append(corrupt, err.Error())
			continue
		}
		tag, ok, err := checker.DecodeBlock(buf, m.run, b)
		switch {
		case err != nil:
			corrupt = append(corrupt, err.Error())
		case ok:
			held[b] = tag.Seq
		}
	}
	return held, corrupt
}

// writtenBlocks lists every block any write went to, in order.
func (m *model) writtenBlocks() []uint64 { return m.written }

// setBase makes img the base of t: each block's chain is the chain of the
// write it holds, cut after that write. It returns the term whose lineage
// img is a state of (the latest such; nil if none) for the promises that
// span the failover.
func (m *model) setBase(t *term, img io.ReaderAt) (parent *term, corrupt []string) {
	held, corrupt := m.tags(img, m.writtenBlocks())
	parent = m.stateOf(img, t)
	t.parent = parent
	blocks := make([]uint64, 0, len(held))
	for b := range held {
		blocks = append(blocks, b)
	}
	slices.Sort(blocks)
	for _, b := range blocks {
		w := m.writes[held[b]]
		if w == nil || w.Block != b {
			continue // reported as corrupt by stateOf's caller
		}
		for _, x := range w.term.hist.PerBlock[b] {
			t.hist.Add(x)
			if x.Seq == w.Seq {
				break
			}
		}
	}
	t.based = true
	return parent, corrupt
}

// stateOf returns the latest term other than except whose lineage img is
// a write-order consistent state of, or nil.
func (m *model) stateOf(img io.ReaderAt, except *term) *term {
	held, _ := m.tags(img, m.writtenBlocks())
	for i := len(m.terms) - 1; i >= 0; i-- {
		t := m.terms[i]
		if t == except || !t.based || m.foreign(t, held) != "" {
			continue
		}
		res, err := checker.Verify(t.hist, img, false)
		if err == nil && len(res.OrderViolations) == 0 && len(res.Corrupt) == 0 {
			return t
		}
	}
	return nil
}

// foreign describes a block of held (block → write, from tags) that holds
// a write although t's lineage has no write for that block: data of
// another branch (a split brain's other side, merged). checker.Verify
// reads only the blocks a lineage wrote, so this is checked apart.
func (m *model) foreign(t *term, held map[uint64]uint64) string {
	blocks := make([]uint64, 0, len(held))
	for b := range held {
		blocks = append(blocks, b)
	}
	slices.Sort(blocks)
	for _, b := range blocks {
		if len(t.hist.PerBlock[b]) == 0 {
			w := m.writes[held[b]]
			return fmt.Sprintf("block %d holds write %d of term %d (Primary %s), which term %d's data never held", b, w.Seq, w.term.id, w.term.primary, t.id)
		}
	}
	return ""
}

// explain says why img is no state of any term, for the report: the
// checker's findings against the latest term.
func (m *model) explain(img io.ReaderAt) string {
	for i := len(m.terms) - 1; i >= 0; i-- {
		t := m.terms[i]
		if !t.based {
			continue
		}
		held, _ := m.tags(img, m.writtenBlocks())
		if f := m.foreign(t, held); f != "" {
			return fmt.Sprintf("against term %d (Primary %s): %s", t.id, t.primary, f)
		}
		res, err := checker.Verify(t.hist, img, false)
		if err != nil {
			return err.Error()
		}
		return fmt.Sprintf("against term %d (Primary %s): %s", t.id, t.primary, res)
	}
	return "no term"
}

// issue records a write of blocks [first, first+n) on t's Primary and
// returns its per-block writes.
func (m *model) issue(t *term, first uint64, n int, fua bool) []*mwrite {
	at := m.tick()
	ws := make([]*mwrite, n)
	for i := range ws {
		m.seq++
		w := &mwrite{Write: &checker.Write{Seq: m.seq, Block: first + uint64(i), Submitted: at}, term: t, fua: fua}
		t.hist.Add(w.Write)
		m.writes[w.Seq] = w
		ws[i] = w
		if i, found := slices.BinarySearch(m.written, w.Block); !found {
			m.written = slices.Insert(m.written, i, w.Block)
		}
	}
	return ws
}

// flushed records that a flush issued at issuedAt completed on t's
// Primary, waiting for the protocol C peers on: every write of t's
// lineage that completed before it is durable there.
func (m *model) flushed(t *term, issuedAt uint64, on []string) {
	for _, x := range t.hist.Writes {
		if x.Complete != 0 && x.Complete < issuedAt {
			m.writes[x.Seq].durableAlso(on)
		}
	}
}

// missing lists the writes of want that img does not hold (neither them
// nor a later write of their block in t's lineage).
func (m *model) missing(t *term, img io.ReaderAt, want func(*mwrite) bool) []string {
	held, _ := m.tags(img, m.writtenBlocks())
	var out []string
	for _, x := range t.hist.Writes {
		w := m.writes[x.Seq]
		if !want(w) {
			continue
		}
		chain := t.hist.PerBlock[w.Block]
		holds := -1
		for i, c := range chain {
			if c.Seq == held[w.Block] {
				holds = i
			}
		}
		at := slices.IndexFunc(chain, func(c *checker.Write) bool { return c.Seq == w.Seq })
		if holds < at {
			has := "zeroes"
			if h := held[w.Block]; h != 0 {
				has = fmt.Sprintf("write %d", h)
			}
			out = append(out, fmt.Sprintf("write %d (block %d, issued at %d, completed at %d, term %d; the block holds %s)", w.Seq, w.Block, w.Submitted, w.Complete, w.term.id, has))
		}
	}
	sort.Strings(out)
	return out
}

func summarize(list []string) string {
	if len(list) > 5 {
		return strings.Join(list[:5], "; ") + fmt.Sprintf("; and %d more", len(list)-5)
	}
	return strings.Join(list, "; ")
}

// latestBefore returns the latest term with a known base created before t.
func (m *model) latestBefore(t *term) *term {
	for i := slices.Index(m.terms, t) - 1; i >= 0; i-- {
		if m.terms[i].based {
			return m.terms[i]
		}
	}
	return nil
}

// present counts the writes of t's lineage that img holds (or holds a
// later write of the same block of).
func (m *model) present(t *term, img io.ReaderAt) int {
	held, _ := m.tags(img, m.writtenBlocks())
	n := 0
	for b, chain := range t.hist.PerBlock {
		for i, c := range chain {
			if c.Seq == held[b] {
				n += i + 1
			}
		}
	}
	return n
}
