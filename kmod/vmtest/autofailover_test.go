//go:build vmtest

package vmtest

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The automatic failover scenario: alpha and bravo hold r0 under
// failover { mode = "auto" }, a third, diskless VM (witness) is the third
// voter of the consensus log. Each VM has its own link to each other one
// (three point-to-point links, so that the witness and bravo still talk
// when alpha loses power): the witness's consensus address 10.0.0.3 is
// routed over alpha's and bravo's second card, bravo's 10.0.0.2 over the
// witness's second card.

const (
	// autoFailoverDisk is each data node's disk: small, so that the
	// initial full sync is short.
	autoFailoverDisk = 64 << 20
	// autoFailoverDetection is the resource's detection_timeout.
	autoFailoverDetection = 5 * time.Second
	// autoFailoverStart is the on_promote handler the test installs on
	// alpha and bravo.
	autoFailoverStart = "/usr/local/sbin/r0-start"
)

// autoFailoverResource is the ext4 failover resource with automatic
// failover: alpha, bravo and the witness vote; the consensus logs live in
// /tmp (tmpfs): no node of the scenario reboots.
func autoFailoverResource() string {
	extra := fmt.Sprintf(`  failover {
    mode              = "auto"
    detection_timeout = %q
    witness "witness" {
      address = "10.0.0.3:7790"
      dir     = "/tmp/r0.failover"
    }
  }
  handlers {
    on_promote = %q
  }
`, autoFailoverDetection, autoFailoverStart)
	return ext4Resource(`device  = "/dev/nbd0"`, failoverALExtents, extra, func(id int) string {
		return fmt.Sprintf(`    failover {
      address = "10.0.0.%d:7790"
      dir     = "/tmp/r0.failover"
    }
`, id+1)
	})
}

// r0Start is the on_promote handler: it mounts r0's ext4 on /mnt and says
// so on the console (the host times the line's arrival). It mounts
// nothing when the device holds no ext4 (its superblock's magic, 0xEF53
// at byte 1080), as at the first promotion, before mkfs: a handler that
// ran before the device was attached says so too.
const r0Start = `mkdir -p /usr/local/sbin && cat >` + autoFailoverStart + ` <<'EOF'
#!/bin/sh
dev=/dev/nbd0
magic=$(dd if=$dev bs=1 skip=1080 count=2 2>/dev/null | od -An -tx1 | tr -d ' \n')
if [ "$magic" != 53ef ]; then
	echo "@@ON_PROMOTE $GEOREPL_NODE no-ext4 size=$(cat /sys/block/nbd0/size 2>/dev/null)" >/dev/console
	exit 0
fi
if ! mount -t ext4 $dev /mnt; then
	echo "@@ON_PROMOTE $GEOREPL_NODE mount-failed" >/dev/console
	exit 1
fi
echo "@@ON_PROMOTE $GEOREPL_NODE mounted" >/dev/console
EOF
chmod 755 ` + autoFailoverStart

func TestExt4AutoFailover(t *testing.T) {
	r := getRig(t)
	scenario(t, "ext4 auto failover (nbd)", func(t *testing.T, detail *string) {
		ext4AutoFailover(t, r, detail)
	})
}

// routeVia brings up the card with MAC mac and routes ip over it.
func routeVia(mac, ip string) string {
	return fmt.Sprintf(`ifc=$(grep -l %s /sys/class/net/*/address | cut -d/ -f5) && [ -n "$ifc" ] && ip link set "$ifc" up && ip route add %s/32 dev "$ifc"`, mac, ip)
}

