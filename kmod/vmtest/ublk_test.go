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
// loaded, then the ext4 failover scenario on a ublk device. The kernel
// tests: read, write, flush, discard and zero-out through /dev/ublkbN,
// errnos, many concurrent requests over few tags, FUA, a read-only device,
// ext4 (mke2fs, mount, fsync, e2fsck -f -n, remount), Close with a request
// stuck in the Device or the block device still open, and a device number
// taken over from a killed server.
func TestUblk(t *testing.T) {
	r := getRig(t)
	scenario(t, "ublk device (kmod/ublk)", func(t *testing.T, detail *string) {
		ublkKernelTests(t, r, detail)
	})
	scenario(t, "ext4 failover (ublk)", func(t *testing.T, detail *string) {
		ext4Failover(t, r, ublkFailover, detail)
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

// ublkFailover is the ext4 failover scenario on /dev/ublkb0, which the
// daemon serves itself (device = "auto", which picks ublk on this kernel,
// with ublk_queues = 2 and ublk_queue_depth = 64): the device must show
// those queues and tags.
var ublkFailover = failoverKind{conf: "/etc/georepl/failover-ublk", dev: "/dev/ublkb0", module: "ublk_drv",
	check: func(t *testing.T, v *vm) string {
		out := v.must("echo @@QUEUES $(ls /sys/block/ublkb0/mq | wc -l) $(cat /sys/block/ublkb0/mq/*/nr_tags)", time.Minute)
		got, _ := lineWith(out, "@@QUEUES ")
		if got != "2 64 64" {
			t.Errorf("/dev/ublkb0: queues and tags per queue %q; want \"2 64 64\" (ublk_queues = 2, ublk_queue_depth = 64)", got)
		}
		return "2 queues of 64 tags as configured; "
	}}

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
