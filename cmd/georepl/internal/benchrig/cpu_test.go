package main

import (
	"crypto/sha256"
	"os"
	"testing"
	"time"
)

// sampleCPU reads this very process as it would a daemon: the CPU it
// burns shows up in its own line and in the machine's busy time, and
// sleeping makes it switch.
func TestSampleCPUCountsOwnWork(t *testing.T) {
	pid := os.Getpid()
	before, err := sampleCPU([]int{pid})
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(nil)
	for {
		for range 10000 {
			sum = sha256.Sum256(sum[:])
		}
		time.Sleep(time.Millisecond) // a voluntary context switch
		ticks, err := processTicks(pid)
		if err != nil {
			t.Fatal(err)
		}
		if ticks > before.daemons[0] {
			break
		}
	}
	after, err := sampleCPU([]int{pid})
	if err != nil {
		t.Fatal(err)
	}
	use := before.until(after, 2)
	if use.daemons[0] <= 0 {
		t.Errorf("own CPU time %v s after burning CPU, want > 0", use.daemons[0])
	}
	if use.switches[0] <= 0 {
		t.Errorf("own context switches %v after sleeping, want > 0", use.switches[0])
	}
	if after.busy < before.busy || after.total <= before.total || use.cores < 0 || use.cores > 2 {
		t.Errorf("machine busy %d -> %d of %d -> %d ticks, %.2f cores: want growing counters and 0..2 cores", before.busy, after.busy, before.total, after.total, use.cores)
	}
}

func TestSampleCPUNamesMissingProcess(t *testing.T) {
	// PID 2^22 + 1 is above Linux's pid_max limit: no process has it.
	if _, err := sampleCPU([]int{1<<22 + 1}); err == nil {
		t.Error("sampleCPU of a process that does not exist: no error")
	}
}

func TestGCMCostIsMeasured(t *testing.T) {
	seal, open, err := gcmCost()
	if err != nil {
		t.Fatal(err)
	}
	if seal <= 0 || open <= 0 {
		t.Errorf("AES-GCM seal %v µs, open %v µs per MiB: want both > 0", seal, open)
	}
}
