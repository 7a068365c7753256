package checker

import (
	"fmt"
	"strings"
	"testing"
)

// image is an in-memory disk for Verify.
type image []byte

func (im image) ReadAt(p []byte, off int64) (int, error) { return copy(p, im[off:]), nil }

func (im image) put(t Tag) {
	EncodeBlock(im[t.Block*BlockSize:], t)
}

// history builds a log from a script of "S seq block" / "C seq block"
// steps separated by ";", one clock tick each.
func history(t *testing.T, run, blocks uint64, script string) *History {
	t.Helper()
	var src strings.Builder
	fmt.Fprintf(&src, "georepl-check run=%d first=0 blocks=%d\n", run, blocks)
	for i, step := range strings.Split(script, ";") {
		fmt.Fprintf(&src, "%d %s\n", i+1, strings.TrimSpace(step))
	}
	h, err := ReadLog(strings.NewReader(src.String()))
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func TestVerify(t *testing.T) {
	// Writes 1 (block 0) and 2 (block 1) complete in that order; write 3
	// (block 2) is submitted after 1 completed; write 4 (block 0) is in
	// flight at the crash.
	script := "S 1 0; C 1 0; S 2 1; S 3 2; C 2 1; C 3 2; S 4 0"
	for _, tc := range []struct {
		name          string
		tags          []Tag
		durable       bool
		ok            bool
		lost, ordered bool
	}{
		{"everything", []Tag{{7, 0, 4}, {7, 1, 2}, {7, 2, 3}}, true, true, false, false},
		{"in-flight write missing", []Tag{{7, 0, 1}, {7, 1, 2}, {7, 2, 3}}, true, true, false, false},
		{"prefix under A", []Tag{{7, 0, 1}}, false, true, false, false},
		{"nothing under A", nil, false, true, false, false},
		{"completed write lost under C", []Tag{{7, 0, 1}, {7, 1, 2}}, true, false, true, false},
		{"later write without earlier", []Tag{{7, 2, 3}}, false, false, false, true},
		{"old run's block is no write of this run", []Tag{{6, 0, 99}, {7, 1, 2}, {7, 2, 3}}, false, false, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := history(t, 7, 3, script)
			im := make(image, 3*BlockSize)
			for _, tag := range tc.tags {
				im.put(tag)
			}
			res, err := Verify(h, im, tc.durable)
			if err != nil {
				t.Fatal(err)
			}
			if res.OK() != tc.ok || (len(res.Lost) > 0) != tc.lost || (len(res.OrderViolations) > 0) != tc.ordered {
				t.Fatalf("got %v", res)
			}
		})
	}
}

func TestVerifyCorruptBlock(t *testing.T) {
	h := history(t, 7, 1, "S 1 0; C 1 0")
	im := make(image, BlockSize)
	im.put(Tag{7, 0, 1})
	im[100] ^= 1
	res, err := Verify(h, im, true)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Corrupt) != 1 || res.OK() {
		t.Fatalf("a torn block went unnoticed: %v", res)
	}
}
