package checker

import (
	"context"
	"math/rand/v2"
	"sync"

	"github.com/georepl/georepl/kmod/nbd"
)

// Workload describes what RunWorkload writes.
type Workload struct {
	Run        uint64 // tags every block; pick a fresh one per run
	FirstBlock uint64 // where the checked region starts, in blocks
	Blocks     uint64 // size of the checked region, in blocks
	Depth      int    // writes in flight
	FlushEvery int    // issue a flush after this many completions (0: never)
}

// RunWorkload runs the workload against client until ctx ends or a write fails
// (e.g. the primary was killed), logging to log. It returns the number of
// writes that completed; a failing write ends the run without error,
// since that is how a crash looks from the application.
func RunWorkload(ctx context.Context, client *nbd.Client, log *Log, w Workload) (completed int, err error) {
	var (
		mu       sync.Mutex // guards log, seq, busy, completed, stop
		seq      uint64
		busy     = map[uint64]bool{}
		stop     bool
		sinceFl  int
		wg       sync.WaitGroup
		firstErr error
	)
	rng := rand.New(rand.NewPCG(w.Run, 7))
	next := func() (s, block uint64, ok bool) {
		mu.Lock()
		defer mu.Unlock()
		if stop || ctx.Err() != nil {
			return 0, 0, false
		}
		for {
			block = rng.Uint64N(w.Blocks)
			if !busy[block] {
				break
			}
		}
		busy[block] = true
		seq++
		if err := log.Add('S', seq, block); err != nil {
			firstErr, stop = err, true
			return 0, 0, false
		}
		return seq, block, true
	}
	flush := func() {
		if err := client.Flush(); err != nil {
			mu.Lock()
			stop = true
			mu.Unlock()
			return
		}
		mu.Lock()
		log.Add('F', 0, 0)
		mu.Unlock()
	}
	for i := 0; i < w.Depth; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				s, block, ok := next()
				if !ok {
					return
				}
				b := make([]byte, BlockSize) // the export may keep the buffer
				EncodeBlock(b, Tag{Run: w.Run, Block: block, Seq: s})
				if err := client.WriteAt(b, int64((w.FirstBlock+block)*BlockSize), false); err != nil {
					mu.Lock()
					stop = true
					delete(busy, block)
					mu.Unlock()
					return
				}
				mu.Lock()
				log.Add('C', s, block)
				completed++
				delete(busy, block)
				sinceFl++
				doFlush := w.FlushEvery > 0 && sinceFl >= w.FlushEvery
				if doFlush {
					sinceFl = 0
				}
				mu.Unlock()
				if doFlush {
					flush()
				}
			}
		}()
	}
	wg.Wait()
	if err := log.Sync(); err != nil && firstErr == nil {
		firstErr = err
	}
	return completed, firstErr
}
