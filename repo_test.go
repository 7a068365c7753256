// Package repo_test holds the repository's own lint rules: checks of the
// tree as a whole that no compiler or linter makes. `make lint` runs them.
package repo_test

import (
	"bytes"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
)

// repoFiles returns the slash-separated paths of the repository's files,
// without version control, build output, caches and test data (fuzz
// corpora hold arbitrary bytes).
func repoFiles(t *testing.T) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && p != "." && (strings.HasPrefix(d.Name(), ".") && d.Name() != ".ci" || d.Name() == "bin" || d.Name() == "testdata") {
			return filepath.SkipDir
		}
		if d.Type().IsRegular() {
			files = append(files, filepath.ToSlash(p))
		}
		return nil
	})
	if err != nil {
		t.Fatalf("listing the repository: %v", err)
	}
	return files
}

// mdMention is a Markdown file name as code and docs cite it:
// "docs/architecture.md", "wire-format.md".
var mdMention = regexp.MustCompile(`[A-Za-z0-9_./-]*[A-Za-z0-9_-]+\.md\b`)

// TestCitesOnlyRepositoryFiles keeps the repository standing alone: every
// Markdown file a file names is one of the repository's, so that a reader
// never meets a reference to a document they cannot open. A name resolves
// from the citing file's directory, from the root, or, bare, as any file of
// that name ("architecture.md" in a comment is docs/architecture.md).
func TestCitesOnlyRepositoryFiles(t *testing.T) {
	files := repoFiles(t)
	have := map[string]bool{}
	base := map[string]bool{}
	for _, f := range files {
		have[f] = true
		base[path.Base(f)] = true
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.IndexByte(b, 0) >= 0 {
			continue // binary
		}
		for i, line := range strings.Split(string(b), "\n") {
			for _, m := range mdMention.FindAllString(line, -1) {
				rel := path.Join(path.Dir(f), m)
				switch {
				case strings.HasPrefix(rel, "../"):
					t.Errorf("%s:%d: %q is outside the repository", f, i+1, m)
				case have[rel] || have[path.Clean(m)] || !strings.Contains(m, "/") && base[m]:
				default:
					t.Errorf("%s:%d: %q is not a file of the repository: put what the reader needs in docs/ or a package doc", f, i+1, m)
				}
			}
		}
	}
}

// mdLink is a Markdown link's target: "[text](target)".
var mdLink = regexp.MustCompile(`\]\(([^)\s]+)\)`)

// TestMarkdownLinks checks every relative link of the Markdown docs: its
// file or directory exists in the repository, and its #anchor names a
// heading of the target, so that moving a file or renaming a section
// cannot leave a dead link behind.
func TestMarkdownLinks(t *testing.T) {
	files := repoFiles(t)
	have := map[string]bool{}
	for _, f := range files {
		have[f] = true
		for d := path.Dir(f); d != "."; d = path.Dir(d) {
			have[d] = true
		}
	}
	for _, f := range files {
		if !strings.HasSuffix(f, ".md") {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for i, line := range strings.Split(string(b), "\n") {
			for _, m := range mdLink.FindAllStringSubmatch(line, -1) {
				target := m[1]
				if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
					continue
				}
				file, anchor, _ := strings.Cut(target, "#")
				if file == "" {
					file = f
				} else {
					file = path.Join(path.Dir(f), file)
				}
				switch {
				case strings.HasPrefix(file, "../"):
					t.Errorf("%s:%d: link %q leaves the repository", f, i+1, target)
				case !have[file]:
					t.Errorf("%s:%d: link %q: no file or directory %s", f, i+1, target, file)
				case anchor != "" && !headingAnchors(t, file)[anchor]:
					t.Errorf("%s:%d: link %q: %s has no heading with anchor #%s", f, i+1, target, file, anchor)
				}
			}
		}
	}
}

// headingAnchors returns the anchors a Markdown renderer gives the
// headings of file: lower case, spaces as hyphens, other punctuation
// dropped.
func headingAnchors(t *testing.T, file string) map[string]bool {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	anchors := map[string]bool{}
	fence := false
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "```") {
			fence = !fence
		}
		if fence || !strings.HasPrefix(line, "#") {
			continue
		}
		title := strings.TrimSpace(strings.TrimLeft(line, "#"))
		var a strings.Builder
		for _, r := range strings.ToLower(title) {
			switch {
			case r == ' ':
				a.WriteRune('-')
			case r == '-' || r == '_' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r > 127:
				a.WriteRune(r)
			}
		}
		anchors[a.String()] = true
	}
	return anchors
}

// TestTopLevelLayout: the repository's top level is fixed (docs/architecture.md,
// "The repository's layout"): a new directory belongs under one of these.
func TestTopLevelLayout(t *testing.T) {
	allowedDirs := map[string]bool{".ci": true, "cmd": true, "core": true, "protocols": true, "transports": true,
		"plugins": true, "kmod": true, "configs": true, "docs": true}
	allowedFiles := map[string]bool{".gitignore": true, "go.mod": true, "go.sum": true, "Makefile": true,
		"README.md": true, "repo_test.go": true}
	// What git tracks: build output and local binaries are not the
	// repository's (without git, every file but the ignored directories).
	files := repoFiles(t)
	if out, err := exec.Command("git", "ls-files").Output(); err == nil {
		files = strings.Fields(string(out))
	}
	for _, f := range files {
		top, _, nested := strings.Cut(f, "/")
		if nested && !allowedDirs[top] || !nested && !allowedFiles[top] {
			t.Errorf("%s: the top level holds only %v and the files %v", f, keys(allowedDirs), keys(allowedFiles))
		}
	}
}

func keys(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// TestNoBinaries: build output is never committed (two binaries once
// were, by a go build run inside a package folder).
func TestNoBinaries(t *testing.T) {
	out, err := exec.Command("git", "ls-files").Output()
	if err != nil {
		t.Skipf("no git to list the tracked files: %v", err)
	}
	for _, f := range strings.Fields(string(out)) {
		b, err := os.ReadFile(f)
		if err != nil {
			continue // deleted in the work tree
		}
		if bytes.HasPrefix(b, []byte("\x7fELF")) {
			t.Errorf("%s is an executable: build output belongs in bin/ or .gitignore", f)
		}
	}
}
