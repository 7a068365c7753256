package main

import (
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// clockTicks is the unit of the CPU times in /proc (USER_HZ), 100 on
// every Linux architecture Go supports.
const clockTicks = 100

// cpuSample is what the machine and a cluster's daemons had spent on the
// CPU up to one moment, in clock ticks.
type cpuSample struct {
	busy, total uint64   // every CPU of the machine (/proc/stat)
	daemons     []uint64 // user+system time of each daemon (/proc/PID/stat)
	// switches counts each daemon's context switches, voluntary or not,
	// summed over its threads (those alive at the moment: a thread that
	// exited takes its count along, which the Go runtime's long-lived
	// threads rarely do).
	switches []uint64
}

// sampleCPU reads the machine's CPU times and those of pids.
func sampleCPU(pids []int) (cpuSample, error) {
	var s cpuSample
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return s, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	fields := strings.Fields(line)
	if len(fields) < 5 || fields[0] != "cpu" {
		return s, fmt.Errorf("/proc/stat: unexpected first line %q", line)
	}
	for i, f := range fields[1:] {
		v, err := strconv.ParseUint(f, 10, 64)
		if err != nil {
			return s, fmt.Errorf("/proc/stat: %q: %w", f, err)
		}
		s.total += v
		if i != 3 && i != 4 { // idle and iowait
			s.busy += v
		}
	}
	for _, pid := range pids {
		t, err := processTicks(pid)
		if err != nil {
			return s, err
		}
		n, err := contextSwitches(pid)
		if err != nil {
			return s, err
		}
		s.daemons, s.switches = append(s.daemons, t), append(s.switches, n)
	}
	return s, nil
}

// contextSwitches sums the context switches of process pid's threads.
func contextSwitches(pid int) (uint64, error) {
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/status", pid))
	if err != nil || len(tasks) == 0 {
		return 0, fmt.Errorf("threads of process %d: none found (%v)", pid, err)
	}
	var sum uint64
	for _, path := range tasks {
		b, err := os.ReadFile(path)
		if err != nil {
			continue // the thread exited meanwhile
		}
		for _, line := range strings.Split(string(b), "\n") {
			name, value, ok := strings.Cut(line, ":")
			if !ok || (name != "voluntary_ctxt_switches" && name != "nonvoluntary_ctxt_switches") {
				continue
			}
			v, err := strconv.ParseUint(strings.TrimSpace(value), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("%s: %q: %w", path, line, err)
			}
			sum += v
		}
	}
	return sum, nil
}

// processTicks returns the user and system time process pid has spent.
func processTicks(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name, in parentheses, may hold spaces: fields count
	// from after its closing parenthesis, where field 3 (state) starts.
	rest := string(b[strings.LastIndexByte(string(b), ')')+1:])
	fields := strings.Fields(rest)
	if len(fields) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: too few fields", pid)
	}
	var sum uint64
	for _, f := range fields[11:13] { // utime and stime, fields 14 and 15
		v, err := strconv.ParseUint(f, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/%d/stat: %q: %w", pid, f, err)
		}
		sum += v
	}
	return sum, nil
}

// cpuUse is the CPU spent between two samples: cores is how many of the
// machine's CPUs were busy on average (with everything else running on
// it), daemons the seconds each daemon spent, switches the context
// switches each made.
type cpuUse struct {
	cores    float64
	daemons  []float64
	switches []float64
}

func (s cpuSample) until(later cpuSample, ncpu int) cpuUse {
	var u cpuUse
	if dt := later.total - s.total; dt > 0 {
		u.cores = float64(later.busy-s.busy) / float64(dt) * float64(ncpu)
	}
	for i := range s.daemons {
		u.daemons = append(u.daemons, float64(later.daemons[i]-s.daemons[i])/clockTicks)
		u.switches = append(u.switches, float64(max(later.switches[i], s.switches[i])-s.switches[i]))
	}
	return u
}

// gcmCost measures what TLS 1.3's record protection costs on this
// machine in CPU alone: the µs of CPU time one thread spends sealing one
// MiB in 16 KiB records with AES-128-GCM (the suite crypto/tls picks
// where the CPU has AES instructions, as both daemons' do here) and
// opening them again. It counts the thread's own CPU time, so a busy
// machine slows it down without changing the result.
func gcmCost() (sealUs, openUs float64, err error) {
	block, err := aes.NewCipher(make([]byte, 16))
	if err != nil {
		return 0, 0, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return 0, 0, err
	}
	const record, total = 16 << 10, 64 << 20
	plain := make([]byte, record)
	sealed := make([][]byte, total/record)
	size := record + aead.Overhead()
	space := make([]byte, len(sealed)*size)
	for i := range sealed {
		sealed[i] = space[i*size : i*size : (i+1)*size]
	}
	nonce := make([]byte, aead.NonceSize())
	seal := func() {
		for i := range sealed {
			binary.BigEndian.PutUint64(nonce[4:], uint64(i))
			sealed[i] = aead.Seal(sealed[i][:0], nonce, plain, nil)
		}
	}
	seal() // once untimed: the first touch of space costs page faults
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	start, err := threadCPU()
	if err != nil {
		return 0, 0, err
	}
	seal()
	mid, err := threadCPU()
	if err != nil {
		return 0, 0, err
	}
	for i, ct := range sealed {
		binary.BigEndian.PutUint64(nonce[4:], uint64(i))
		if _, err := aead.Open(plain[:0], nonce, ct, nil); err != nil {
			return 0, 0, err
		}
	}
	end, err := threadCPU()
	if err != nil {
		return 0, 0, err
	}
	perMiB := func(d time.Duration) float64 { return float64(d.Microseconds()) / (total >> 20) }
	return perMiB(mid - start), perMiB(end - mid), nil
}

// threadCPU is the CPU time the calling thread has spent.
func threadCPU() (time.Duration, error) {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_THREAD, &ru); err != nil {
		return 0, err
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nil
}
