//go:build vmtest

package vmtest

import (
	"bufio"
	"bytes"
	"cmp"
	"debug/elf"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// rig is what every scenario shares: the kernel and the initramfs.
type rig struct {
	cache  string // .cache/vm
	kernel string // vmlinuz
	initrd string
	kver   string
	work   string // this run's own build folder under cache
}

// repoRoot is the repository's top directory.
func repoRoot() (string, error) {
	out, err := exec.Command("git", "rev-parse", "--show-toplevel").Output()
	if err != nil {
		return "", fmt.Errorf("git rev-parse: %w", err)
	}
	return strings.TrimSpace(string(out)), nil
}

// guestModules are loaded by /init, in this order after their dependencies.
// nbd and ublk_drv are not among them (kernelModules): georepl loads them
// (from the compressed .ko, by finit_module) as it would on a host without
// modprobe. virtio_rng feeds the guest's entropy from the host (QEMU's
// virtio-rng-pci): without it a program started seconds after boot (the
// georepl daemon: the Go runtime reads random bytes at start) waits in
// getrandom while the kernel generates entropy by rescheduling in a tight
// loop, and there the TCG guest once died of an oops (int3 in
// sched_clock_cpu, a code patch racing the other virtual CPU).
// rdma_rxe (Soft-RoCE) and rdma_ucm (the RDMA CM for user space) are the
// rdma transport plugin's: /init adds an rxe device on eth0. rxe computes
// its packets' ICRC with the crypto API's crc32 (crc32_generic), which it
// does not depend on by symbol: without a modprobe to load it on demand,
// `rdma link add` fails with ENOENT.
var guestModules = []string{"virtio_rng", "virtio_blk", "virtio_net", "crc32c_generic", "ext4", "sch_netem", "crc32_generic", "rdma_rxe", "rdma_ucm"}

// kernelModules are installed under /lib/modules for georepl to load.
var kernelModules = []string{"nbd", "ublk_drv"}

func buildRig() (*rig, error) {
	root, err := repoRoot()
	if err != nil {
		return nil, err
	}
	r := &rig{cache: filepath.Join(root, ".cache", "vm")}
	out, err := exec.Command("sh", filepath.Join(root, "kmod/vmtest/setup.sh"), r.cache).Output()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return nil, fmt.Errorf("setup.sh: %w\n%s", err, ee.Stderr)
		}
		return nil, fmt.Errorf("setup.sh: %w", err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	kdir := lines[len(lines)-1]
	vmlinuz, _ := filepath.Glob(filepath.Join(kdir, "boot/vmlinuz-*"))
	if len(vmlinuz) != 1 {
		return nil, fmt.Errorf("no single vmlinuz in %s/boot", kdir)
	}
	r.kernel = vmlinuz[0]
	r.kver = strings.TrimPrefix(filepath.Base(vmlinuz[0]), "vmlinuz-")
	modDir := filepath.Join(kdir, "lib/modules", r.kver)

	// Each run builds in its own folder: several runs may share the cache.
	r.work, err = os.MkdirTemp(r.cache, "run-")
	if err != nil {
		return nil, err
	}
	ird := filepath.Join(r.work, "initramfs")
	for _, d := range []string{"bin", "sbin", "etc/georepl", "mods", "proc", "sys", "dev", "run", "tmp", "mnt", "lib/modules/" + r.kver + "/kernel/drivers/block"} {
		if err := os.MkdirAll(filepath.Join(ird, d), 0o755); err != nil {
			return nil, err
		}
	}
	// Static binaries.
	if err := copyFile("/bin/busybox", filepath.Join(ird, "bin/busybox"), 0o755); err != nil {
		return nil, err
	}
	georepl := os.Getenv("VMTEST_GEOREPL")
	if georepl == "" {
		georepl = filepath.Join(r.work, "georepl")
		if err := goBuild(root, georepl, "./cmd/georepl"); err != nil {
			return nil, err
		}
	}
	if err := copyFile(georepl, filepath.Join(ird, "bin/georepl"), 0o755); err != nil {
		return nil, err
	}
	if err := goBuild(root, filepath.Join(ird, "bin/vmguest"), "./kmod/vmtest/guest"); err != nil {
		return nil, err
	}
	// Dynamic tools with the libraries ldd lists.
	for _, tool := range []string{"/usr/sbin/mke2fs", "/usr/sbin/e2fsck", "/usr/sbin/resize2fs", "/usr/sbin/tc"} {
		if err := copyWithLibs(tool, ird); err != nil {
			return nil, err
		}
	}
	if err := copyFile("/etc/mke2fs.conf", filepath.Join(ird, "etc/mke2fs.conf"), 0o644); err != nil {
		return nil, err
	}
	if err := addRDMA(root, r.work, ird); err != nil {
		return nil, err
	}
	// Modules: decompressed, dependencies first.
	order, err := moduleOrder(modDir, guestModules)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, m := range order {
		name := strings.TrimSuffix(filepath.Base(m), ".ko.xz")
		names = append(names, name)
		raw, err := exec.Command("xz", "-dc", m).Output()
		if err != nil {
			return nil, fmt.Errorf("xz -dc %s: %w", m, err)
		}
		if err := os.WriteFile(filepath.Join(ird, "mods", name+".ko"), raw, 0o644); err != nil {
			return nil, err
		}
	}
	if err := os.WriteFile(filepath.Join(ird, "mods/order"), []byte(strings.Join(names, "\n")+"\n"), 0o644); err != nil {
		return nil, err
	}
	for _, m := range kernelModules {
		rel := "kernel/drivers/block/" + m + ".ko.xz"
		if err := copyFile(filepath.Join(modDir, rel), filepath.Join(ird, "lib/modules", r.kver, rel), 0o644); err != nil {
			return nil, err
		}
	}
	initScript, err := os.ReadFile(filepath.Join(root, "kmod/vmtest/init.sh"))
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(ird, "init"), initScript, 0o755); err != nil {
		return nil, err
	}
	for name, text := range guestConfigs {
		p := filepath.Join(ird, "etc/georepl", name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return nil, err
		}
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			return nil, err
		}
	}
	r.initrd = filepath.Join(r.work, "initrd")
	cpio := exec.Command("sh", "-c", "find . | cpio -o -H newc --quiet > "+r.initrd)
	cpio.Dir = ird
	if out, err := cpio.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("cpio: %w\n%s", err, out)
	}
	return r, nil
}

