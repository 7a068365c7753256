package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/georepl/georepl/cmd/georepl/internal/node"
	"github.com/georepl/georepl/core"
	"github.com/georepl/georepl/core/meta"
	"github.com/georepl/georepl/kmod"
	"github.com/georepl/georepl/kmod/nbd"
)

// TestClusterPrimaryCrashResyncsActivityLog (issue 3): on 16 GiB sparse
// disks, the primary takes about 64 MiB of writes scattered over the whole
// device and is killed (SIGKILL) with writes streaming in; bravo takes over
// and the old primary comes back just by starting. The resync to it moves
// its activity log (at most al_extents × 4 MiB) plus what the new primary
// marked (the lost primary's unconfirmed writes), not the device; both
// ends' status says why; all three disks end byte-identical.
func TestClusterPrimaryCrashResyncsActivityLog(t *testing.T) {
	t.Parallel()
	const (
		size      = 16 << 30
		alExtents = 32
		alSpan    = alExtents * meta.ActivityLogExtentSize
	)
	c := newCluster(t, size, func(src string) string {
		return strings.Replace(src, "resource \"r0\" {\n", fmt.Sprintf("resource \"r0\" {\n  disk {\n    al_extents = %d\n  }\n", alExtents), 1)
	})
	// The disks are all holes, hence identical: start the three in sync
	// on one generation rather than copying 16 GiB of zeros.
	for _, n := range demoNodes {
		seedInSync(t, c, n, 0x5eed0001)
	}
	for _, n := range demoNodes {
		c.start(n)
	}
	c.cli("alpha", "primary", "r0")
	c.waitFor("alpha", "both peers in sync", 30*time.Second, func(st *node.ResourceStatus) bool {
		for _, p := range st.Peers {
			if p.Conn != "Connected" || p.Repl != "Established" || p.Disk != "UpToDate" {
				return false
			}
		}
		return true
	})
	dataSize := c.status("alpha").Size

	// 1 MiB writes, each in a random 4 MiB extent anywhere on the device,
	// far more extents than the activity log holds: 48 MiB, then more
	// streaming while alpha is killed.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	client, err := nbd.Dial(ctx, c.node("alpha").Export, "r0")
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	rng := rand.New(rand.NewPCG(1, uint64(time.Now().UnixNano())))
	extents := dataSize / meta.ActivityLogExtentSize
	buf := make([]byte, 1<<20)
	write := func() error {
		for i := range buf {
			buf[i] = byte(rng.Uint32())
		}
		off := rng.Uint64N(extents)*meta.ActivityLogExtentSize + rng.Uint64N(4)*(1<<20)
		return client.WriteAt(buf, int64(off), false)
	}
	for range 48 {
		if err := write(); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	wg.Add(1)
	written := 48
	streaming := make(chan struct{})
	go func() {
		defer wg.Done()
		for i := range 48 {
			if i == 4 {
				close(streaming)
			}
			if write() != nil {
				return // alpha is gone
			}
			written++
		}
	}()
	<-streaming
	c.kill("alpha")
	wg.Wait()
	t.Logf("%d MiB written (completed) before alpha was killed", written)
	if written >= 96 {
		t.Log("every write completed before the kill: none was in flight")
	}

	// Failover, then the old primary comes back as it is.
	c.waitFor("bravo", "alpha gone", 30*time.Second, func(st *node.ResourceStatus) bool {
		return c.peer(st, "alpha").Conn != "Connected"
	})
	c.cli("bravo", "primary", "r0")
	start := time.Now()
	c.start("alpha")
	c.cli("bravo", "wait-sync", "--timeout", "2m", "r0")
	took := time.Since(start)

	src := c.peer(c.status("bravo"), "alpha").LastResync
	dst := c.peer(c.status("alpha"), "bravo").LastResync
	if src == nil || dst == nil {
		t.Fatalf("no resync between bravo and alpha in status: bravo %+v, alpha %+v", src, dst)
	}
	t.Logf("resync bravo -> alpha: %s in %s (device %s); bravo: %q; alpha: %q",
		node.HumanBytes(src.Bytes), took.Round(time.Millisecond), node.HumanBytes(dataSize), src.Reason, dst.Reason)
	// alpha's marks are its activity log; bravo's are alpha's writes it
	// received but not every node confirmed (or that alpha had not sent
	// yet), all within alpha's active extents too.
	if src.Cause.MarkedByPeer == 0 || src.Cause.MarkedByPeer > alSpan {
		t.Errorf("alpha's marks: %d bytes; want some, at most the activity log's %d", src.Cause.MarkedByPeer, alSpan)
	}
	if src.Bytes == 0 || src.Bytes > alSpan+src.Cause.MarkedHere || src.Bytes > dataSize/64 {
		t.Errorf("the resync moved %d bytes; want some, at most the activity log's %d plus bravo's marks %d, far below the device's %d",
			src.Bytes, alSpan, src.Cause.MarkedHere, dataSize)
	}
	if dst.Cause.AfterCrash == 0 || dst.Cause.AfterCrash > alExtents ||
		!strings.Contains(dst.Reason, fmt.Sprintf("after crash: activity log %d extent", dst.Cause.AfterCrash)) {
		t.Errorf("alpha's status of the resync: %+v; want it to name its activity log of at most %d extents", dst, alExtents)
	}
	if !strings.Contains(src.Reason, "marked by the peer") {
		t.Errorf("bravo's status of the resync: %q; want it to name alpha's marks", src.Reason)
	}
	text := c.cli("alpha", "status", "r0")
	if !strings.Contains(text, "last resync: ") || !strings.Contains(text, "after crash: activity log") {
		t.Errorf("georepl status on alpha does not say why it resynced:\n%s", text)
	}

	c.cli("bravo", "secondary", "r0")
	for _, n := range demoNodes {
		c.cli(n, "down", "r0")
	}
	if err := sameSparse(dataSize, c.node("alpha").Disk, c.node("bravo").Disk, c.node("dr").Disk); err != nil {
		t.Fatal(err)
	}
}

// seedInSync gives node n's new metadata generation gen, UpToDate: what
// the three nodes would hold after an initial sync of disks that are
// identical.
func seedInSync(t *testing.T, c *cluster, n string, gen uint64) {
	t.Helper()
	b, err := kmod.OpenBacking(c.node(n).Disk)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	_, off, msize, err := meta.InternalLayout(b.Size(), len(demoNodes), uint32(c.rc.Disk.BlockSize))
	if err != nil {
		t.Fatal(err)
	}
	store, err := meta.Open(b.Region(off, msize), 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := store.UpdateSuperblock(func(sb *meta.Superblock) {
		sb.Current, sb.DiskState = gen, uint8(core.UpToDate)
	}); err != nil {
		t.Fatal(err)
	}
}

// sameSparse checks that the first n bytes of the files at paths are
// identical, reading only where one of them has data (elsewhere all are
// holes, hence zeros).
func sameSparse(n uint64, paths ...string) error {
	var files []*os.File
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		files = append(files, f)
	}
	// The union of the files' data ranges, by walking each one's.
	var ranges [][2]int64
	for _, f := range files {
		for off := int64(0); off < int64(n); {
			data, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
			if errors.Is(err, unix.ENXIO) || err == nil && data >= int64(n) {
				break
			} else if err != nil {
				return err
			}
			hole, err := unix.Seek(int(f.Fd()), data, unix.SEEK_HOLE)
			if err != nil {
				return err
			}
			hole = min(hole, int64(n))
			ranges = append(ranges, [2]int64{data, hole})
			off = hole
		}
	}
	a, b := make([]byte, 1<<20), make([]byte, 1<<20)
	var compared int64
	for _, r := range ranges {
		for off := r[0]; off < r[1]; off += int64(len(a)) {
			k := min(int64(len(a)), r[1]-off)
			if _, err := io.ReadFull(io.NewSectionReader(files[0], off, k), a[:k]); err != nil {
				return err
			}
			for i, f := range files[1:] {
				if _, err := io.ReadFull(io.NewSectionReader(f, off, k), b[:k]); err != nil {
					return err
				}
				if !bytes.Equal(a[:k], b[:k]) {
					return fmt.Errorf("%s and %s differ in [%d, +%d)", paths[0], paths[i+1], off, k)
				}
			}
			compared += k
		}
	}
	if compared == 0 {
		return fmt.Errorf("no data in %v", paths)
	}
	return nil
}
