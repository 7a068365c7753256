package nbdkernel

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrNoModule is wrapped by LoadModule's error when the module is neither
// loaded nor loadable on this kernel.
var ErrNoModule = errors.New("kernel module not available")

// LoadModule makes sure kernel module name (e.g. "nbd", "ublk_drv") is
// loaded, as modprobe would: nothing if /sys/module/NAME exists, else
// `modprobe NAME`, else finit_module(2) of NAME.ko[.xz|.zst|.gz] found under
// /lib/modules/$(uname -r) (compressed modules need a kernel that
// decompresses them itself). Dependencies are loaded only by modprobe; nbd
// and ublk_drv have none.
func LoadModule(name string) error {
	return loadModule("/", name)
}

func loadModule(root, name string) error {
	if loaded(root, name) {
		return nil
	}
	var tried []string
	if path, err := exec.LookPath("modprobe"); err == nil {
		out, err := exec.Command(path, name).CombinedOutput()
		if err == nil && loaded(root, name) {
			return nil
		}
		tried = append(tried, fmt.Sprintf("modprobe %s: %v %s", name, err, strings.TrimSpace(string(out))))
	}
	var uts unix.Utsname
	if err := unix.Uname(&uts); err != nil {
		return err
	}
	release := unix.ByteSliceToString(uts.Release[:])
	file, err := findModule(filepath.Join(root, "lib/modules", release), name)
	if err != nil {
		tried = append(tried, err.Error())
		return fmt.Errorf("%w: %s (%s)", ErrNoModule, name, strings.Join(tried, "; "))
	}
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	flags := 0
	if !strings.HasSuffix(file, ".ko") {
		flags = unix.MODULE_INIT_COMPRESSED_FILE
	}
	if err := unix.FinitModule(int(f.Fd()), "", flags); err != nil && !errors.Is(err, unix.EEXIST) {
		tried = append(tried, fmt.Sprintf("finit_module %s: %v", file, err))
		return fmt.Errorf("%w: %s (%s)", ErrNoModule, name, strings.Join(tried, "; "))
	}
	return nil
}

func loaded(root, name string) bool {
	_, err := os.Stat(filepath.Join(root, "sys/module", name))
	return err == nil
}

// findModule finds NAME.ko, or a compressed NAME.ko.*, under dir. Module
// file names use '-' and '_' interchangeably.
func findModule(dir, name string) (string, error) {
	want := strings.ReplaceAll(name, "-", "_")
	var found string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || found != "" {
			return err
		}
		base := d.Name()
		i := strings.Index(base, ".ko")
		if i < 0 || strings.ReplaceAll(base[:i], "-", "_") != want {
			return nil
		}
		if rest := base[i:]; rest == ".ko" || rest == ".ko.xz" || rest == ".ko.zst" || rest == ".ko.gz" {
			found = path
			return fs.SkipAll
		}
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("looking for %s.ko under %s: %w", name, dir, err)
	}
	if found == "" {
		return "", fmt.Errorf("no %s.ko under %s", name, dir)
	}
	return found, nil
}
