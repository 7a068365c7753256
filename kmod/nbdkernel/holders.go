package nbdkernel

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// Holders reports who keeps block device dev ("/dev/nbd0") busy, one
// human-readable line each: "mounted on /mnt", "held by dm-0" (a
// device-mapper, md or other stacked device), "opened by mkfs.ext4 (pid
// 123)". None means it can be detached without pulling a disk from under
// anyone. Processes whose /proc entries cannot be read (other users, when
// not root) are not seen.
func Holders(dev string) ([]string, error) {
	return holders("/", dev)
}

// holders is Holders with /proc, /sys and /dev under root, for tests.
func holders(root, dev string) ([]string, error) {
	name := filepath.Base(dev)
	var out []string

	mounts, err := os.Open(filepath.Join(root, "proc/mounts"))
	if err != nil {
		return nil, err
	}
	defer mounts.Close()
	sc := bufio.NewScanner(mounts)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && (fields[0] == dev || strings.TrimPrefix(fields[0], "/dev/") == name) {
			out = append(out, "mounted on "+unescapeMount(fields[1]))
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}

	held, _ := os.ReadDir(filepath.Join(root, "sys/block", name, "holders"))
	for _, h := range held {
		out = append(out, "held by "+h.Name())
	}

	procs, err := os.ReadDir(filepath.Join(root, "proc"))
	if err != nil {
		return nil, err
	}
	self := os.Getpid()
	var pids []int
	for _, p := range procs {
		if pid, err := strconv.Atoi(p.Name()); err == nil && (root != "/" || pid != self) {
			pids = append(pids, pid)
		}
	}
	sort.Ints(pids)
	for _, pid := range pids {
		dir := filepath.Join(root, "proc", strconv.Itoa(pid))
		fds, err := os.ReadDir(filepath.Join(dir, "fd"))
		if err != nil {
			continue // gone, or not ours to see
		}
		for _, fd := range fds {
			target, err := os.Readlink(filepath.Join(dir, "fd", fd.Name()))
			if err == nil && target == dev {
				comm, _ := os.ReadFile(filepath.Join(dir, "comm"))
				out = append(out, fmt.Sprintf("opened by %s (pid %d)", strings.TrimSpace(string(comm)), pid))
				break
			}
		}
	}
	return out, nil
}

// unescapeMount undoes /proc/mounts' octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
