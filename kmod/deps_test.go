package kmod

import (
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestLeafPackage enforces DESIGN.md's dependency rule: kmod and its
// subpackages import no georepl package outside kmod.
func TestLeafPackage(t *testing.T) {
	const module = "github.com/georepl/georepl/"
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	sub, err := filepath.Glob("*/*.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, file := range append(files, sub...) {
		if strings.HasSuffix(file, "_test.go") {
			continue
		}
		parsed, err := parser.ParseFile(token.NewFileSet(), file, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, spec := range parsed.Imports {
			path, _ := strconv.Unquote(spec.Path.Value)
			if strings.HasPrefix(path, module) && path != module+"kmod" && !strings.HasPrefix(path, module+"kmod/") {
				t.Errorf("%s imports %s: kmod must stay a leaf", file, path)
			}
		}
	}
	if len(sub) == 0 {
		t.Fatal("found no files in kmod's subpackages; is the test running in kmod/?")
	}
}
