package configs

import (
	"cmp"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclparse"
)

// ErrNoConfigFiles is wrapped by LoadDir's error when the directory holds no
// *.hcl file.
var ErrNoConfigFiles = errors.New("no *.hcl configuration files")

// LoadOptions adjusts what LoadDir and Parse accept. The zero value is ready
// to use.
type LoadOptions struct {
	// Transports lists the transport names that net.transport may take,
	// besides those of the configuration's plugin blocks. Empty means the
	// built-in ones, "tcp" and "quic".
	Transports []string
}

func (o LoadOptions) transports() []string {
	if len(o.Transports) == 0 {
		return []string{"tcp", "quic"}
	}
	return o.Transports
}

// LoadDir reads every regular *.hcl file of dir, in name order, as one
// configuration, and returns it validated and with every default filled in.
// Resources may be spread over the files, but each is defined in one place.
//
// A missing or unreadable directory gives the underlying error (errors.Is
// with fs.ErrNotExist works); a directory without *.hcl files gives an error
// wrapping ErrNoConfigFiles. Problems in the files themselves give a
// *DiagnosticsError listing all of them. On error the Config is nil.
func LoadDir(dir string, opts LoadOptions) (*Config, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("configs: read configuration directory: %w", err)
	}
	parser := hclparse.NewParser()
	var files []*hcl.File
	var diags hcl.Diagnostics
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".hcl") {
			continue
		}
		path := filepath.Join(dir, e.Name())
		info, err := os.Stat(path) // follows symlinks, unlike e.Type()
		if err != nil {
			return nil, fmt.Errorf("configs: %w", err)
		}
		if !info.Mode().IsRegular() {
			continue
		}
		src, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("configs: %w", err)
		}
		f, fileDiags := parser.ParseHCL(src, path)
		diags = append(diags, fileDiags...)
		files = append(files, f)
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("configs: directory %q: %w", dir, ErrNoConfigFiles)
	}
	return decodeFiles(parser, files, diags, opts)
}

// Parse reads one file's source as a whole configuration, exactly as LoadDir
// would read a directory holding only that file. filename is used in
// diagnostics. Problems give a *DiagnosticsError and a nil Config.
func Parse(filename string, src []byte, opts LoadOptions) (*Config, error) {
	parser := hclparse.NewParser()
	f, diags := parser.ParseHCL(src, filename)
	return decodeFiles(parser, []*hcl.File{f}, diags, opts)
}

// decodeFiles validates parsed files. Syntax errors stop it before decoding,
// since a half-parsed body would only add misleading errors.
func decodeFiles(parser *hclparse.Parser, files []*hcl.File, diags hcl.Diagnostics, opts LoadOptions) (*Config, error) {
	if diags.HasErrors() {
		return nil, newDiagnosticsError(parser, diags)
	}
	d := newDecoder(opts.transports())
	for _, f := range files {
		d.file(f.Body)
	}
	for _, block := range d.resourceBlocks {
		d.resource(block)
	}
	if len(d.config.Resources) == 0 && !d.diags.HasErrors() {
		subject := files[0].Body.MissingItemRange()
		d.fail(subject, nil, "No resources",
			"The configuration defines no resource block; write at least one, as in the examples.")
	}
	if d.diags.HasErrors() {
		return nil, newDiagnosticsError(parser, d.diags)
	}
	return &d.config, nil
}

// DiagnosticsError is the error LoadDir and Parse return for problems in the
// configuration itself: syntax errors, unknown or missing fields, values of
// the wrong type or out of range, duplicates and dangling references. Its
// Error lists every problem, one per line, as
//
//	FILE:LINE:COLUMN: Summary; detail
//
// ordered by file and position. It unwraps to hcl.Diagnostics, so
// errors.As(err, &diags) gives the diagnostics for richer rendering.
type DiagnosticsError struct {
	// Diagnostics are the problems found, sorted by file and position.
	Diagnostics hcl.Diagnostics
	// Files maps each file name to its parsed source, so that a CLI can show
	// the offending lines with hcl.NewDiagnosticTextWriter.
	Files map[string]*hcl.File
}

func newDiagnosticsError(parser *hclparse.Parser, diags hcl.Diagnostics) *DiagnosticsError {
	sorted := slices.Clone(diags)
	slices.SortStableFunc(sorted, func(a, b *hcl.Diagnostic) int {
		ra, rb := subjectOf(a), subjectOf(b)
		return cmp.Or(cmp.Compare(ra.Filename, rb.Filename), cmp.Compare(ra.Start.Byte, rb.Start.Byte))
	})
	return &DiagnosticsError{Diagnostics: sorted, Files: parser.Files()}
}

func subjectOf(d *hcl.Diagnostic) hcl.Range {
	if d.Subject == nil {
		return hcl.Range{}
	}
	return *d.Subject
}

// Error writes every diagnostic on its own line.
func (e *DiagnosticsError) Error() string {
	var b strings.Builder
	for i, d := range e.Diagnostics {
		if i > 0 {
			b.WriteByte('\n')
		}
		if d.Subject != nil {
			fmt.Fprintf(&b, "%s: ", where(*d.Subject))
		}
		if d.Severity == hcl.DiagWarning {
			b.WriteString("warning: ")
		}
		b.WriteString(d.Summary)
		if d.Detail != "" {
			b.WriteString("; ")
			b.WriteString(d.Detail)
		}
	}
	return b.String()
}

// Unwrap returns the diagnostics, for errors.As.
func (e *DiagnosticsError) Unwrap() error {
	return e.Diagnostics
}
