package storage

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/georepl/georepl/core"
	"github.com/georepl/georepl/core/meta"
)

// TestPersistKeepsEveryField: what the engine persists is what the next
// start reads back, the failover term included (a node that forgot a term
// would accept a Primary it had fenced).
func TestPersistKeepsEveryField(t *testing.T) {
	path := filepath.Join(t.TempDir(), "meta")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, err := meta.Create(f, 0, meta.Params{Resource: "r0", NodeID: 0, Slots: 3, DataSize: 1 << 20, BlockSize: 4096}, false)
	if err != nil {
		t.Fatal(err)
	}
	want := core.Persistent{Disk: core.UpToDate, Primary: true, Current: 0xC1, History: [2]uint64{0xB1, 0xA1},
		BitmapUUID: map[core.NodeID]uint64{2: 0xB1}, Promoted: 12345, Term: 7}
	if err := (&Disk{Store: st}).Persist(&want); err != nil {
		t.Fatal(err)
	}
	reopened, err := meta.Open(f, 0)
	if err != nil {
		t.Fatal(err)
	}
	sb := reopened.Superblock()
	got := core.Persistent{Disk: core.DiskState(sb.DiskState), Primary: sb.Primary, Current: sb.Current, History: sb.History,
		BitmapUUID: map[core.NodeID]uint64{}, Promoted: sb.Promoted, Term: sb.Term}
	for i, u := range sb.BitmapUUID {
		if u != 0 {
			got.BitmapUUID[core.NodeID(i)] = u
		}
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("read back %+v, persisted %+v", got, want)
	}
}
