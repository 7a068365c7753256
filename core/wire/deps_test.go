package wire

import (
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestImportsNoGeorepl enforces the dependency rule: core/wire sits at the
// bottom of the module and imports no georepl package, tests included
// (examples import core/wire itself, nothing else).
func TestImportsNoGeorepl(t *testing.T) {
	const module = "github.com/georepl/georepl"
	const self = module + "/core/wire"
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	for _, name := range files {
		f, err := parser.ParseFile(fset, name, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range f.Imports {
			path, err := strconv.Unquote(imp.Path.Value)
			if err != nil {
				t.Fatal(err)
			}
			if path != self && (path == module || strings.HasPrefix(path, module+"/")) {
				t.Errorf("%s imports %s: core/wire must not import georepl packages", fset.Position(imp.Pos()), path)
			}
		}
	}
}
