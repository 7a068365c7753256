package transports

import (
	"net"
	"testing"
)

func TestAdmission(t *testing.T) {
	a := NewAdmission(4, 3)
	var evicted []string
	admit := func(source, name string) *Admitted {
		return a.Admit(source, func() { evicted = append(evicted, name) })
	}
	x1, x2 := admit("x", "x1"), admit("x", "x2")
	admit("x", "x3")
	if admit("x", "x4") != nil {
		t.Fatal("a source took more than perSource slots")
	}
	y1 := admit("y", "y1")
	if len(evicted) != 0 || a.n != 4 {
		t.Fatalf("evicted %v with %d of 4 slots taken", evicted, a.n)
	}
	// Full: a newcomer evicts the oldest connection of the largest source.
	z1 := admit("z", "z1")
	if z1 == nil || len(evicted) != 1 || evicted[0] != "x1" {
		t.Fatalf("a newcomer to a full admission evicted %v, want [x1]", evicted)
	}
	x1.Release() // after eviction: nothing happens
	if a.n != 4 {
		t.Fatalf("%d slots taken after releasing an evicted connection, want 4", a.n)
	}
	x2.Release()
	x2.Release()
	y1.Release()
	if a.n != 2 || len(a.bySource["y"]) != 0 {
		t.Fatalf("%d slots taken (y holds %d) after two releases, want 2 (0)", a.n, len(a.bySource["y"]))
	}
	if admit("y", "y2") == nil || len(evicted) != 1 {
		t.Fatalf("with free slots, admitting evicted %v", evicted)
	}
}

func TestSource(t *testing.T) {
	for _, tc := range []struct {
		addr net.Addr
		want string
	}{
		{&net.TCPAddr{IP: net.IPv4(10, 0, 0, 1), Port: 7789}, "10.0.0.1"},
		{&net.UDPAddr{IP: net.ParseIP("fd00::1"), Port: 7789}, "fd00::1"},
		{&net.UnixAddr{Name: "/run/x", Net: "unix"}, "/run/x"},
		{nil, ""},
	} {
		if got := Source(tc.addr); got != tc.want {
			t.Errorf("Source(%v) = %q, want %q", tc.addr, got, tc.want)
		}
	}
}
