package core

import (
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestImports enforces the package's two architecture rules. core imports
// no georepl package but protocols and core/wire (tests included), and
// the engine itself (non-test files) imports nothing that could do I/O,
// read a clock, draw random numbers or start goroutines: only the few
// standard packages listed here.
func TestImports(t *testing.T) {
	const module = "github.com/georepl/georepl"
	georepl := map[string]bool{module + "/protocols": true, module + "/core/wire": true}
	engine := map[string]bool{"errors": true, "fmt": true, "math/bits": true}
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
			isGeorepl := path == module || strings.HasPrefix(path, module+"/")
			switch {
			case isGeorepl && !georepl[path]:
				t.Errorf("%s imports %s: core imports only protocols and core/wire", fset.Position(imp.Pos()), path)
			case !strings.HasSuffix(name, "_test.go") && !isGeorepl && !engine[path]:
				t.Errorf("%s imports %s: the engine does no I/O and has no clock, randomness or goroutines", fset.Position(imp.Pos()), path)
			}
		}
	}
}
