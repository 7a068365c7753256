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
}
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
