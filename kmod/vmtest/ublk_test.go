//go:build vmtest

package vmtest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestUblk runs kmod/ublk's kernel tests inside a guest, where ublk_drv is
// loaded: read, write, flush, discard and zero-out through /dev/ublkbN,
// errnos, many concurrent requests over few tags, FUA, a read-only device,
// ext4 (mke2fs, mount, fsync, e2fsck -f -n, remount), Close with a
// request stuck in the Device or the block device still open, and a device
// number taken over from a killed server.
func TestUblk(t *testing.T) {
	r := getRig(t)
	scenario(t, "ublk device (kmod/ublk)", func(t *testing.T, detail *string) {
		ublkKernelTests(t, r, detail)
	})
	scenario(t, "ext4 power loss (ublk)", func(t *testing.T, detail *string) {
		ublkPowerLoss(t, r, detail)
	})
}

func ublkKernelTests(t *testing.T, r *rig, detail *string) {
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	extra := t.TempDir()
	// With the race detector where the host can build it (cgo): the
	// binary then needs only the libc the initramfs has for e2fsprogs.
	race := "race detector on"
	if err := buildTest(root, filepath.Join(extra, "bin/ublk.test"), "-race"); err != nil {
		t.Logf("no race build (%v); building without", err)
		race = "race detector off"
		if err := buildTest(root, filepath.Join(extra, "bin/ublk.test"), "CGO_ENABLED=0"); err != nil {
			t.Fatal(err)
		}
	}
	ur := r.withExtraFiles(t, extra)
	lk, err := newLink()
	if err != nil {
		t.Fatal(err)
	}
	v := ur.startVM(t, "alpha", 0, lk)
	v.waitBooted()
	// /usr/sbin first: e2fsprogs' mke2fs, not busybox's.
	out, rc := v.sh("PATH=/usr/sbin:$PATH ublk.test -test.v -test.run Kernel -test.timeout 10m 2>&1", 12*time.Minute)
	for _, l := range out {
		if strings.Contains(l, "WARNING: DATA RACE") {
			t.Error("data race in kmod/ublk")
		}
	}
	var passed, failed, skipped []string
	for _, l := range out {
		f := strings.Fields(l)
		if len(f) < 3 {
			continue
		}
		switch f[0] + " " + f[1] {
		case "--- PASS:":
			passed = append(passed, f[2])
		case "--- FAIL:":
			failed = append(failed, f[2])
		case "--- SKIP:":
			skipped = append(skipped, f[2])
		}
	}
	*detail = fmt.Sprintf("%d kernel tests passed, %d failed, %d skipped; %s", len(passed), len(failed), len(skipped), race)
	if rc != 0 || len(failed) > 0 || len(passed) == 0 {
		t.Errorf("ublk.test exited %d:\n%s", rc, strings.Join(out, "\n"))
	}
	if len(skipped) > 0 {
		// In the guest every kernel test must run.
		t.Errorf("skipped in the guest: %v\n%s", skipped, strings.Join(out, "\n"))
	}
	v.poweroff()
}

// buildTest compiles kmod/ublk's tests into out; mode is "-race" or an
// environment setting.
func buildTest(root, out, mode string) error {
	args := []string{"test", "-c", "-trimpath", "-o", out}
	env := append(os.Environ(), "GOOS=linux", "GOARCH=amd64")
	if mode == "-race" {
		args = append(args, "-race")
		env = append(env, "CGO_ENABLED=1")
	} else {
		env = append(env, mode)
	}
	cmd := exec.Command("go", append(args, "./kmod/ublk")...)
	cmd.Dir = root
	cmd.Env = env
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go test -c %s ./kmod/ublk: %w\n%s", mode, err, b)
	}
	return nil
}