func goBuild(root, out, pkg string) error {
	cmd := exec.Command("go", "build", "-trimpath", "-o", out, pkg)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %w\n%s", pkg, err, b)
	}
	return nil
}

func copyFile(src, dst string, mode os.FileMode) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	return os.WriteFile(dst, b, mode)
}

// copyWithLibs copies a dynamically linked program into root at the same
// path, with every library ldd lists (and the loader).
func copyWithLibs(prog, root string) error {
	if err := copyFile(prog, filepath.Join(root, prog), 0o755); err != nil {
		return err
	}
	return copyLibs(prog, root)
}

// copyLibs copies into root every library ldd lists for prog (and the
// loader), at their paths.
func copyLibs(prog, root string) error {
	out, err := exec.Command("ldd", prog).Output()
	if err != nil {
		return fmt.Errorf("ldd %s: %w", prog, err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		for _, f := range strings.Fields(line) {
			if strings.HasPrefix(f, "/") {
				if err := copyFile(f, filepath.Join(root, f), 0o755); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// moduleOrder finds each wanted module under dir and returns them with
// their dependencies (the depends= line of .modinfo) first.
func moduleOrder(dir string, wanted []string) ([]string, error) {
	paths := map[string]string{}
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && strings.HasSuffix(p, ".ko.xz") {
			name := strings.ReplaceAll(strings.TrimSuffix(d.Name(), ".ko.xz"), "-", "_")
			paths[name] = p
		}
		return nil
	})
	var order []string
	seen := map[string]bool{}
	var visit func(name string) error
	visit = func(name string) error {
		name = strings.ReplaceAll(name, "-", "_")
		if seen[name] {
			return nil
		}
		seen[name] = true
		p, ok := paths[name]
		if !ok {
			return fmt.Errorf("module %s not found under %s", name, dir)
		}
		deps, err := moduleDepends(p)
		if err != nil {
			return err
		}
		for _, d := range deps {
			if err := visit(d); err != nil {
				return err
			}
		}
		order = append(order, p)
		return nil
	}
	for _, w := range wanted {
		if err := visit(w); err != nil {
			return nil, err
		}
	}
	return order, nil
}

// moduleDepends reads depends= from a compressed module's .modinfo.
func moduleDepends(path string) ([]string, error) {
	raw, err := exec.Command("xz", "-dc", path).Output()
	if err != nil {
		return nil, fmt.Errorf("xz -dc %s: %w", path, err)
	}
	f, err := elf.NewFile(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, nil
	}
	data, err := sec.Data()
	if err != nil {
		return nil, err
	}
	for _, kv := range bytes.Split(data, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, []byte("depends=")); ok {
			if len(v) == 0 {
				return nil, nil
			}
			return strings.Split(string(v), ","), nil
		}
	}
	return nil, nil
}

// freeUDPPort returns a UDP port on 127.0.0.1 that was free a moment ago.
func freeUDPPort() (int, error) {
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port, nil
}

// link is the UDP pair two VMs talk over.
type link struct{ a, b int }

func newLink() (link, error) {
	a, err := freeUDPPort()
	if err != nil {
		return link{}, err
	}
	b, err := freeUDPPort()
	return link{a, b}, err
}

// vm is one QEMU process, driven through the shell on its serial console.
type vm struct {
	t    *testing.T
	name string
	cmd  *exec.Cmd
	in   io.WriteCloser
	log  *os.File

	mu    sync.Mutex
	lines []string
	more  chan struct{} // closed and replaced on every new line
	done  chan struct{} // closed when QEMU exits
	seq   int

	killOnce sync.Once
	args     []string // QEMU's, for launch
}

// startVM starts QEMU for node (its index picks the IP and which end of
// the link is local) with the given disks.
func (r *rig) startVM(t *testing.T, node string, index int, lk link, disks ...string) *vm {
	t.Helper()
	return r.startVMWith(t, vmSpec{node: node, index: index, nics: []nic{lk.end(index, byte(index+1))}}, disks...)
}

// nic is one network card of a VM: one end of a link, and its MAC's last
// byte.
type nic struct {
	local, remote int
	mac           byte
}

// end is the card on side (0: a, 1: b) of lk.
func (lk link) end(side int, mac byte) nic {
	if side == 1 {
		return nic{lk.b, lk.a, mac}
	}
	return nic{lk.a, lk.b, mac}
}

// vmSpec is what differs between the VMs of a scenario. The first card
// is eth0, where /init puts 10.0.0.(index+1)/24; the others come up
// without an address (the scenario configures them). Zero cpus and mem:
// 2 and 1024 MiB.
type vmSpec struct {
	node      string
	index     int
	nics      []nic
	cpus, mem int
}

// startVMWith starts QEMU for spec with the given disks.
func (r *rig) startVMWith(t *testing.T, spec vmSpec, disks ...string) *vm {
	t.Helper()
	node := spec.node
	args := []string{
		"-accel", "tcg", "-m", strconv.Itoa(cmp.Or(spec.mem, 1024)), "-smp", strconv.Itoa(cmp.Or(spec.cpus, 2)), "-nographic", "-no-reboot",
		"-kernel", r.kernel, "-initrd", r.initrd,
		"-append", fmt.Sprintf("console=ttyS0 panic=-1 quiet loglevel=1 georepl.node=%s georepl.ip=10.0.0.%d", node, spec.index+1),
	}
	for i, n := range spec.nics {
		args = append(args,
			"-netdev", fmt.Sprintf("dgram,id=n%d,local.type=inet,local.host=127.0.0.1,local.port=%d,remote.type=inet,remote.host=127.0.0.1,remote.port=%d", i, n.local, n.remote),
			"-device", fmt.Sprintf("virtio-net-pci,netdev=n%d,mac=52:54:00:12:34:%02x", i, n.mac))
	}
	args = append(args,
		"-object", "rng-random,id=rng0,filename=/dev/urandom",
		"-device", "virtio-rng-pci,rng=rng0",
	)
	for _, d := range disks {
		args = append(args, "-drive", "file="+d+",if=virtio,format=raw,cache=writeback")
	}
	os.MkdirAll(filepath.Join(r.cache, "logs"), 0o755)
	logf, err := os.OpenFile(filepath.Join(r.cache, "logs", strings.ReplaceAll(t.Name(), "/", "_")+"-"+node+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	v := &vm{t: t, name: node, log: logf, args: args}
	if err := v.launch(); err != nil {
		t.Fatalf("qemu: %v", err)
	}
	t.Cleanup(v.kill)
	return v
}

// launch starts QEMU with v.args.
func (v *vm) launch() error {
	fmt.Fprintf(v.log, "==== %s: qemu-system-x86_64 %s\n", time.Now().Format(time.RFC3339), strings.Join(v.args, " "))
	cmd := exec.Command("qemu-system-x86_64", v.args...)
	in, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	cmd.Stderr = v.log
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan struct{})
	v.mu.Lock()
	v.cmd, v.in, v.done = cmd, in, done
	v.lines, v.more = nil, make(chan struct{})
	v.mu.Unlock()
	go v.read(cmd, out, done)
	return nil
}

// waitBooted waits for /init's shell. Under TCG with two CPUs the kernel
// now and then oopses while patching its own code at boot (QEMU then exits:
// panic=-1, -no-reboot); such a boot is retried, twice at most.
func (v *vm) waitBooted() {
	v.t.Helper()
	for attempt := 1; ; attempt++ {
		if _, _, exited := v.waitFor(0, "@@BOOTED", 3*time.Minute); !exited {
			break
		}
		if attempt == 3 {
			v.t.Fatalf("%s: the kernel died while booting, %d times (console in %s)", v.name, attempt, v.log.Name())
		}
		v.t.Logf("%s: the kernel died while booting (attempt %d); booting again", v.name, attempt)
		if err := v.launch(); err != nil {
			v.t.Fatalf("qemu: %v", err)
		}
	}
	v.must(". /etc/rig.sh", time.Minute)
}

// poweroff shuts the guest down cleanly (after the caller synced) and waits
// for QEMU to exit.
func (v *vm) poweroff() {
	v.t.Helper()
	fmt.Fprintf(v.in, "poweroff -f\n")
	select {
	case <-v.done:
	case <-time.After(2 * time.Minute):
		v.t.Fatalf("%s: QEMU still running 2 minutes after poweroff", v.name)
	}
}

func (v *vm) read(cmd *exec.Cmd, out io.Reader, done chan struct{}) {
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		fmt.Fprintln(v.log, line)
		v.mu.Lock()
		v.lines = append(v.lines, line)
		close(v.more)
		v.more = make(chan struct{})
		v.mu.Unlock()
	}
	cmd.Wait()
	close(done)
}

// kill is a power loss: QEMU dies with the guest's page cache.
func (v *vm) kill() {
	v.killOnce.Do(func() {
		v.mu.Lock()
		cmd, done := v.cmd, v.done
		v.mu.Unlock()
		cmd.Process.Kill()
		<-done
		v.log.Close()
	})
}

// waitFor waits for a console line holding prefix, searching from line
// from, and returns its index and the line from prefix on; exited reports
// that QEMU exited first.
func (v *vm) waitFor(from int, prefix string, timeout time.Duration) (index int, line string, exited bool) {
	v.t.Helper()
	deadline := time.After(timeout)
	for {
		v.mu.Lock()
		for i := from; i < len(v.lines); i++ {
			// Contains, not HasPrefix: console escape sequences may
			// precede a marker.
			if j := strings.Index(v.lines[i], prefix); j >= 0 {
				line := v.lines[i][j:]
				v.mu.Unlock()
				return i, line, false
			}
		}
		from = len(v.lines)
		more, done := v.more, v.done
		v.mu.Unlock()
		select {
		case <-more:
		case <-done:
			// Lines read before the exit may still hold the marker.
			v.mu.Lock()
			n := len(v.lines)
			v.mu.Unlock()
			if n > from {
				continue
			}
			return 0, "", true
		case <-deadline:
			v.t.Fatalf("%s: no %q within %s (console in %s)", v.name, prefix, timeout, v.log.Name())
		}
	}
}

// waitFrom is waitFor failing the test when QEMU exits.
func (v *vm) waitFrom(from int, prefix string, timeout time.Duration) (int, string) {
	v.t.Helper()
	i, line, exited := v.waitFor(from, prefix, timeout)
	if exited {
		v.t.Fatalf("%s: QEMU exited while waiting for %q (console in %s)", v.name, prefix, v.log.Name())
	}
	return i, line
}

func (v *vm) mark() int {
	v.mu.Lock()
	defer v.mu.Unlock()
	return len(v.lines)
}

// sh runs a command in the guest's shell and returns its output lines and
// exit status.
func (v *vm) sh(cmd string, timeout time.Duration) ([]string, int) {
	v.t.Helper()
	v.seq++
	marker := fmt.Sprintf("@@RC %d ", v.seq)
	from := v.mark()
	// The marker goes on a line of its own even if cmd left the cursor
	// mid-line (progress bars).
	fmt.Fprintf(v.in, "%s\nrc=$?; echo; echo \"%s$rc\"\n", cmd, marker)
	i, line := v.waitFrom(from, marker, timeout)
	var rc int
	fmt.Sscanf(strings.TrimPrefix(line, marker), "%d", &rc)
	v.mu.Lock()
	out := slices.Clone(v.lines[from:i])
	v.mu.Unlock()
	return out, rc
}

// must runs cmd and fails the test unless it exits 0.
func (v *vm) must(cmd string, timeout time.Duration) []string {
	v.t.Helper()
	out, rc := v.sh(cmd, timeout)
	if rc != 0 {
		v.t.Fatalf("%s: %q exited %d:\n%s", v.name, cmd, rc, strings.Join(out, "\n"))
	}
	return out
}

// lineWith returns the value after prefix in the first line that has it.
func lineWith(lines []string, prefix string) (string, bool) {
	for _, l := range lines {
		if v, ok := strings.CutPrefix(l, prefix); ok {
			return strings.TrimSpace(v), true
		}
	}
	return "", false
}

// newDisk creates a sparse raw disk image.
func newDisk(t *testing.T, path string, size int64) string {
	t.Helper()
	os.Remove(path)
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	return path
}
