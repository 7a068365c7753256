package configs

import (
	"go/build"
	"strings"
	"testing"
)

// TestImportsNoGeorepl enforces that configs stays a leaf: protocols and
// transports are validated by name so that every other package may import
// configs without a cycle.
func TestImportsNoGeorepl(t *testing.T) {
	pkg, err := build.ImportDir(".", 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, imp := range pkg.Imports {
		if strings.HasPrefix(imp, "github.com/georepl/georepl") {
			t.Errorf("configs imports %s; it must import no georepl package", imp)
		}
	}
}
