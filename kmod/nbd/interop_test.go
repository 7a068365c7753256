package nbd

// Interoperability with NBD clients nobody here wrote (Debian packages
// libnbd-bin, qemu-utils, fio), against the server serving a backing file.
// Missing tools skip the test, except under CI=true where they fail it.

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// requireTool returns the path of tool, from Debian package pkg.
func requireTool(t *testing.T, tool, pkg string) string {
	t.Helper()
	path, err := exec.LookPath(tool)
	if err != nil {
		missing(t, tool+" is not installed", pkg)
	}
	return path
}

func missing(t *testing.T, what, pkg string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s; install it with: apt-get install -y %s", what, pkg)
	}
	t.Skipf("%s (apt-get install -y %s)", what, pkg)
}

// run runs a command and fails the test with its output if it fails.
func run(t *testing.T, name string, args ...string) []byte {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

// serveBackingFile serves a fresh sparse backing file of size bytes as
// export "r0" and returns the server and the export's NBD URI.
func serveBackingFile(t *testing.T, size int64, opts ...ServerOption) (*testServer, string, string) {
	t.Helper()
	dev, backing := newBackingDevice(t, size)
	s := startServer(t, map[string]Device{"r0": dev}, opts...)
	return s, "nbd+unix:///r0?socket=" + s.path, backing.Path()
}

func writeRandomFile(t *testing.T, size int) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "source.img")
	if err := os.WriteFile(path, randomBytes(uint64(size), size), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func sameFiles(t *testing.T, a, b string) {
	t.Helper()
	da, err := os.ReadFile(a)
	if err != nil {
		t.Fatal(err)
	}
	db, err := os.ReadFile(b)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(da, db) {
		t.Fatalf("%s and %s differ", a, b)
	}
}

func TestInteropNbdinfo(t *testing.T) {
	nbdinfo := requireTool(t, "nbdinfo", "libnbd-bin")
	s, uri, _ := serveBackingFile(t, 64<<20, WithExportList(func() []string { return []string{"r0"} }))
	var report struct {
		Protocol string `json:"protocol"`
		Exports  []struct {
			Name       string `json:"export-name"`
			Size       int64  `json:"export-size"`
			ReadOnly   bool   `json:"is_read_only"`
			CanFlush   bool   `json:"can_flush"`
			CanFUA     bool   `json:"can_fua"`
			CanTrim    bool   `json:"can_trim"`
			CanZero    bool   `json:"can_zero"`
			MultiConn  bool   `json:"can_multi_conn"`
			MinBlock   int    `json:"block_size_minimum"`
			Preferred  int    `json:"block_size_preferred"`
			MaxPayload int    `json:"block_size_maximum"`
		} `json:"exports"`
	}
	out := run(t, nbdinfo, "--json", uri)
	if err := json.Unmarshal(out, &report); err != nil {
		t.Fatalf("nbdinfo --json output: %v\n%s", err, out)
	}
	if len(report.Exports) != 1 {
		t.Fatalf("nbdinfo reports %d exports:\n%s", len(report.Exports), out)
	}
	e := report.Exports[0]
	if report.Protocol != "newstyle-fixed" || e.Name != "r0" || e.Size != 64<<20 || e.ReadOnly ||
		!e.CanFlush || !e.CanFUA || !e.CanTrim || !e.CanZero || !e.MultiConn ||
		e.MinBlock != 1 || e.Preferred != 4096 || e.MaxPayload != 32<<20 {
		t.Fatalf("nbdinfo reports %+v:\n%s", report, out)
	}

	list := run(t, nbdinfo, "--list", "--json", "nbd+unix:///?socket="+s.path)
	if !strings.Contains(string(list), `"export-name": "r0"`) {
		t.Fatalf("nbdinfo --list does not show r0:\n%s", list)
	}
}

func TestInteropNbdcopy(t *testing.T) {
	nbdcopy := requireTool(t, "nbdcopy", "libnbd-bin")
	const size = 64 << 20
	_, uri, backing := serveBackingFile(t, size)
	source := writeRandomFile(t, size)
	run(t, nbdcopy, "--flush", source, uri)
	sameFiles(t, source, backing)

	copied := filepath.Join(t.TempDir(), "copied.img")
	if err := os.WriteFile(copied, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	run(t, nbdcopy, uri, copied)
	sameFiles(t, source, copied)
}

func TestInteropQemuImg(t *testing.T) {
	qemuImg := requireTool(t, "qemu-img", "qemu-utils")
	const size = 16 << 20
	_, uri, backing := serveBackingFile(t, size)
	source := writeRandomFile(t, size)
	run(t, qemuImg, "convert", "-n", "-f", "raw", "-O", "raw", source, uri)
	run(t, qemuImg, "compare", "-f", "raw", "-F", "raw", source, uri)
	sameFiles(t, source, backing)
}

func TestInteropFio(t *testing.T) {
	fio := requireTool(t, "fio", "fio")
	engines, err := exec.Command(fio, "--enghelp").CombinedOutput()
	if err != nil || !strings.Contains(string(engines), "\tnbd\n") {
		missing(t, "fio was built without the nbd ioengine", "fio")
	}
	_, uri, _ := serveBackingFile(t, 64<<20)
	jobs := []struct {
		name string
		args []string
	}{
		{"randwrite-4k-verify", []string{"--rw=randwrite", "--bs=4k", "--iodepth=32", "--verify=crc32c", "--size=32M"}},
		{"seqwrite-1m-verify", []string{"--rw=write", "--bs=1M", "--iodepth=8", "--verify=crc32c", "--size=32M", "--offset=32M"}},
	}
	for _, job := range jobs {
		t.Run(job.name, func(t *testing.T) {
			// fio writes verify state files into its working directory.
			args := append([]string{"--name=" + job.name, "--ioengine=nbd", "--uri=" + uri,
				"--output-format=json", "--verify_state_save=0"}, job.args...)
			cmd := exec.Command(fio, args...)
			cmd.Dir = t.TempDir()
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("fio %s: %v\n%s", strings.Join(args, " "), err, out)
			}
			var result struct {
				Jobs []struct {
					Error int `json:"error"`
					Write struct {
						Bytes int64   `json:"io_bytes"`
						IOPS  float64 `json:"iops"`
						BW    int64   `json:"bw_bytes"`
					} `json:"write"`
					Read struct {
						Bytes int64 `json:"io_bytes"`
					} `json:"read"`
				} `json:"jobs"`
			}
			// fio may print notes before its JSON.
			if start := bytes.IndexByte(out, '{'); start >= 0 {
				out = out[start:]
			}
			if err := json.Unmarshal(out, &result); err != nil || len(result.Jobs) != 1 {
				t.Fatalf("fio output (%v):\n%s", err, out)
			}
			j := result.Jobs[0]
			if j.Error != 0 || j.Write.Bytes != 32<<20 || j.Read.Bytes != 32<<20 {
				t.Fatalf("fio: error %d, wrote %d, verified %d bytes; want 0, 32 MiB, 32 MiB", j.Error, j.Write.Bytes, j.Read.Bytes)
			}
			t.Logf("%s: %.0f IOPS, %.1f MB/s (under the race detector if -race)", job.name, j.Write.IOPS, float64(j.Write.BW)/1e6)
		})
	}
}
