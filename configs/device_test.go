package configs

import (
	"strings"
	"testing"
)

// deviceNode is a resource whose node "alpha" sets export and device; %s is
// the device line.
func deviceConfig(deviceLine string) string {
	return `resource "r0" {
  node "alpha" {
    id      = 0
    address = "10.0.0.1:7789"
    disk    = "/dev/a"
    export  = "unix:/run/georepl/r0.sock"
    ` + deviceLine + `
  }
  node "bravo" {
    id      = 1
    address = "10.0.0.2:7789"
    disk    = "/dev/b"
  }
` + testTLS + `}
`
}

func TestDeviceAccepted(t *testing.T) {
	for _, dev := range []string{"", "/dev/nbd0", "/dev/nbd15", "nbd", "ublk", "/dev/ublkb0", "/dev/ublkb3", "auto"} {
		cfg, err := Parse("r0.hcl", []byte(deviceConfig(`device = "`+dev+`"`)), LoadOptions{})
		if err != nil {
			t.Errorf("device = %q: %v", dev, err)
			continue
		}
		r, _ := cfg.Resource("r0")
		if got := r.Nodes[0].Device; got != dev {
			t.Errorf("device = %q read as %q", dev, got)
		}
		if got := r.Nodes[1].Device; got != "" {
			t.Errorf("node without device has Device %q", got)
		}
	}
}

func TestDeviceRefused(t *testing.T) {
	for _, tc := range []struct{ src, want string }{
		{deviceConfig(`device = "/dev/sda"`), `r0.hcl:7:14: Invalid device; device = "/dev/sda": must be`},
		{deviceConfig(`device = "/dev/nbd"`), `must end in a device number, like /dev/nbd0`},
		{deviceConfig(`device = "/dev/nbd01"`), `must end in a device number`},
		{deviceConfig(`device = "/dev/ublkbx"`), `like /dev/ublkb0`},
		{deviceConfig(`device = 3`), `r0.hcl:7:`},
		{strings.Replace(deviceConfig(`device = "nbd"`), `export  = "unix:/run/georepl/r0.sock"`, ``, 1),
			`r0.hcl:7:14: Device without export; device = "nbd" needs an export in the same node block`},
		{strings.Replace(deviceConfig(`device = "auto"`), `export  = "unix:/run/georepl/r0.sock"`, ``, 1),
			`Device without export; device = "auto"`},
	} {
		_, err := Parse("r0.hcl", []byte(tc.src), LoadOptions{})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("error = %v; want it to contain %q", err, tc.want)
		}
	}
}

func TestUblkDeviceWithoutExport(t *testing.T) {
	for _, dev := range []string{"ublk", "/dev/ublkb2"} {
		src := strings.Replace(deviceConfig(`device = "`+dev+`"`), `export  = "unix:/run/georepl/r0.sock"`, ``, 1)
		cfg, err := Parse("r0.hcl", []byte(src), LoadOptions{})
		if err != nil {
			t.Errorf("device = %q without export: %v", dev, err)
			continue
		}
		r, _ := cfg.Resource("r0")
		if r.Nodes[0].Device != dev {
			t.Errorf("device = %q read as %q", dev, r.Nodes[0].Device)
		}
	}
}

func TestUblkQueues(t *testing.T) {
	for _, tc := range []struct {
		lines         string
		queues, depth int
	}{
		{`device = "ublk"`, 1, 128},
		{`device = "/dev/nbd0"`, 1, 128},
		{"device = \"ublk\"\n    ublk_queues = 2\n    ublk_queue_depth = 64", 2, 64},
		{"device = \"/dev/ublkb1\"\n    ublk_queue_depth = 2048", 1, 2048},
		{"device = \"auto\"\n    ublk_queues = 4096", 4096, 128},
	} {
		cfg, err := Parse("r0.hcl", []byte(deviceConfig(tc.lines)), LoadOptions{})
		if err != nil {
			t.Errorf("%s: %v", tc.lines, err)
			continue
		}
		r, _ := cfg.Resource("r0")
		if n := r.Nodes[0]; n.UblkQueues != tc.queues || n.UblkQueueDepth != tc.depth {
			t.Errorf("%s: queues %d, depth %d; want %d, %d", tc.lines, n.UblkQueues, n.UblkQueueDepth, tc.queues, tc.depth)
		}
		if n := r.Nodes[1]; n.UblkQueues != 1 || n.UblkQueueDepth != 128 {
			t.Errorf("node without settings: queues %d, depth %d; want the defaults 1, 128", n.UblkQueues, n.UblkQueueDepth)
		}
	}
}

