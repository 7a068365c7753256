package node

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/georepl/georepl/cmd/georepl/internal/checker"
	"github.com/georepl/georepl/kmod/nbd"
)

// autoFailover edits the demo configuration for automatic failover: every
// node votes on a consensus port of its own (dr with auto_promote =
// false: the remote site is the operator's), with a detection timeout of
// detection. onPromote, if not empty, is the on_promote handler.
func autoFailover(t *testing.T, detection time.Duration, onPromote string) func(dir, src string) string {
	ports, err := checker.FreePorts(3)
	if err != nil {
		t.Fatal(err)
	}
	return func(dir, src string) string {
		i := 0
		src = regexp.MustCompile(`(?m)^  node "(\w+)" \{\n`).ReplaceAllStringFunc(src, func(m string) string {
			name := regexp.MustCompile(`"(\w+)"`).FindStringSubmatch(m)[1]
			extra := ""
			if name == "dr" {
				extra = "      auto_promote = false\n"
			}
			i++
			return m + fmt.Sprintf("    failover {\n      address = \"127.0.0.1:%d\"\n      dir = %q\n%s    }\n", ports+i-1, filepath.Join(dir, name+".failover"), extra)
		})
		block := fmt.Sprintf("  failover {\n    mode = \"auto\"\n    detection_timeout = \"%s\"\n  }\n", detection)
		if onPromote != "" {
			block += fmt.Sprintf("  handlers {\n    on_promote = %q\n  }\n", onPromote)
		}
		return regexp.MustCompile(`(?m)^  net \{\n`).ReplaceAllString(src, block+"\n  net {\n")
	}
}

// TestAutoFailoverPrimaryLost: the demo cluster under automatic failover
// (alpha, bravo and dr vote; dr is never promoted automatically). The
// operator makes alpha Primary through the log; alpha writes under
// protocol C; alpha's daemon stops. bravo is promoted by the log without
// an operator, in term 2, runs on_promote, holds every write alpha
// acknowledged, and completes writes of its own once its new generation
// is in the log.
func TestAutoFailoverPrimaryLost(t *testing.T) {
	dir := t.TempDir()
	mark, script := filepath.Join(dir, "promoted"), filepath.Join(dir, "on-promote")
	if err := os.WriteFile(script, []byte("#!/bin/sh\necho \"$GEOREPL_NODE\" > "+mark+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	daemons := demoCluster(t, autoFailover(t, time.Second, script), nil)
	alpha, bravo := daemons["alpha"], daemons["bravo"]
	if err := alpha.lookup("r0").Primary(true); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "bravo in sync", func() (bool, string) {
		p := peerStatus(t, alpha, "bravo")
		return p.Disk == "UpToDate" && p.Repl == "Established", fmt.Sprintf("%+v", p)
	})
	dev, err := alpha.LocalDevice("r0")
	if err != nil {
		t.Fatal(err)
	}
	var written [][]byte
	for i := range 4 {
		buf := dev.(nbd.WriteBuffers).WriteBuffer(64 << 10)
		rand.Read(buf)
		written = append(written, bytes.Clone(buf))
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		err := dev.WriteAt(ctx, buf, uint64(i)<<16, false)
		cancel()
		if err != nil {
			t.Fatalf("write %d on alpha: %v", i, err)
		}
	}
	st, _ := alpha.StatusNow("r0")
	if f := st[0].Failover; f == nil || f.Holder != "alpha" || f.Term != 1 {
		t.Fatalf("alpha's failover status %+v, want alpha holding term 1", f)
	}

	lost := time.Now()
	if err := alpha.Close(); err != nil {
		t.Fatal(err)
	}
	var promotedAfter time.Duration
	waitUntil(t, "bravo promoted automatically", func() (bool, string) {
		st, _ := bravo.StatusNow("r0")
		if st[0].Role == "Primary" {
			promotedAfter = time.Since(lost)
			return true, ""
		}
		return false, fmt.Sprintf("%+v", st[0].Failover)
	})
	t.Logf("failover time: %v from the Primary's shutdown to bravo's promotion (detection_timeout 1s)", promotedAfter)
	st, _ = bravo.StatusNow("r0")
	if f := st[0].Failover; f.Holder != "bravo" || f.Term != 2 {
		t.Fatalf("bravo's failover status %+v, want bravo holding term 2", f)
	}
	if dr, _ := daemons["dr"].StatusNow("r0"); dr[0].Role != "Secondary" {
		t.Fatalf("dr is %s", dr[0].Role)
	}
	bdev, err := bravo.LocalDevice("r0")
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range written {
		got := make([]byte, len(want))
		if err := bdev.ReadAt(context.Background(), got, uint64(i)<<16); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("write %d that alpha acknowledged is not on bravo after the failover", i)
		}
	}
	buf := bdev.(nbd.WriteBuffers).WriteBuffer(4096)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := bdev.WriteAt(ctx, buf, 0, false); err != nil {
		t.Fatalf("a write on the promoted bravo: %v", err)
	}
	waitUntil(t, "on_promote ran on bravo", func() (bool, string) {
		b, err := os.ReadFile(mark)
		return string(b) == "bravo\n", fmt.Sprintf("%q %v", b, err)
	})
}
