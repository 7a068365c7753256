package node

import "testing"

func TestResolveDevice(t *testing.T) {
	for _, tc := range []struct {
		dev       string
		ublkOK    bool
		wantUblk  bool
		wantPath  string
		askedUblk bool // whether the kernel's ublk support matters
	}{
		{"auto", true, true, "", true},
		{"auto", false, false, "nbd", true},
		{"ublk", false, true, "", false},
		{"/dev/ublkb3", false, true, "/dev/ublkb3", false},
		{"nbd", true, false, "nbd", false},
		{"/dev/nbd2", true, false, "/dev/nbd2", false},
	} {
		asked := false
		isUblk, path := resolveDevice(tc.dev, func() bool { asked = true; return tc.ublkOK })
		if isUblk != tc.wantUblk || path != tc.wantPath || asked != tc.askedUblk {
			t.Errorf("resolveDevice(%q, ublk available %v) = %v, %q (asked %v); want %v, %q (asked %v)",
				tc.dev, tc.ublkOK, isUblk, path, asked, tc.wantUblk, tc.wantPath, tc.askedUblk)
		}
	}
}
