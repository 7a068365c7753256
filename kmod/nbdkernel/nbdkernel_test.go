package nbdkernel

import (
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/mdlayher/genetlink"
	"github.com/mdlayher/netlink"
)

// Golden attribute bytes, written out by hand from nbd-netlink.h: each
// attribute is len u16, type u16 (native endian, little on amd64), value,
// padded to 4 bytes; nested ones carry NLA_F_NESTED (0x8000).
func TestEncodeConnectGolden(t *testing.T) {
	got, err := encodeConnect(Config{
		Index: 3, Size: 1 << 30, ServerFlags: 0x012d,
		Timeout: 30 * time.Second, DeadConnTimeout: 1500 * time.Millisecond,
	}, []int{7, 9})
	if err != nil {
		t.Fatal(err)
	}
	want := strings.Join([]string{
		"0800" + "0100" + "03000000",                   // INDEX 3
		"0c00" + "0200" + "0000004000000000",           // SIZE_BYTES 1 GiB
		"0c00" + "0300" + "0002000000000000",           // BLOCK_SIZE_BYTES 512 (the default)
		"0c00" + "0400" + "1e00000000000000",           // TIMEOUT 30
		"0c00" + "0500" + "2d01000000000000",           // SERVER_FLAGS
		"0c00" + "0600" + "0000000000000000",           // CLIENT_FLAGS
		"0c00" + "0800" + "0200000000000000",           // DEAD_CONN_TIMEOUT 2 (rounded up)
		"1c00" + "0780",                                // SOCKETS
		"0c00" + "0180" + "0800" + "0100" + "07000000", // SOCK_ITEM { SOCK_FD 7 }
		"0c00" + "0180" + "0800" + "0100" + "09000000", // SOCK_ITEM { SOCK_FD 9 }
	}, "")
	if h := hex.EncodeToString(got); h != want {
		t.Errorf("connect attributes\n got %s\nwant %s", h, want)
	}
}

func TestEncodeConnectAnyDevice(t *testing.T) {
	got, err := encodeConnect(Config{Index: AnyDevice, Size: 4096, BlockSize: 512}, []int{5})
	if err != nil {
		t.Fatal(err)
	}
	want := "0c00020000100000000000000c0003000002000000000000" +
		"0c0004000000000000000000" + // TIMEOUT 0: sent, never a default
		"0c0005000000000000000000" + "0c0006000000000000000000" +
		"10000780" + "0c000180" + "0800010005000000"
	if h := hex.EncodeToString(got); h != want {
		t.Errorf("got  %s\nwant %s", h, want)
	}
	if _, err := encodeConnect(Config{Index: 0, Size: 4096}, nil); err == nil {
		t.Error("connect without sockets encoded")
	}
}

func TestEncodeReconfigureAndIndex(t *testing.T) {
	got, err := encodeReconfigure(Config{Index: 1, DeadConnTimeout: time.Minute}, []int{4})
	if err != nil {
		t.Fatal(err)
	}
	// TIMEOUT 0 is sent: it clears a timeout set before.
	want := "0800010001000000" + "0c0004000000000000000000" + "0c0008003c00000000000000" + "10000780" + "0c000180" + "0800010004000000"
	if h := hex.EncodeToString(got); h != want {
		t.Errorf("reconfigure\n got %s\nwant %s", h, want)
	}
	// A size resizes the device: size and block size, no sockets.
	got, err = encodeReconfigure(Config{Index: 1, Size: 1 << 30, BlockSize: 4096}, nil)
	if err != nil {
		t.Fatal(err)
	}
	want = "0800010001000000" + "0c0004000000000000000000" + "0c0002000000004000000000" + "0c0003000010000000000000"
	if h := hex.EncodeToString(got); h != want {
		t.Errorf("reconfigure with a size\n got %s\nwant %s", h, want)
	}
	if _, err := encodeReconfigure(Config{Index: AnyDevice}, []int{4}); err == nil {
		t.Error("reconfigure without an index encoded")
	}
	if got, _ := encodeIndex(2); hex.EncodeToString(got) != "0800010002000000" {
		t.Errorf("index 2 = %x", got)
	}
	if got, _ := encodeIndex(AnyDevice); len(got) != 0 {
		t.Errorf("any device = %x; want no attributes", got)
	}
}

