package kmod

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// Faults makes a Backing's I/O fail on demand. It is a test facility: it
// lets tests drive the I/O error paths of real daemon processes on
// ordinary files, where no failing disk (or device-mapper "error" target)
// is at hand. Nothing in production sets it, and a Backing without Faults
// pays one nil check per operation.
//
// The faults are armed by a trigger file. While it does not exist, nothing
// fails. Once it exists:
//
//   - empty (or only blanks), every read, write, zeroing, discard and
//     flush of the store fails with an error wrapping syscall.EIO;
//   - holding "OFFSET LENGTH" (decimal bytes of the store, not of a
//     Region), only the reads, writes, zeroings and discards that overlap
//     [OFFSET, OFFSET+LENGTH) fail; flushes go on working.
//
// A trigger file that holds anything else makes every operation fail with
// an error that says what is wrong with it. The file is read at every
// operation, so it can be created, changed and removed while the store is
// in use; write a range to another file and rename it into place, since a
// reader that catches the trigger created but not yet written sees it
// empty and fails everything.
type Faults struct {
	trigger string
}

// NewFaults returns faults armed by the file at trigger.
func NewFaults(trigger string) *Faults { return &Faults{trigger: trigger} }

// Trigger returns the path of the trigger file.
func (f *Faults) Trigger() string { return f.trigger }

// check returns the injected error for op on [off, off+length) (length < 0:
// a flush, which has no range), or nil.
func (f *Faults) check(op string, off, length int64) error {
	b, err := os.ReadFile(f.trigger)
	if err != nil {
		return nil // not armed
	}
	spec := strings.TrimSpace(string(b))
	if spec == "" {
		return fmt.Errorf("kmod: %s: injected fault (trigger %s): %w", op, f.trigger, syscall.EIO)
	}
	fields := strings.Fields(spec)
	var start, n int64
	if len(fields) == 2 {
		start, err = strconv.ParseInt(fields[0], 10, 64)
		if err == nil {
			n, err = strconv.ParseInt(fields[1], 10, 64)
		}
	}
	if len(fields) != 2 || err != nil || start < 0 || n <= 0 {
		return fmt.Errorf("kmod: %s: fault trigger %s holds %q, want empty or \"OFFSET LENGTH\" in bytes: %w", op, f.trigger, spec, syscall.EIO)
	}
	if length < 0 || off >= start+n || start >= off+length {
		return nil
	}
	return fmt.Errorf("kmod: %s at [%d, +%d): injected fault on [%d, +%d) (trigger %s): %w", op, off, length, start, n, f.trigger, syscall.EIO)
}

// InjectFaults arms f on b (nil disarms). Call it before b is used
// concurrently: it is not synchronised with I/O.
func (b *Backing) InjectFaults(f *Faults) { b.faults = f }

// fault returns the injected error for op on [off, off+length), if any.
func (b *Backing) fault(op string, off, length int64) error {
	if b.faults == nil {
		return nil
	}
	return b.faults.check(op+" "+b.path, off, length)
}
