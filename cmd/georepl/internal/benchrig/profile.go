package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
)

// startProfiles, with -profile, starts a CPU profile of every daemon of the
// cluster serving uri for as long as one fio run of workload w lasts, and
// returns a function that waits for them and writes each to the profile
// directory as BINARY_SETUP_WORKLOAD_NODE_runN.pprof. Profiling costs the
// daemons a little CPU: the run's numbers stay in the table, but a
// profiled run is a diagnosis, not a measurement.
func (r *rig) startProfiles(uri string, w workload, run int) (wait func()) {
	if r.profileDir == "" {
		return func() {}
	}
	var wg sync.WaitGroup
	for _, target := range r.pprof[uri] {
		addr, label, _ := strings.Cut(target, "/")
		name := fmt.Sprintf("%s_%s_run%d.pprof", strings.ReplaceAll(label, "/", "_"), slug(w.name), run)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := fetchProfile(addr, int(r.runtime.Seconds()), filepath.Join(r.profileDir, name)); err != nil {
				fmt.Fprintf(os.Stderr, "profile %s: %v\n", name, err)
			}
		}()
	}
	return wg.Wait
}

func fetchProfile(addr string, seconds int, path string) error {
	resp, err := http.Get(fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", addr, seconds))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", addr, resp.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// slug turns a set-up or workload name into a file-name word.
func slug(name string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '+', r == '.':
			return r
		}
		return '-'
	}, name)
}
