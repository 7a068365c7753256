//go:build vmtest

package vmtest

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"
)

// resizeResource is TestResize's resource: each node's disk a file in the
// guest's memory (the rig's virtio disks cannot grow from inside the
// guest), /dev/nbd0 on either node once Primary.
func resizeResource() string {
	node := func(name string, id int) string {
		return fmt.Sprintf(`  node %q {
    id      = %d
    address = "10.0.0.%d:7793"
    disk    = "/tmp/rz.img"
    export  = "unix:/run/georepl/rz.sock"
    device  = "/dev/nbd0"
  }
`, name, id, id+1)
	}
	return `resource "rz" {
  protocol = "C"
  net {
    shared_secret = "vm rig"
  }
` + node("alpha", 0) + node("bravo", 1) + "}\n"
}

// TestResize grows a resource online on the kernel device: ext4 on alpha's
// /dev/nbd0 holding checksummed files, both backing files grown, `georepl
// resize` on each node while a file is being written, /dev/nbd0 showing
// the new size at once, resize2fs growing the mounted filesystem, more
// files written into the new space; then every file intact, e2fsck clean,
// and the two nodes' data areas identical.
func TestResize(t *testing.T) {
	r := getRig(t)
	scenario(t, "online resize (nbd)", func(t *testing.T, detail *string) {
		const before, after = 48 << 20, 96 << 20
		lk, err := newLink()
		if err != nil {
			t.Fatal(err)
		}
		alpha, bravo := r.bootPair(t, lk, nil, nil)
		const conf = "/etc/georepl/resize"
		for _, v := range []*vm{alpha, bravo} {
			v.must(fmt.Sprintf("truncate -s %d /tmp/rz.img", before), time.Minute)
			v.must("georepl create-md --config "+conf+" --node $NODE rz", time.Minute)
			v.must("daemon "+conf, time.Minute)
			v.must("georepl up rz", time.Minute)
		}
		alpha.must("georepl primary --force rz", time.Minute)
		alpha.must("georepl wait-sync --timeout 5m rz </dev/null >/tmp/ws.log 2>&1 || { cat /tmp/ws.log; false; }", 6*time.Minute)
		size := func() int64 {
			out := alpha.must("echo @@SIZE $(blockdev --getsize64 /dev/nbd0)", time.Minute)
			s, _ := lineWith(out, "@@SIZE ")
			n, err := strconv.ParseInt(s, 10, 64)
			if err != nil || n <= 0 {
				t.Fatalf("size of /dev/nbd0: %q", s)
			}
			return n
		}
		sizeBefore := size()

		sums := map[string]string{}
		write := func(name string, kib int) {
			out := alpha.must(fmt.Sprintf("dd if=/dev/urandom of=/mnt/%s bs=64k count=%d 2>/dev/null && sync && echo @@SUM $(sha256sum /mnt/%s)", name, kib/64, name), time.Minute)
			sum, _ := lineWith(out, "@@SUM ")
			sums[name] = strings.Fields(sum + " ")[0]
		}
		alpha.must("/usr/sbin/mke2fs -q -t ext4 /dev/nbd0 && mount /dev/nbd0 /mnt", 5*time.Minute)
		write("before-1", 4096)
		write("before-2", 4096)

		// Grown while a file is written: the writer's data crosses the
		// resize (its checksum is taken once it is done).
		alpha.must("dd if=/dev/urandom of=/tmp/during bs=64k count=128 2>/dev/null", time.Minute)
		// The writer lives on after its dd (sleep): the guest's shell is
		// its init, and it exited when a background job ended.
		fmt.Fprintf(alpha.in, "(dd if=/tmp/during of=/mnt/during bs=4k conv=fsync; touch /tmp/during.done; exec sleep 100000) </dev/null >/tmp/during.log 2>&1 &\n")
		for _, v := range []*vm{alpha, bravo} {
			v.must(fmt.Sprintf("truncate -s %d /tmp/rz.img", after), time.Minute)
			v.must("georepl resize rz", 2*time.Minute)
		}
		alpha.must("while [ ! -e /tmp/during.done ]; do sleep 1; done", 2*time.Minute)
		out := alpha.must("echo @@SUM $(sha256sum < /tmp/during)", time.Minute)
		sum, _ := lineWith(out, "@@SUM ")
		sums["during"] = strings.Fields(sum + " ")[0]
		sizeAfter := size()
		if sizeAfter <= sizeBefore {
			t.Fatalf("/dev/nbd0 has %d bytes after the resize, %d before: the kernel device was not resized", sizeAfter, sizeBefore)
		}
		alpha.must("georepl wait-sync --timeout 5m rz </dev/null >/tmp/ws.log 2>&1 || { cat /tmp/ws.log; false; }", 6*time.Minute)

		alpha.must("/usr/sbin/resize2fs /dev/nbd0 >/tmp/resize2fs.log 2>&1 || { cat /tmp/resize2fs.log; false; }", 5*time.Minute)
		// Enough to need the new space: the filesystem had about 40 MiB.
		write("after-1", 16384)
		write("after-2", 16384)
		alpha.must("georepl wait-sync --timeout 5m rz </dev/null >/tmp/ws.log 2>&1 || { cat /tmp/ws.log; false; }", 6*time.Minute)

		out = alpha.must("cd /mnt && sha256sum before-* during after-*; cd /; umount /mnt", time.Minute)
		got := map[string]string{}
		for _, l := range out {
			if f := strings.Fields(l); len(f) == 2 {
				got[f[1]] = f[0]
			}
		}
		bad := 0
		for name, want := range sums {
			if got[name] != want {
				bad++
				t.Errorf("/mnt/%s: checksum %q, written as %s", name, got[name], want)
			}
		}
		fsck := "clean"
		if out, rc := alpha.sh("/usr/sbin/e2fsck -f -n /dev/nbd0", 5*time.Minute); rc != 0 {
			fsck = fmt.Sprintf("exit %d", rc)
			t.Errorf("e2fsck -f -n after the resize: exit %d %q", rc, out)
		}

		// Both nodes' data areas: identical.
		alpha.must("georepl secondary rz", time.Minute)
		data := map[string]string{}
		for _, v := range []*vm{alpha, bravo} {
			v.must("georepl down rz", time.Minute)
			out := v.must(fmt.Sprintf("echo @@DATA $(head -c %d /tmp/rz.img | sha256sum)", sizeAfter), time.Minute)
			d, _ := lineWith(out, "@@DATA ")
			data[v.name] = strings.Fields(d + " ")[0]
		}
		if data["alpha"] == "" || data["alpha"] != data["bravo"] {
			t.Errorf("data areas after the resize: alpha %s, bravo %s", data["alpha"], data["bravo"])
		}
		*detail = fmt.Sprintf("/dev/nbd0 %d -> %d bytes while a file was written; resize2fs online; %d files, %d bad; e2fsck %s; data areas identical=%v",
			sizeBefore, sizeAfter, len(sums), bad, fsck, data["alpha"] == data["bravo"])
	})
}