// ext4AutoFailover: ext4 on alpha's /dev/nbd0, files written with fsync
// and their checksums recorded, alpha's QEMU killed (power loss); the
// consensus log, with bravo and the witness a majority, promotes bravo
// without an operator, bravo's daemon attaches /dev/nbd0 and its
// on_promote handler mounts the filesystem; every fsync'd file is there,
// and e2fsck -f -n is clean. The time from the power loss to the handler's
// mount is measured on the host's clock.
func ext4AutoFailover(t *testing.T, r *rig, detail *string) {
	const conf = "/etc/georepl/autofailover"
	dir := t.TempDir()
	imgA := newDisk(t, filepath.Join(dir, "alpha.img"), autoFailoverDisk)
	imgB := newDisk(t, filepath.Join(dir, "bravo.img"), autoFailoverDisk)
	var links [3]link // alpha-bravo, alpha-witness, bravo-witness
	for i := range links {
		lk, err := newLink()
		if err != nil {
			t.Fatal(err)
		}
		links[i] = lk
	}
	ab, aw, bw := links[0], links[1], links[2]
	start := time.Now()
	alpha := r.startVMWith(t, vmSpec{node: "alpha", index: 0, nics: []nic{ab.end(0, 0x01), aw.end(0, 0x11)}}, imgA)
	bravo := r.startVMWith(t, vmSpec{node: "bravo", index: 1, nics: []nic{ab.end(1, 0x02), bw.end(0, 0x12)}}, imgB)
	// The witness holds no data: one CPU, no disk.
	witness := r.startVMWith(t, vmSpec{node: "witness", index: 2, nics: []nic{aw.end(1, 0x03), bw.end(1, 0x13)}, cpus: 1, mem: 512})
	for _, v := range []*vm{alpha, bravo, witness} {
		v.waitBooted()
	}
	t.Logf("three VMs booted in %s", time.Since(start).Round(time.Second))
	alpha.must(routeVia("52:54:00:12:34:11", "10.0.0.3"), time.Minute)
	bravo.must(routeVia("52:54:00:12:34:12", "10.0.0.3"), time.Minute)
	witness.must(routeVia("52:54:00:12:34:13", "10.0.0.2"), time.Minute)
	for _, v := range []*vm{alpha, bravo} {
		v.must("ping -c 1 -w 30 10.0.0.3 >/dev/null", time.Minute)
	}
	witness.must("ping -c 1 -w 30 10.0.0.1 >/dev/null && ping -c 1 -w 30 10.0.0.2 >/dev/null", time.Minute)

	witness.must("daemon "+conf, time.Minute)
	for _, v := range []*vm{alpha, bravo} {
		v.must(r0Start, time.Minute)
		v.must("georepl create-md --config "+conf+" --node $NODE r0", time.Minute)
		v.must("daemon "+conf, time.Minute)
		v.must("georepl up r0", time.Minute)
	}
	t.Logf("daemons up %s after the start", time.Since(start).Round(time.Second))
	// The first Primary is the operator's, through the log (term 1).
	from := alpha.mark()
	alpha.must("georepl primary --force r0", 2*time.Minute)
	if _, line := alpha.waitFrom(from, "@@ON_PROMOTE alpha", 2*time.Minute); !strings.Contains(line, " no-ext4") {
		t.Errorf("alpha's on_promote before mkfs: %q; want no-ext4", line)
	}
	t.Logf("alpha promoted through the log %s after the start", time.Since(start).Round(time.Second))
	alpha.must("georepl wait-sync --timeout 10m r0 </dev/null >/tmp/ws.log 2>&1 || { cat /tmp/ws.log; false; }", 11*time.Minute)
	t.Logf("initial sync done %s after the start", time.Since(start).Round(time.Second))
	alpha.must(`[ "$(size /dev/nbd0)" != 0 ] || { echo "/dev/nbd0 not attached by georepl primary"; georepl status r0; tail -20 /tmp/daemon.log; false; }`, time.Minute)
	if out := alpha.must("georepl status r0", time.Minute); !strings.Contains(strings.Join(out, "\n"), "failover: term 1 held by alpha") {
		t.Fatalf("alpha's status after `primary`:\n%s\nwant term 1 held by alpha", strings.Join(out, "\n"))
	}
	if out, rc := alpha.sh("/usr/sbin/mke2fs -q -t ext4 /dev/nbd0", 5*time.Minute); rc != 0 {
		alpha.sh("georepl status r0; tail -40 /tmp/daemon.log", time.Minute)
		t.Fatalf("mke2fs exited %d: %q", rc, out)
	}
	alpha.must("mount /dev/nbd0 /mnt", time.Minute)

	t.Logf("ext4 mounted on alpha %s after the start", time.Since(start).Round(time.Second))
	// Write fsync'd files, then pull alpha's plug mid-write.
	bravoFrom := bravo.mark()
	fsynced, lost := alpha.writeThenKill(40)
	t.Logf("alpha powered off after %d fsync'd files", len(fsynced))

	// No operator: the log promotes bravo, its daemon attaches /dev/nbd0
	// and on_promote mounts it.
	_, line, exited := bravo.waitFor(bravoFrom, "@@ON_PROMOTE bravo", 5*time.Minute)
	if exited {
		t.Fatalf("bravo: QEMU exited while waiting for its on_promote (console in %s)", bravo.log.Name())
	}
	mountedAfter := time.Since(lost)
	if !strings.HasSuffix(line, " mounted") {
		bravo.sh("georepl status r0; grep -e failover -e 'kernel device' -e handler /tmp/daemon.log | tail -20", time.Minute)
		t.Fatalf("bravo's on_promote after the power loss: %q; want the filesystem mounted", line)
	}
	t.Logf("power loss of alpha to the filesystem mounted on bravo by on_promote: %s (detection_timeout %s)", mountedAfter.Round(100*time.Millisecond), autoFailoverDetection)
	out := bravo.must("georepl status r0", time.Minute)
	status := strings.Join(out, "\n")
	if !strings.Contains(status, "role:Primary") || !strings.Contains(status, "failover: term 2 held by bravo") {
		t.Errorf("bravo's status after the automatic failover:\n%s\nwant Primary, term 2 held by bravo", status)
	}
	bravo.must(`grep -q '^/dev/nbd0 /mnt ext4 rw' /proc/mounts || { cat /proc/mounts; false; }`, time.Minute)
	bad := badFiles(t, bravo, fsynced, "after the automatic failover")
	bravo.must("umount /mnt", time.Minute)
	fsckClean := false
	if out, rc := bravo.sh("/usr/sbin/e2fsck -f -n /dev/nbd0", 5*time.Minute); rc == 0 {
		fsckClean = true
	} else {
		t.Errorf("e2fsck -f -n after the automatic failover exited %d:\n%s", rc, strings.Join(out, "\n"))
	}
	*detail = fmt.Sprintf("witness on a third VM; alpha powered off after %d fsync'd files; bravo promoted by the log (term 2), /dev/nbd0 mounted by on_promote %s after the power loss (detection_timeout %s); %d bad; e2fsck -f -n clean=%v",
		len(fsynced), mountedAfter.Round(100*time.Millisecond), autoFailoverDetection, bad, fsckClean)
}
