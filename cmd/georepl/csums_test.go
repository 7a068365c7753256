package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/georepl/georepl/cmd/georepl/internal/node"
	"github.com/georepl/georepl/kmod/nbd"
)

// withCsums turns on checksum resync: xxh64 by default, sha256 on the
// alpha–dr connection (a connection block overrides the resource's net).
func withCsums(src string) string {
	src = strings.Replace(src, `shared_secret = "demo-secret"`, `shared_secret = "demo-secret"
    csums         = "xxh64"`, 1)
	return strings.Replace(src, `compression = "lz4"`, `compression = "lz4"
      csums       = "sha256"`, 1)
}

// fillDisks writes the same pattern over the first n bytes of every
// node's disk, behind georepl's back (before the daemons start).
func (c *cluster) fillDisks(n int) []byte {
	c.t.Helper()
	pattern := make([]byte, n)
	for i := range pattern {
		pattern[i] = byte(i/4096*7 + i%251)
	}
	for _, nd := range demoNodes {
		c.writeBlocks(nd, 0, pattern)
	}
	return pattern
}

// writeBlocks writes p at off into node n's backing file directly.
func (c *cluster) writeBlocks(n string, off int64, p []byte) {
	c.t.Helper()
	f, err := os.OpenFile(c.node(n).Disk, os.O_WRONLY, 0)
	if err != nil {
		c.t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(p, off); err != nil {
		c.t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		c.t.Fatal(err)
	}
}

// TestClusterCsumResync: three new nodes whose disks already hold the same
// data, except three blocks on dr. The first (full) sync with csums sends
// only those three blocks: the status counts everything else as "same",
// the bytes on the wire are a small fraction of the device, and the disks
// end byte-identical.
func TestClusterCsumResync(t *testing.T) {
	t.Parallel()
	const size = 32 << 20
	c := newCluster(t, size, withCsums)
	c.fillDisks(8 << 20)
	for _, off := range []int64{4096, 3 << 20, 20 << 20} {
		c.writeBlocks("dr", off, bytes.Repeat([]byte{0xEE}, 4096))
	}
	c.startInSync()
	st := c.status("alpha")
	bravo, dr := c.peer(st, "bravo"), c.peer(st, "dr")
	if bravo.SameBytes != st.Size {
		t.Errorf("bravo: %d bytes found identical, want the whole device (%d)", bravo.SameBytes, st.Size)
	}
	if dr.SameBytes != st.Size-3*4096 {
		t.Errorf("dr: %d bytes found identical, want all but the 3 corrupt blocks (%d)", dr.SameBytes, st.Size-3*4096)
	}
	// Digests are 8 (xxh64) or 32 (sha256) bytes per 4 KiB block; a full
	// sync without csums would send the whole device.
	for _, p := range []node.PeerStatus{bravo, dr} {
		if p.BytesSent > st.Size/16 {
			t.Errorf("%s: %d bytes sent for a full sync of %d bytes with csums", p.Name, p.BytesSent, st.Size)
		}
	}
	t.Logf("full sync of %d bytes with csums: sent %d bytes to bravo (xxh64), %d to dr (sha256)", st.Size, bravo.BytesSent, dr.BytesSent)
	if text := c.cli("alpha", "status", "r0"); !strings.Contains(text, "same:") {
		t.Errorf("status does not show the bytes found identical:\n%s", text)
	}
	c.settleAndCompare()
}

// waitSame waits until alpha has resynchronised peer and found exactly
// same bytes identical: the resync started by an invalidation, not an
// earlier one.
func (c *cluster) waitSame(peer string, same uint64) {
	c.t.Helper()
	c.waitFor("alpha", fmt.Sprintf("%s resynchronised with %d bytes found identical", peer, same), 2*time.Minute, func(st *node.ResourceStatus) bool {
		p := c.peer(st, peer)
		return p.Repl == "Established" && p.Disk == "UpToDate" && p.SameBytes == same
	})
}

// TestClusterInvalidate: blocks of bravo and dr are corrupted behind
// georepl's back. `invalidate` on bravo (its data is bad) and
// `invalidate-remote dr` on the Primary each run a full resync in which
// csums finds every block but the corrupted ones identical; the disks end
// byte-identical. Both verbs refuse where they make no sense.
func TestClusterInvalidate(t *testing.T) {
	t.Parallel()
	const size = 32 << 20
	c := newCluster(t, size, withCsums)
	c.startInSync()
	client, err := nbd.Dial(context.Background(), c.node("alpha").Export, "r0")
	if err != nil {
		t.Fatal(err)
	}
	for i := int64(0); i < 64; i++ {
		if err := client.WriteAt(bytes.Repeat([]byte{byte(i + 1)}, 64<<10), i*(256<<10), false); err != nil {
			t.Fatal(err)
		}
	}
	if err := client.Flush(); err != nil {
		t.Fatal(err)
	}
	client.Close()
	c.cli("alpha", "wait-sync", "--timeout", "2m", "r0")
	dataSize := c.status("alpha").Size

	for _, off := range []int64{256 << 10, 9 << 20} {
		c.writeBlocks("bravo", off, bytes.Repeat([]byte{0xEE}, 4096))
	}
	c.cli("bravo", "invalidate", "r0")
	c.waitSame("bravo", dataSize-2*4096)

	c.writeBlocks("dr", 30<<20, bytes.Repeat([]byte{0xDD}, 4096))
	c.cli("alpha", "invalidate-remote", "r0", "dr")
	c.waitSame("dr", dataSize-4096)

	for _, refused := range []struct{ node, verb, why string }{
		{"alpha", "invalidate", "Primary"},
		{"bravo", "invalidate-remote", "only the Primary"},
	} {
		out, err := c.cliErr(refused.node, refused.verb, "r0")
		if err == nil || !strings.Contains(out, refused.why) {
			t.Errorf("%s on %s: %v, want a refusal mentioning %q:\n%s", refused.verb, refused.node, err, refused.why, out)
		}
	}
	c.settleAndCompare()
}

// TestClusterVerify: blocks of bravo are corrupted behind georepl's back
// while it is connected; `georepl verify` runs while fio writes elsewhere,
// reports exactly the corrupted ranges for bravo and none for dr, changes
// no data, and disconnect + connect repair them.
func TestClusterVerify(t *testing.T) {
	t.Parallel()
	requireTool(t, "fio", "fio")
	const size = 32 << 20
	c := newCluster(t, size)
	c.startInSync()

	corrupt := []node.VerifyRange{{Offset: 20 << 20, Length: 4096}, {Offset: 24<<20 + 4096, Length: 12288}, {Offset: 30 << 20, Length: 4096}}
	for _, r := range corrupt {
		c.writeBlocks("bravo", int64(r.Offset), bytes.Repeat([]byte{0xEE}, int(r.Length)))
	}
	fio := exec.Command("fio", "--name=verify", "--ioengine=nbd", "--uri="+c.exportURI(),
		"--rw=randwrite", "--bs=4k", "--size=16M", "--offset=0", "--iodepth=8",
		"--time_based", "--runtime=8s", "--randrepeat=0", "--output-format=terse")
	fio.Dir = c.dir
	var fioOut bytes.Buffer
	fio.Stdout, fio.Stderr = &fioOut, &fioOut
	if err := fio.Start(); err != nil {
		t.Fatal(err)
	}
	c.waitFor("alpha", "fio writing", 30*time.Second, func(st *node.ResourceStatus) bool { return st.DiskWritten > 1<<20 })
	out := c.cli("alpha", "verify", "--timeout", "2m", "r0")
	if err := fio.Wait(); err != nil {
		t.Fatalf("fio: %v\n%s", err, fioOut.String())
	}
	t.Logf("georepl verify r0:\n%s", out)
	st := c.status("alpha")
	bravo, dr := c.peer(st, "bravo").Verify, c.peer(st, "dr").Verify
	if bravo == nil || dr == nil || bravo.Running || dr.Running || bravo.Stopped != "" || dr.Stopped != "" {
		t.Fatalf("verify did not complete: bravo %+v dr %+v", bravo, dr)
	}
	if !slices.Equal(bravo.Ranges, corrupt) || bravo.OutOfSyncBytes != 5*4096 {
		t.Errorf("verify with bravo found %v (%d bytes), corrupted were %v", bravo.Ranges, bravo.OutOfSyncBytes, corrupt)
	}
	if len(dr.Ranges) != 0 || dr.OutOfSyncBytes != 0 {
		t.Errorf("verify with dr found %v, nothing was corrupted there", dr.Ranges)
	}
	if !strings.Contains(out, fmt.Sprintf("[%d, +%d)", corrupt[1].Offset, corrupt[1].Length)) {
		t.Errorf("verify's output does not show the ranges:\n%s", out)
	}
	if p := c.peer(st, "bravo"); p.OutOfSync != 5*4096 || p.Repl != "Established" {
		t.Errorf("after verify bravo is %s with %d bytes out of sync; want Established with the 5 blocks marked", p.Repl, p.OutOfSync)
	}
	got := make([]byte, 4096)
	f, err := os.Open(c.node("bravo").Disk)
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.ReadAt(got, int64(corrupt[0].Offset))
	f.Close()
	if err != nil || !bytes.Equal(got, bytes.Repeat([]byte{0xEE}, 4096)) {
		t.Errorf("verify changed bravo's data (%v)", err)
	}
	if out, err := c.cliErr("bravo", "verify", "r0"); err == nil || !strings.Contains(out, "Primary") {
		t.Errorf("verify on a Secondary: %v\n%s", err, out)
	}

	c.cli("alpha", "disconnect", "r0", "bravo")
	c.cli("alpha", "connect", "r0", "bravo")
	c.waitFor("alpha", "the marked blocks resynchronised", 2*time.Minute, func(st *node.ResourceStatus) bool {
		p := c.peer(st, "bravo")
		return p.Conn == "Connected" && p.Repl == "Established" && p.OutOfSync == 0
	})
	c.settleAndCompare()
}
