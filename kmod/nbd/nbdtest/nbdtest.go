// Package nbdtest holds what the tests of kmod/nbd's server and of the
// daemon's NBD export check alike.
package nbdtest

import (
	"bytes"
	"fmt"
	"testing"
	"time"
)

// Client is the part of an NBD client that Served uses (*nbd.Client).
type Client interface {
	WriteAt(p []byte, off int64, fua bool) error
	ReadAt(p []byte, off int64) (int, error)
}

// Served runs a well-behaved client's 40 requests on c, 20 writes of 64
// KiB and 20 reads of readSize within the first 8 read sizes of the
// device, and fails t unless every one is answered within two minutes:
// a server whose other client never reads its replies must not starve
// this one. How fast they are answered is logged, not checked: that is
// what a loaded machine decides.
func Served(t testing.TB, c Client, readSize int) {
	t.Helper()
	buf := make([]byte, readSize)
	start := time.Now()
	served := make(chan error, 1)
	go func() {
		for i := range 20 {
			block := bytes.Repeat([]byte{byte(i)}, 64<<10)
			if err := c.WriteAt(block, int64(i)<<20, false); err != nil {
				served <- fmt.Errorf("the well-behaved client's write %d: %w", i, err)
				return
			}
			if _, err := c.ReadAt(buf, int64(i%8)*int64(readSize)); err != nil {
				served <- fmt.Errorf("the well-behaved client's read %d: %w", i, err)
				return
			}
		}
		served <- nil
	}()
	select {
	case err := <-served:
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("the well-behaved client's 40 requests took %v", time.Since(start).Round(time.Millisecond))
	case <-time.After(2 * time.Minute):
		t.Fatal("the well-behaved client's 40 requests were not served within 2 minutes: the greedy client starves it")
	}
}
