package main

import (
	"bytes"
	"os/exec"
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

// TestManPageCoversEveryCommand: the manual page `make install` installs
// has a section for every verb --help lists, names every option of each,
// and is roff that groff formats without a warning.
func TestManPageCoversEveryCommand(t *testing.T) {
	t.Parallel()
	root := rootCmd()
	var page bytes.Buffer
	if err := writeMan(&page, root); err != nil {
		t.Fatal(err)
	}
	man := page.String()
	verbs := 0
	for _, c := range manCommands(root) {
		verbs++
		section := ".SS \"" + roffText(c.CommandPath()) + "\"\n"
		i := strings.Index(man, section)
		if i < 0 {
			t.Errorf("no section for %q", c.CommandPath())
			continue
		}
		body := man[i+len(section):]
		if j := strings.Index(body, ".SS "); j >= 0 {
			body = body[:j]
		}
		c.LocalNonPersistentFlags().VisitAll(func(f *pflag.Flag) {
			if !f.Hidden && !strings.Contains(body, "\\-\\-"+roffText(f.Name)) {
				t.Errorf("the section of %q does not name --%s", c.CommandPath(), f.Name)
			}
		})
	}
	for _, verb := range []string{"resize", "adjust", "top", "daemon", "tls init"} {
		if !strings.Contains(man, ".SS \"georepl "+roffText(verb)+"\"") {
			t.Errorf("no section for georepl %s", verb)
		}
	}
	if strings.Contains(man, ".SS \"georepl man\"") {
		t.Error("the hidden man verb has a section")
	}
	if verbs < 20 {
		t.Errorf("only %d verbs in the manual page", verbs)
	}
	groff, err := exec.LookPath("groff")
	if err != nil {
		t.Log("groff not installed: the roff is not checked")
		return
	}
	cmd := exec.Command(groff, "-man", "-Tutf8", "-ww", "-z")
	cmd.Stdin = strings.NewReader(man)
	out, err := cmd.CombinedOutput()
	if err != nil || len(out) > 0 {
		t.Errorf("groff: %v\n%s", err, out)
	}
}