func TestUblkQueuesRefused(t *testing.T) {
	for _, tc := range []struct{ lines, want string }{
		{"device = \"ublk\"\n    ublk_queues = 0", `r0.hcl:8:19: Invalid ublk_queues; ublk_queues = 0 must be a whole number from 1 to 4096.`},
		{"device = \"ublk\"\n    ublk_queues = 1.5", `ublk_queues = 1.5 must be a whole number from 1 to 4096`},
		{"device = \"ublk\"\n    ublk_queue_depth = 4096", `r0.hcl:8:24: Invalid ublk_queue_depth; ublk_queue_depth = 4096 must be a whole number from 1 to 2048.`},
		{"device = \"ublk\"\n    ublk_queue_depth = \"deep\"", `r0.hcl:8:`},
		{"device = \"/dev/nbd0\"\n    ublk_queues = 2", `r0.hcl:8:19: Setting for another device; ublk_queues applies to ublk devices only; this node block has device = "/dev/nbd0"`},
		{"ublk_queue_depth = 64", `r0.hcl:7:24: Setting for another device; ublk_queue_depth applies to ublk devices only; this node block has no device`},
	} {
		_, err := Parse("r0.hcl", []byte(deviceConfig(tc.lines)), LoadOptions{})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error = %v; want it to contain %q", tc.lines, err, tc.want)
		}
	}
	// A bad device is diagnosed once, not again for the ublk settings.
	_, err := Parse("r0.hcl", []byte(deviceConfig("device = \"/dev/sda\"\n    ublk_queues = 2")), LoadOptions{})
	if err == nil || strings.Contains(err.Error(), "another device") {
		t.Errorf("bad device with ublk_queues: %v; want only the device's error", err)
	}
}

// logicalBlockConfig is a resource whose disk block holds line.
func logicalBlockConfig(line string) string {
	return strings.Replace(deviceConfig(`device = "auto"`), `resource "r0" {`, "resource \"r0\" {\n  disk {\n    "+line+"\n  }", 1)
}

func TestLogicalBlockSize(t *testing.T) {
	for _, tc := range []struct {
		line string
		want int64
	}{
		{"", 512},
		{`logical_block_size = "512B"`, 512},
		{`logical_block_size = "1KiB"`, 1024},
		{`logical_block_size = "2048"`, 2048},
		{`logical_block_size = "4KiB"`, 4096},
	} {
		cfg, err := Parse("r0.hcl", []byte(logicalBlockConfig(tc.line)), LoadOptions{})
		if err != nil {
			t.Errorf("%q: %v", tc.line, err)
			continue
		}
		if got := cfg.Resources[0].Disk.LogicalBlockSize; got != tc.want {
			t.Errorf("%q: LogicalBlockSize %d; want %d", tc.line, got, tc.want)
		}
	}
}

func TestLogicalBlockSizeRefused(t *testing.T) {
	for _, tc := range []struct{ line, want string }{
		{`logical_block_size = "256B"`, `r0.hcl:3:26: Invalid logical_block_size; logical_block_size = 256B must be 512B, 1KiB, 2KiB or 4KiB.`},
		{`logical_block_size = "8KiB"`, `logical_block_size = 8KiB must be 512B, 1KiB, 2KiB or 4KiB.`},
		{`logical_block_size = "1536"`, `logical_block_size = 1.5KiB must be 512B, 1KiB, 2KiB or 4KiB.`},
	} {
		_, err := Parse("r0.hcl", []byte(logicalBlockConfig(tc.line)), LoadOptions{})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error = %v; want it to contain %q", tc.line, err, tc.want)
		}
	}
}