func TestDecodeReplies(t *testing.T) {
	ae := netlink.NewAttributeEncoder()
	ae.Nested(attrDeviceList, func(list *netlink.AttributeEncoder) error {
		for i, connected := range []bool{true, false, true} {
			list.Nested(deviceItem, func(item *netlink.AttributeEncoder) error {
				item.Uint32(deviceIndex, uint32(i))
				var c uint8
				if connected {
					c = 1
				}
				item.Uint8(deviceConnected, c)
				return nil
			})
		}
		return nil
	})
	b, err := ae.Encode()
	if err != nil {
		t.Fatal(err)
	}
	devs, err := decodeStatus(b)
	if err != nil {
		t.Fatal(err)
	}
	want := []Device{{0, true}, {1, false}, {2, true}}
	if !reflect.DeepEqual(devs, want) {
		t.Errorf("status = %+v; want %+v", devs, want)
	}
	if want[1].Path() != "/dev/nbd1" {
		t.Errorf("path %s", want[1].Path())
	}

	b, _ = encodeIndex(7)
	if i, err := decodeIndex(b); err != nil || i != 7 {
		t.Errorf("index reply = %d, %v", i, err)
	}
	if _, err := decodeIndex(nil); err == nil {
		t.Error("empty connect reply accepted")
	}
	if _, err := decodeStatus([]byte{1, 2, 3}); err == nil {
		t.Error("truncated status accepted")
	}
}

func TestLinkDeadIndexes(t *testing.T) {
	index := func(i int) []byte { b, _ := encodeIndex(i); return b }
	msgs := []genetlink.Message{
		{Header: genetlink.Header{Command: cmdLinkDead, Version: version}, Data: index(3)},
		{Header: genetlink.Header{Command: cmdStatus, Version: version}, Data: index(4)},
		{Header: genetlink.Header{Command: cmdLinkDead, Version: version}, Data: nil},
		{Header: genetlink.Header{Command: cmdLinkDead, Version: version}, Data: index(0)},
	}
	if got := linkDeadIndexes(msgs); !reflect.DeepEqual(got, []int{3, 0}) {
		t.Errorf("linkDeadIndexes = %v; want [3 0] (the LINK_DEAD notices with an index)", got)
	}
}

func TestSetRequestCheck(t *testing.T) {
	root := t.TempDir()
	q := filepath.Join(root, "sys/block/nbd2/queue")
	os.MkdirAll(q, 0o755)
	os.WriteFile(filepath.Join(q, "io_timeout"), []byte("30000\n"), 0o644)
	if err := setRequestCheck(root, 2, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(q, "io_timeout")); string(b) != "10000" {
		t.Errorf("io_timeout = %q; want 10000 (milliseconds)", b)
	}
	if err := setRequestCheck(root, 3, time.Second); !errors.Is(err, ErrRequestCheck) {
		t.Errorf("no such device: %v; want ErrRequestCheck", err)
	}
}

func TestParseDevice(t *testing.T) {
	for dev, want := range map[string]int{"": AnyDevice, "nbd": AnyDevice, "/dev/nbd0": 0, "/dev/nbd12": 12} {
		if got, err := ParseDevice(dev); err != nil || got != want {
			t.Errorf("ParseDevice(%q) = %d, %v; want %d", dev, got, err, want)
		}
	}
	for _, dev := range []string{"/dev/nbd", "/dev/nbd01", "/dev/sda", "/dev/nbd1x", "/dev/ublkb0"} {
		if _, err := ParseDevice(dev); err == nil {
			t.Errorf("ParseDevice(%q) accepted", dev)
		}
	}
}

