package configs

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/georepl/georepl/core"
	"github.com/georepl/georepl/core/wire"
	"github.com/georepl/georepl/protocols"
)

// TestEnumLists: the list of values that the decoder accepts for each
// enumerated setting holds exactly the values whose String is a name (not
// the "Type(N)" of an unknown value), each named once.
func TestEnumLists(t *testing.T) {
	checkEnumList(t, "protocols.All", protocols.All())
	checkEnumList(t, "wire.Compressions", wire.Compressions())
	checkEnumList(t, "wire.Csums", wire.Csums())
	checkEnumList(t, "core.Congestions", core.Congestions())
	checkEnumList(t, "core.SplitBrainPolicies", core.SplitBrainPolicies())
	checkEnumList(t, "core.NoQuorumPolicies", core.NoQuorumPolicies())
	checkEnumList(t, "core.IOErrorPolicies", core.IOErrorPolicies())
}

func checkEnumList[T interface {
	~uint8
	fmt.Stringer
}](t *testing.T, list string, values []T) {
	t.Helper()
	names := map[string]bool{}
	for v := range 256 {
		name := T(v).String()
		listed := slices.Contains(values, T(v))
		if named := !strings.Contains(name, "("); named != listed {
			t.Errorf("%s: value %d is named %q but listed=%v", list, v, name, listed)
		}
		if listed && names[name] {
			t.Errorf("%s: two values are named %q", list, name)
		}
		names[name] = listed
	}
	if len(values) == 0 || len(values) != len(slices.Compact(slices.Sorted(slices.Values(values)))) {
		t.Errorf("%s = %v: empty, or a value twice", list, values)
	}
}
