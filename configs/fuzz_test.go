package configs

import (
	"io/fs"
	"slices"
	"testing"

	"github.com/georepl/georepl/protocols"
)

// FuzzParse checks that no input makes Parse panic, and that whatever it
// accepts is complete: every node pair has a valid link and every value is
// within its documented range.
func FuzzParse(f *testing.F) {
	names, err := fs.Glob(Examples, "examples/*.hcl")
	if err != nil {
		f.Fatal(err)
	}
	for _, name := range names {
		src, err := fs.ReadFile(Examples, name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(src)
	}
	f.Add(Demo("/var/lib/georepl", 7789))
	f.Add([]byte(threeNodes))
	for _, tc := range errorCases {
		f.Add([]byte(tc.src))
	}
	f.Fuzz(func(t *testing.T, src []byte) {
		cfg, err := Parse("fuzz.hcl", src, LoadOptions{})
		if err != nil {
			if cfg != nil {
				t.Fatalf("partial config with error %v", err)
			}
			return
		}
		for _, r := range cfg.Resources {
			checkResource(t, r)
		}
	})
}

func checkResource(t *testing.T, r *Resource) {
	if len(r.Nodes) < 2 {
		t.Fatalf("resource %q accepted with %d nodes", r.Name, len(r.Nodes))
	}
	for _, a := range r.Nodes {
		if a.ID < 0 || a.ID > maxNodeID || r.NodeByID(a.ID) != a || a.Address == "" || a.Disk == "" || a.MetaDisk == "" {
			t.Fatalf("resource %q: node %+v accepted", r.Name, *a)
		}
		if got := len(r.Peers(a.Name)); got != len(r.Nodes)-1 {
			t.Fatalf("resource %q: node %q has %d peers", r.Name, a.Name, got)
		}
		for _, b := range r.Nodes {
			if a == b {
				continue
			}
			link, err := r.Link(a.Name, b.Name)
			if err != nil {
				t.Fatalf("resource %q: Link(%q, %q): %v", r.Name, a.Name, b.Name, err)
			}
			if !slices.Contains(protocols.All(), link.Protocol) ||
				link.Net.MaxBuffer < minMaxBuffer || link.Net.PingInterval <= 0 || link.Net.Timeout <= 0 || link.Net.ConnectRetry <= 0 {
				t.Fatalf("resource %q: Link(%q, %q) = %+v", r.Name, a.Name, b.Name, link)
			}
		}
	}
}