// fakeRoot builds a /proc and /sys tree in which /dev/nbd0 is mounted on
// "/srv/my data", held by dm-3 and open in pid 42 (mkfs.ext4); pid 7 has
// /dev/nbd1 open only.
func fakeRoot(t *testing.T) string {
	root := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	mkdir := func(p string) { must(os.MkdirAll(filepath.Join(root, p), 0o755)) }
	write := func(p, s string) { must(os.WriteFile(filepath.Join(root, p), []byte(s), 0o644)) }
	mkdir("proc/42/fd")
	mkdir("proc/7/fd")
	mkdir("proc/self")
	mkdir("sys/block/nbd0/holders/dm-3")
	mkdir("sys/block/nbd1/holders")
	write("proc/mounts", "proc /proc proc rw 0 0\n/dev/nbd0 /srv/my\\040data ext4 rw 0 0\n/dev/nbd10 /other ext4 rw 0 0\n")
	write("proc/42/comm", "mkfs.ext4\n")
	write("proc/7/comm", "dd\n")
	must(os.Symlink("/dev/null", filepath.Join(root, "proc/42/fd/0")))
	must(os.Symlink("/dev/nbd0", filepath.Join(root, "proc/42/fd/3")))
	must(os.Symlink("/dev/nbd0", filepath.Join(root, "proc/42/fd/4")))
	must(os.Symlink("/dev/nbd1", filepath.Join(root, "proc/7/fd/3")))
	return root
}

func TestHolders(t *testing.T) {
	root := fakeRoot(t)
	got, err := holders(root, "/dev/nbd0")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"mounted on /srv/my data", "held by dm-3", "opened by mkfs.ext4 (pid 42)"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("holders of nbd0 = %q; want %q", got, want)
	}
	got, err = holders(root, "/dev/nbd1")
	if err != nil || !reflect.DeepEqual(got, []string{"opened by dd (pid 7)"}) {
		t.Errorf("holders of nbd1 = %q, %v", got, err)
	}
	got, err = holders(root, "/dev/nbd2")
	if err != nil || len(got) != 0 {
		t.Errorf("holders of nbd2 = %q, %v; want none", got, err)
	}
}

func TestHoldersMissingProc(t *testing.T) {
	if _, err := holders(t.TempDir(), "/dev/nbd0"); err == nil {
		t.Error("no error without /proc/mounts")
	}
}

func TestFindModule(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "kernel/drivers/block")
	if err := os.MkdirAll(p, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"nbd.ko.xz", "nbdx.ko", "ublk_drv.ko"} {
		os.WriteFile(filepath.Join(p, f), nil, 0o644)
	}
	if got, err := findModule(dir, "nbd"); err != nil || got != filepath.Join(p, "nbd.ko.xz") {
		t.Errorf("nbd: %s, %v", got, err)
	}
	if got, err := findModule(dir, "ublk-drv"); err != nil || got != filepath.Join(p, "ublk_drv.ko") {
		t.Errorf("ublk-drv: %s, %v", got, err)
	}
	if _, err := findModule(dir, "drbd"); err == nil {
		t.Error("found drbd")
	}
}

func TestLoadModuleAlreadyLoaded(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "sys/module/nbd"), 0o755)
	if err := loadModule(root, "nbd"); err != nil {
		t.Error(err)
	}
}

func TestBackend(t *testing.T) {
	got, err := encodeConnect(Config{Index: AnyDevice, Size: 4096, Backend: "georepl:r0"}, []int{5})
	if err != nil {
		t.Fatal(err)
	}
	// BACKEND_IDENTIFIER: a NUL-terminated string, padded.
	if h := hex.EncodeToString(got); !strings.Contains(h, "0f000a00"+hex.EncodeToString([]byte("georepl:r0\x00"))+"00") {
		t.Errorf("no backend attribute in %s", h)
	}
	root := t.TempDir()
	for dev, backend := range map[string]string{"nbd0": "", "nbd3": "georepl:r0\n", "nbd4": "georepl:r1\n"} {
		os.MkdirAll(filepath.Join(root, "sys/block", dev), 0o755)
		os.WriteFile(filepath.Join(root, "sys/block", dev, "backend"), []byte(backend), 0o644)
	}
	if i, ok := findBackend(root, "georepl:r0"); !ok || i != 3 {
		t.Errorf("findBackend = %d, %v; want 3", i, ok)
	}
	if b := readBackend(root, 4); b != "georepl:r1" {
		t.Errorf("readBackend(4) = %q", b)
	}
	if b := readBackend(root, 7); b != "" {
		t.Errorf("readBackend(7) = %q; want none", b)
	}
	if _, ok := findBackend(root, "georepl:r9"); ok {
		t.Error("found a backend nobody has")
	}
}
