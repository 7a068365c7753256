package transports_test

import (
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

const module = "github.com/georepl/georepl"

// TestTransportsAreLeaves enforces the dependency rule: the transports
// tree imports no other georepl package, and transporttest only from
// tests.
func TestTransportsAreLeaves(t *testing.T) {
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") {
			return err
		}
		f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		isTest := strings.HasSuffix(path, "_test.go")
		inSuite := filepath.Dir(path) == "transporttest"
		for _, spec := range f.Imports {
			imp, _ := strconv.Unquote(spec.Path.Value)
			if !strings.HasPrefix(imp, module+"/") {
				continue
			}
			switch {
			case imp != module+"/transports" && !strings.HasPrefix(imp, module+"/transports/"):
				t.Errorf("%s imports %s: the transports tree may import only transports packages", path, imp)
			case imp == module+"/transports/transporttest" && !isTest && !inSuite:
				t.Errorf("%s imports the conformance suite outside a test", path)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
