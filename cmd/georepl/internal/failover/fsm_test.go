package failover

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"reflect"
	"testing"

	"github.com/georepl/georepl/core"
	"github.com/hashicorp/raft"
)

func entry(t *testing.T, index uint64, c command) *raft.Log {
	t.Helper()
	b, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	return &raft.Log{Index: index, Type: raft.LogCommand, Data: b}
}

// TestFSMApply: a promotion after the resource's current term gets the
// next one; one after an older term, a malformed or unknown entry changes
// nothing and answers an error; resources are independent.
func TestFSMApply(t *testing.T) {
	var seen []Promotion
	f := newFSM(func(p Promotion) { seen = append(seen, p) })
	if got := f.Apply(entry(t, 1, command{Op: opPromote, Resource: "r0", Node: "alpha", After: 0})); got != (Promotion{Resource: "r0", Node: "alpha", Term: 1, Index: 1}) {
		t.Fatalf("first promotion: %v", got)
	}
	if got, ok := f.Apply(entry(t, 2, command{Op: opPromote, Resource: "r0", Node: "bravo", After: 0})).(error); !ok || !errors.Is(got, ErrStale) {
		t.Fatalf("promotion after a past term: %v, want ErrStale", got)
	}
	if _, ok := f.Apply(&raft.Log{Index: 3, Data: []byte("{")}).(error); !ok {
		t.Fatal("a malformed entry was applied")
	}
	if _, ok := f.Apply(entry(t, 4, command{Op: "demote", Resource: "r0", Node: "alpha"})).(error); !ok {
		t.Fatal("an unknown operation was applied")
	}
	if got := f.Apply(entry(t, 5, command{Op: opPromote, Resource: "r1", Node: "bravo", After: 0})); got != (Promotion{Resource: "r1", Node: "bravo", Term: 1, Index: 5}) {
		t.Fatalf("another resource: %v", got)
	}
	if got := f.Apply(entry(t, 6, command{Op: opPromote, Resource: "r0", Node: "bravo", After: 1})); got != (Promotion{Resource: "r0", Node: "bravo", Term: 2, Index: 6}) {
		t.Fatalf("second promotion of r0: %v", got)
	}
	want := []Promotion{{"r0", "alpha", 1, 1}, {"r1", "bravo", 1, 5}, {"r0", "bravo", 2, 6}}
	if !reflect.DeepEqual(seen, want) {
		t.Fatalf("notified %v, want %v", seen, want)
	}
	if got := f.current("r2"); got != (Promotion{Resource: "r2"}) {
		t.Fatalf("a resource never promoted: %v", got)
	}
}

type sink struct {
	bytes.Buffer
	cancelled bool
}

func (s *sink) ID() string    { return "test" }
func (s *sink) Cancel() error { s.cancelled = true; return nil }
func (s *sink) Close() error  { return nil }

// TestFSMSnapshotRestore: a member restored from a snapshot holds every
// resource's promotion and is told each of them, so that its node
// observes every term again.
func TestFSMSnapshotRestore(t *testing.T) {
	f := newFSM(nil)
	f.Apply(entry(t, 1, command{Op: opPromote, Resource: "r0", Node: "alpha", After: 0}))
	f.Apply(entry(t, 2, command{Op: opPromote, Resource: "r1", Node: "bravo", After: 0}))
	f.Apply(entry(t, 3, command{Op: opPromote, Resource: "r0", Node: "bravo", After: 1}))
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var s sink
	if err := snap.Persist(&s); err != nil || s.cancelled {
		t.Fatalf("persist: %v (cancelled %v)", err, s.cancelled)
	}
	var seen []Promotion
	g := newFSM(func(p Promotion) { seen = append(seen, p) })
	if err := g.Restore(io.NopCloser(&s)); err != nil {
		t.Fatal(err)
	}
	want := []Promotion{{"r0", "bravo", 2, 3}, {"r1", "bravo", 1, 2}}
	if !reflect.DeepEqual(seen, want) {
		t.Fatalf("restore notified %v, want %v", seen, want)
	}
	for _, p := range want {
		if got := g.current(p.Resource); got != p {
			t.Errorf("restored %s: %v, want %v", p.Resource, got, p)
		}
	}
	if err := newFSM(nil).Restore(io.NopCloser(bytes.NewBufferString("not json"))); err == nil {
		t.Error("a corrupt snapshot was restored")
	}
}

// TestReportsAndReplacement: a report says whether its node holds the
// resource's last promotion (only then is a Primary's report its lease),
// and a promotion that replaces a lost Primary is stale once that Primary
// reported after the report the decision saw, also after a snapshot.
func TestReportsAndReplacement(t *testing.T) {
	f := newFSM(nil)
	f.Apply(entry(t, 1, command{Op: opPromote, Resource: "r0", Node: "alpha"}))
	rep := &Report{Role: core.Primary, Disk: core.UpToDate, Current: 7}
	if got := f.Apply(entry(t, 2, command{Op: opReport, Resource: "r0", Node: "alpha", Report: rep})); got != (reportResult{Holds: true}) {
		t.Fatalf("the holder's report: %v", got)
	}
	if got := f.Apply(entry(t, 3, command{Op: opReport, Resource: "r0", Node: "beta", Report: rep})); got != (reportResult{Holds: false}) {
		t.Fatalf("another node's report: %v", got)
	}
	f.Apply(entry(t, 4, command{Op: opReport, Resource: "r0", Node: "alpha", Report: rep}))
	seen := uint64(2)
	err, _ := f.Apply(entry(t, 5, command{Op: opPromote, Resource: "r0", Node: "beta", After: 1, HolderReport: &seen})).(error)
	if !errors.Is(err, ErrStale) {
		t.Fatalf("a replacement decided before the holder's last report: %v, want ErrStale", err)
	}

	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var s sink
	if err := snap.Persist(&s); err != nil {
		t.Fatal(err)
	}
	g := newFSM(nil)
	if err := g.Restore(io.NopCloser(&s)); err != nil {
		t.Fatal(err)
	}
	if r := g.reportsOf("r0")["alpha"]; r.Index != 4 || r.Report != *rep {
		t.Fatalf("restored report %+v", r)
	}
	seen = 4
	if p, ok := g.Apply(entry(t, 6, command{Op: opPromote, Resource: "r0", Node: "beta", After: 1, HolderReport: &seen})).(Promotion); !ok || p.Term != 2 {
		t.Fatalf("a replacement decided on the holder's last report was not committed: %v", p)
	}
}
