package nbd

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
)

// BenchmarkWrite measures the Go client writing through the server to a
// backing file over a unix socket, with qd writes in flight. The file is
// not synced: this is the data path's cost, not the disk's.
func BenchmarkWrite(b *testing.B) {
	const deviceSize = 256 << 20
	for _, bc := range []struct {
		blockSize, qd int
	}{
		{1 << 20, 1}, {1 << 20, 8}, {4 << 10, 1}, {4 << 10, 32},
	} {
		b.Run(fmt.Sprintf("bs=%dKiB/qd=%d", bc.blockSize>>10, bc.qd), func(b *testing.B) {
			dev, _ := newBackingDevice(b, deviceSize)
			s := startServer(b, map[string]Device{"r0": dev})
			c := dial(b, s.spec, "r0")
			block := randomBytes(1, bc.blockSize)
			blocks := int64(deviceSize / bc.blockSize)
			var next atomic.Int64
			b.SetBytes(int64(bc.blockSize))
			b.ResetTimer()
			var wg sync.WaitGroup
			for range bc.qd {
				wg.Go(func() {
					for {
						i := next.Add(1) - 1
						if i >= int64(b.N) {
							return
						}
						if err := c.WriteAt(block, (i%blocks)*int64(bc.blockSize), false); err != nil {
							b.Error(err)
							return
						}
					}
				})
			}
			wg.Wait()
		})
	}
}
