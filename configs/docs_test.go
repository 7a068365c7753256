package configs

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"
)

// TestAdminGuideListsEveryName keeps the configuration reference of
// docs/admin-guide.md and the decoder in step for every setting with a
// fixed set of values. The decoder says which settings those are: the ones
// whose nonsense value it refuses with "use one of" and a list of names.
// The reference documents a setting's names as `"name"` in its table row
// (default and meaning columns), and every name written there must be one
// the decoder lists, and load; every name it lists must be written there.
func TestAdminGuideListsEveryName(t *testing.T) {
	documented := documentedValues(t)
	accepted := map[string][]string{}
	for _, a := range attributesToProbe() {
		names, ok := acceptedNames(t, a)
		if !ok {
			continue
		}
		if prev, dup := accepted[a.name]; dup && !slices.Equal(prev, names) {
			t.Errorf("%s takes %q in one block and %q in another", a.name, prev, names)
		}
		accepted[a.name] = names
		docs := documented[a.name]
		for _, name := range names {
			if !slices.Contains(docs, name) {
				t.Errorf("%s = %q is accepted but the configuration reference of docs/admin-guide.md does not list it (it lists %q)", a.name, name, docs)
			}
		}
		for _, name := range docs {
			if !slices.Contains(names, name) {
				t.Errorf("docs/admin-guide.md lists %s = %q, which the decoder does not accept (it accepts %q)", a.name, name, names)
				continue
			}
			if a.name == "mode" && name == FailoverAuto.String() {
				continue // needs every node's failover block: TestFailoverAuto
			}
			if _, err := Parse("r0.hcl", []byte(a.config(name)), LoadOptions{}); err != nil {
				t.Errorf("%s = %q, as documented, does not load: %v", a.name, name, err)
			}
		}
	}
	// Guard against a probe that finds nothing: these are known to be
	// enumerations.
	for _, name := range []string{"protocol", "on_no_quorum", "transport", "compression", "on_congestion", "csums", "after_split_brain", "on_io_error", "mode"} {
		if accepted[name] == nil {
			t.Errorf("probing %s found no list of names; got lists for %q", name, slices.Sorted(maps.Keys(accepted)))
		}
	}
}

// probe is one attribute of the schema and how to write a configuration
// that sets it.
type probe struct {
	name   string
	config func(value string) string
}

// attributesToProbe returns every attribute of every block that takes a
// string, with a valid configuration around it.
func attributesToProbe() []probe {
	thirdNode := "node \"charlie\" {\n    id      = 2\n    address = \"10.0.0.3:7789\"\n    disk    = \"/dev/c\"\n    %s\n  }"
	blocks := []struct {
		schema *hcl.BodySchema
		around string // %s is the attribute
	}{
		{resourceSchema, "%s"},
		// Protocol A lets every on_congestion policy load.
		{netSchema, "protocol = \"A\"\n  net {\n    %s\n  }"},
		{diskSchema, "disk {\n    %s\n  }"},
		{handlersSchema, "handlers {\n    %s\n  }"},
		{nodeSchema, thirdNode},
		{connectionSchema, "connection \"alpha\" \"bravo\" {\n    %s\n  }"},
		{failoverSchema, "failover {\n    %s\n  }"},
	}
	var probes []probe
	for _, b := range blocks {
		for _, a := range b.schema.Attributes {
			if a.Required { // always set by the configuration around it
				continue
			}
			probes = append(probes, probe{name: a.Name, config: func(value string) string {
				attr := fmt.Sprintf("%s = %q", a.Name, value)
				if a.Name == "after_split_brain" && value == "discard-node" {
					attr += "\n    discard_node = \"alpha\""
				}
				if a.Name == "tls" && value == "off" {
					attr += "\n    shared_secret = \"s\"" // authenticated without TLS
				}
				return withTwoNodes(fmt.Sprintf(b.around, attr))
			}})
		}
	}
	return probes
}

// refusedChoiceRE matches the decoder's refusal of a name not in its list.
var refusedChoiceRE = regexp.MustCompile(`^(\w+) = "(.*)" is not valid.*; use one of (.*)\.$`)

// acceptedNames sets a to a nonsense value and returns the names the
// decoder's refusal lists, or false if it refuses it otherwise (or not at
// all): a is not an enumeration.
func acceptedNames(t *testing.T, a probe) ([]string, bool) {
	t.Helper()
	const nonsense = "no-such-value"
	_, err := Parse("r0.hcl", []byte(a.config(nonsense)), LoadOptions{})
	var diags *DiagnosticsError
	if !errors.As(err, &diags) {
		return nil, false
	}
	for _, d := range diags.Diagnostics {
		m := refusedChoiceRE.FindStringSubmatch(d.Detail)
		if m == nil || m[1] != a.name || m[2] != nonsense {
			continue
		}
		var names []string
		for _, q := range regexp.MustCompile(`"([^"]*)"`).FindAllStringSubmatch(m[3], -1) {
			names = append(names, q[1])
		}
		if len(names) == 0 {
			t.Fatalf("%s: refusal lists no names: %s", a.name, d.Detail)
		}
		return names, true
	}
	return nil, false
}

// documentedValues returns, for each field of the tables of the
// configuration reference, the `"quoted"` values of its rows' default and
// meaning columns.
func documentedValues(t *testing.T) map[string][]string {
	t.Helper()
	guide, err := os.ReadFile("../docs/admin-guide.md")
	if err != nil {
		t.Fatal(err)
	}
	_, ref, ok := strings.Cut(string(guide), "\n## Configuration reference\n")
	if !ok {
		t.Fatal(`docs/admin-guide.md has no "## Configuration reference"`)
	}
	ref, _, _ = strings.Cut(ref, "\n## ")
	rowRE := regexp.MustCompile("(?m)^\\| `(\\w+)` \\| [^|]* \\| ([^|]*) \\| (.*) \\|$")
	valueRE := regexp.MustCompile("`\"([^\"`]*)\"`")
	values := map[string][]string{}
	rows := rowRE.FindAllStringSubmatch(ref, -1)
	if len(rows) < 20 {
		t.Fatalf("found %d field rows in the configuration reference; its table layout changed?", len(rows))
	}
	for _, row := range rows {
		for _, v := range valueRE.FindAllStringSubmatch(row[2]+row[3], -1) {
			if !slices.Contains(values[row[1]], v[1]) {
				values[row[1]] = append(values[row[1]], v[1])
			}
		}
	}
	return values
}
