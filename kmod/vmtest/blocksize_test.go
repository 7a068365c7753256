//go:build vmtest

package vmtest

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// blockSizeResource is a resource whose node alpha serves /dev/ublkbN and
// bravo /dev/nbdN: the two kernel devices a failover or switch-over moves
// one filesystem between when `device = "auto"` picks differently on two
// hosts. disk is the disk block's lines.
func blockSizeResource(name string, port int, disk, diskLines string, index int) string {
	return fmt.Sprintf(`resource %q {
  protocol = "C"
  net {
    shared_secret = "vm rig"
  }
  disk {
%s  }
  node "alpha" {
    id      = 0
    address = "10.0.0.1:%d"
    disk    = %q
    device  = "/dev/ublkb%d"
  }
  node "bravo" {
    id      = 1
    address = "10.0.0.2:%d"
    disk    = %q
    export  = "unix:/run/georepl/%s.sock"
    device  = "/dev/nbd%d"
  }
}
`, name, diskLines, port, disk, index, port, disk, name, index)
}

// TestLogicalBlockSize moves one ext4 with 1 KiB blocks between a ublk
// device (alpha) and an nbd device (bravo) of the same resource: made on
// ublk, mounted and written through nbd, mounted through ublk again, every
// file intact and e2fsck clean. Both devices must show the resource's
// logical block size, the default and one set in the disk block.
func TestLogicalBlockSize(t *testing.T) {
	r := getRig(t)
	scenario(t, "logical block size (ublk and nbd)", func(t *testing.T, detail *string) {
		dir := t.TempDir()
		lk, err := newLink()
		if err != nil {
			t.Fatal(err)
		}
		disks := func(node string) []string {
			return []string{newDisk(t, filepath.Join(dir, node+"-0.img"), 64<<20), newDisk(t, filepath.Join(dir, node+"-1.img"), 16<<20)}
		}
		alpha, bravo := r.bootPair(t, lk, disks("alpha"), disks("bravo"))
		lbs := func(v *vm, dev string) string {
			out := v.must(fmt.Sprintf("echo @@LBS $(cat /sys/block/%s/queue/logical_block_size)", strings.TrimPrefix(dev, "/dev/")), time.Minute)
			got, _ := lineWith(out, "@@LBS ")
			return got
		}
		// primary promotes v and checks its device's logical block size.
		primary := func(v *vm, res, dev, want string, force bool) {
			cmd := "georepl primary " + res
			if force {
				cmd = "georepl primary --force " + res
			}
			v.must(cmd, 2*time.Minute)
			v.must(fmt.Sprintf(`[ "$(size %s)" != 0 ] || { echo "%s not attached"; tail -20 /tmp/daemon.log; false; }`, dev, dev), time.Minute)
			if got := lbs(v, dev); got != want {
				t.Errorf("%s: %s has logical block size %q; want %s", v.name, dev, got, want)
			}
		}
		const conf = "/etc/georepl/blocksize"
		for _, v := range []*vm{alpha, bravo} {
			v.must("georepl create-md --config "+conf+" --node $NODE r0", time.Minute)
			v.must("daemon "+conf, time.Minute)
			v.must("georepl up r0", time.Minute)
		}
		primary(alpha, "r0", "/dev/ublkb0", "512", true)
		alpha.must("georepl wait-sync --timeout 5m r0 </dev/null >/tmp/ws.log 2>&1 || { cat /tmp/ws.log; false; }", 6*time.Minute)

		sums := map[string]string{}
		// write makes a file of random data under /mnt and records its
		// checksum.
		write := func(v *vm, name string) {
			out := v.must(fmt.Sprintf("dd if=/dev/urandom of=/mnt/%s bs=64k count=4 2>/dev/null && sync && echo @@SUM $(sha256sum /mnt/%s)", name, name), time.Minute)
			sum, _ := lineWith(out, "@@SUM ")
			sums[name] = strings.Fields(sum + " ")[0]
		}
		// check mounts dev on v and compares every recorded file.
		check := func(v *vm, dev string) {
			if out, rc := v.sh("mount "+dev+" /mnt", time.Minute); rc != 0 {
				v.sh("dmesg | tail -5", time.Minute)
				t.Fatalf("%s: mount %s of the ext4 with 1 KiB blocks: exit %d %q", v.name, dev, rc, out)
			}
			out := v.must("cd /mnt && sha256sum from-*; cd /", time.Minute)
			got := map[string]string{}
			for _, l := range out {
				if f := strings.Fields(l); len(f) == 2 {
					got[f[1]] = f[0]
				}
			}
			for name, sum := range sums {
				if got[name] != sum {
					t.Errorf("%s: %s through %s: checksum %q; written as %s", v.name, name, dev, got[name], sum)
				}
			}
		}
		// Made on ublk with 1 KiB blocks.
		alpha.must("/usr/sbin/mke2fs -q -t ext4 -b 1024 /dev/ublkb0", 5*time.Minute)
		alpha.must("mount /dev/ublkb0 /mnt", time.Minute)
		write(alpha, "from-ublk")
		alpha.must("umount /mnt && georepl secondary r0", time.Minute)
		// Mounted and written through nbd.
		primary(bravo, "r0", "/dev/nbd0", "512", false)
		check(bravo, "/dev/nbd0")
		write(bravo, "from-nbd")
		bravo.must("umount /mnt && georepl secondary r0", time.Minute)
		// And back through ublk.
		primary(alpha, "r0", "/dev/ublkb0", "512", false)
		fsckClean := true
		if out, rc := alpha.sh("/usr/sbin/e2fsck -f -n /dev/ublkb0", 5*time.Minute); rc != 0 {
			fsckClean = false
			t.Errorf("e2fsck -f -n /dev/ublkb0 exited %d:\n%s", rc, strings.Join(out, "\n"))
		}
		check(alpha, "/dev/ublkb0")
		alpha.must("umount /mnt && georepl secondary r0", time.Minute)

		// A size set in the disk block applies to both devices.
		for _, v := range []*vm{alpha, bravo} {
			v.must("georepl down r0 && stopdaemon", time.Minute)
			v.must("georepl create-md --config "+conf+"-4k --node $NODE r1", time.Minute)
			v.must("daemon "+conf+"-4k", time.Minute)
			v.must("georepl up r1", time.Minute)
		}
		primary(alpha, "r1", "/dev/ublkb1", "4096", true)
		alpha.must("georepl wait-sync --timeout 5m r1 </dev/null >/tmp/ws.log 2>&1 || { cat /tmp/ws.log; false; }", 6*time.Minute)
		alpha.must("georepl secondary r1", time.Minute)
		primary(bravo, "r1", "/dev/nbd1", "4096", false)
		bravo.must("georepl secondary r1", time.Minute)
		*detail = fmt.Sprintf("ext4 -b 1024 made on /dev/ublkb0, mounted and written through /dev/nbd0, mounted through /dev/ublkb0 again: %d files intact, e2fsck clean=%v; logical block size 512 by default, 4096 with logical_block_size = \"4KiB\", on both", len(sums), fsckClean)
	})
}