// ublkPowerLoss is the power-loss half of the ext4 failover scenario with
// the resource served as /dev/ublkb0 (by ublkguest, over the daemon's
// export) instead of /dev/nbd0: ext4 on the primary's ublk device, files
// written with fsync, the primary's QEMU killed mid-write, the secondary
// promoted and serving its own /dev/ublkb0, journal replay, e2fsck -f -n
// clean, and every fsync'd file with its recorded checksum. The rejoin
// does not depend on the kernel device and is left to the nbd scenario.
func ublkPowerLoss(t *testing.T, r *rig, detail *string) {
	const conf = "/etc/georepl/failover"
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	extra := t.TempDir()
	if err := goBuild(root, filepath.Join(extra, "bin/ublkguest"), "./kmod/vmtest/ublkguest"); err != nil {
		t.Fatal(err)
	}
	ur := r.withExtraFiles(t, extra)
	dir := t.TempDir()
	imgA := newDisk(t, filepath.Join(dir, "alpha.img"), 64<<20)
	imgB := newDisk(t, filepath.Join(dir, "bravo.img"), 64<<20)
	lk, err := newLink()
	if err != nil {
		t.Fatal(err)
	}
	alpha, bravo := ur.bootPair(t, lk, []string{imgA}, []string{imgB})
	for _, v := range []*vm{alpha, bravo} {
		v.must("georepl create-md --config "+conf+" --node $NODE r0", time.Minute)
		v.must("daemon "+conf, time.Minute)
		v.must("georepl up r0", time.Minute)
	}
	alpha.must("georepl primary --force r0", time.Minute)
	alpha.must("georepl wait-sync --timeout 5m r0 </dev/null >/tmp/ws.log 2>&1 || { cat /tmp/ws.log; false; }", 6*time.Minute)
	serveUblk(alpha)
	alpha.must("/usr/sbin/mke2fs -q -t ext4 /dev/ublkb0", 2*time.Minute)
	alpha.must("mount /dev/ublkb0 /mnt", time.Minute)

	from := alpha.mark()
	fmt.Fprintf(alpha.in, "vmguest write -dir /mnt -n 100000 &\n")
	for range 40 {
		from, _ = alpha.waitFrom(from, "@@FSYNCED ", 5*time.Minute)
		from++
	}
	alpha.kill()
	fsynced := map[string]string{}
	alpha.mu.Lock()
	for _, l := range alpha.lines {
		if f := strings.Fields(l); len(f) == 3 && f[0] == "@@FSYNCED" {
			fsynced[f[1]] = f[2]
		}
	}
	alpha.mu.Unlock()
	t.Logf("alpha killed after %d fsync'd files", len(fsynced))

	deadline := time.Now().Add(2 * time.Minute)
	for {
		if _, rc := bravo.sh("georepl primary r0", time.Minute); rc == 0 {
			break
		}
		if time.Now().After(deadline) {
			bravo.sh("georepl status r0; tail -20 /tmp/daemon.log", time.Minute)
			t.Fatal("bravo could not be promoted within 2 minutes of the power loss")
		}
		time.Sleep(2 * time.Second)
	}
	serveUblk(bravo)
	bravo.must("mount /dev/ublkb0 /mnt && umount /mnt", 2*time.Minute) // journal replay
	fsckClean := true
	if out, rc := bravo.sh("/usr/sbin/e2fsck -f -n /dev/ublkb0", 5*time.Minute); rc != 0 {
		fsckClean = false
		t.Errorf("e2fsck -f -n after journal replay exited %d:\n%s", rc, strings.Join(out, "\n"))
	}
	bravo.must("mount -o ro /dev/ublkb0 /mnt", time.Minute)
	out := bravo.must("cd /mnt && sha256sum f* 2>/dev/null; cd /", 5*time.Minute)
	got := map[string]string{}
	for _, l := range out {
		if f := strings.Fields(l); len(f) == 2 {
			got[f[1]] = f[0]
		}
	}
	bad := 0
	for name, sum := range fsynced {
		if got[name] != sum {
			bad++
			t.Errorf("%s: checksum %q after failover; recorded %s before the power loss", name, got[name], sum)
		}
	}
	bravo.must("umount /mnt", time.Minute)
	bravo.must("p=$(cat /tmp/ublk.pid); kill $p; while kill -0 $p 2>/dev/null; do sleep 0.1; done; grep @@UBLK-CLOSED /tmp/ublk.log", time.Minute)
	bravo.must("georepl secondary r0 && georepl down r0 && stopdaemon", 2*time.Minute)
	bravo.poweroff()
	*detail = fmt.Sprintf("%d fsync'd files before power loss, %d bad; fsck clean=%v; device removed cleanly", len(fsynced), bad, fsckClean)
}

// serveUblk starts ublkguest in the background on v's export of r0 and
// waits for /dev/ublkb0.
func serveUblk(v *vm) {
	v.t.Helper()
	v.must("ublkguest -export unix:/run/georepl/r0.sock -name r0 -device /dev/ublkb0 >/tmp/ublk.log 2>&1 & echo $! >/tmp/ublk.pid", time.Minute)
	v.must("i=0; until grep -q '@@UBLK ' /tmp/ublk.log || [ $i -ge 300 ]; do sleep 0.1; i=$((i+1)); done; cat /tmp/ublk.log; grep -q '@@UBLK ' /tmp/ublk.log", time.Minute)
}

// withExtraFiles returns a copy of the rig whose initramfs also holds the
// files under dir (at the same paths from /): the kernel unpacks
// concatenated cpio archives one over the other.
func (r *rig) withExtraFiles(t *testing.T, dir string) *rig {
	t.Helper()
	out := filepath.Join(t.TempDir(), "initrd")
	cmd := exec.Command("sh", "-c", "cat \"$0\" >\"$1\" && find . | cpio -o -H newc --quiet >>\"$1\"", r.initrd, out)
	cmd.Dir = dir
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("extra initramfs: %v\n%s", err, b)
	}
	c := *r
	c.initrd = out
	return &c
}
