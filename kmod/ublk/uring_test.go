package ublk

import (
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// newTestRing sets up a ring or skips where io_uring is disabled.
func newTestRing(t *testing.T, entries uint32) *ring {
	t.Helper()
	r, err := newRing(entries)
	if errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EPERM) {
		b, _ := os.ReadFile("/proc/sys/kernel/io_uring_disabled")
		t.Skipf("io_uring unavailable here (io_uring_disabled=%s): %v", strings.TrimSpace(string(b)), err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.close)
	return r
}

func TestRingNop(t *testing.T) {
	r := newTestRing(t, 4)
	if r.sqEntries != 4 {
		t.Fatalf("sq entries %d, want 4", r.sqEntries)
	}
	// Several rounds wrap the indices around the rings.
	for round := range 5 {
		for i := range 4 {
			e, err := r.next()
			if err != nil {
				t.Fatal(err)
			}
			e.opcode = opNop
			e.userData = uint64(round*10 + i)
		}
		if _, err := r.next(); !errors.Is(err, errRingFull) {
			t.Fatalf("fifth SQE: err %v, want errRingFull", err)
		}
		if err := r.submit(4); err != nil {
			t.Fatal(err)
		}
		var got []uint64
		if n := r.reap(func(c cqe) {
			if c.res != 0 {
				t.Errorf("nop %d: res %d", c.userData, c.res)
			}
			got = append(got, c.userData)
		}); n != 4 {
			t.Fatalf("round %d: reaped %d, want 4", round, n)
		}
		for i, ud := range got {
			if ud != uint64(round*10+i) {
				t.Errorf("round %d: completion %d has user_data %d", round, i, ud)
			}
		}
	}
}

// TestRingPollWake is the wakeup a queue relies on: a POLL_ADD on an
// eventfd completes when another goroutine writes the eventfd, ending a
// blocking wait.
func TestRingPollWake(t *testing.T) {
	r := newTestRing(t, 4)
	efd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(efd)
	e, _ := r.next()
	e.opcode = opPollAdd
	e.fd = int32(efd)
	e.opFlags = unix.POLLIN
	e.userData = wakeTag
	go func() {
		time.Sleep(20 * time.Millisecond)
		one := [8]byte{1}
		unix.Write(efd, one[:])
	}()
	start := time.Now()
	if err := r.submit(1); err != nil {
		t.Fatal(err)
	}
	if time.Since(start) < 10*time.Millisecond {
		t.Errorf("wait returned after %v, before the eventfd was written", time.Since(start))
	}
	var res []cqe
	r.reap(func(c cqe) { res = append(res, c) })
	if len(res) != 1 || res[0].userData != wakeTag || res[0].res&unix.POLLIN == 0 {
		t.Fatalf("completions %+v, want one POLLIN for the wake tag", res)
	}
}

// TestRingCancel is how a control command gives up: ASYNC_CANCEL on a
// pending request completes it with ECANCELED.
func TestRingCancel(t *testing.T) {
	r := newTestRing(t, 4)
	efd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(efd)
	e, _ := r.next()
	e.opcode = opPollAdd
	e.fd = int32(efd)
	e.opFlags = unix.POLLIN
	e.userData = 7
	if err := r.submit(0); err != nil {
		t.Fatal(err)
	}
	if ok, err := r.waitReadable(20 * time.Millisecond); err != nil || ok {
		t.Fatalf("waitReadable = %v, %v before anything completed", ok, err)
	}
	c, _ := r.next()
	c.opcode = opAsyncCancel
	c.addr = 7
	c.userData = 8
	if err := r.submit(2); err != nil {
		t.Fatal(err)
	}
	got := map[uint64]int32{}
	r.reap(func(c cqe) { got[c.userData] = c.res })
	if got[7] != -int32(unix.ECANCELED) || got[8] != 0 {
		t.Fatalf("results %v, want 7: -ECANCELED, 8: 0", got)
	}
}
