package node

import (
	"io"
	"math/bits"
	"sync"
	"testing"

	"github.com/georepl/georepl/core"
	"github.com/georepl/georepl/core/meta"
	"github.com/georepl/georepl/core/wire"
	"github.com/georepl/georepl/kmod"
)

// syncImages is a metadata device that keeps, at every Sync, an image of
// its bytes: what a power loss at that instant leaves at least.
type syncImages struct {
	meta.Device
	size   int64
	mu     sync.Mutex
	images [][]byte
}

func (d *syncImages) Sync() error {
	if err := d.Device.Sync(); err != nil {
		return err
	}
	img := make([]byte, d.size)
	if _, err := d.Device.ReadAt(img, 0); err != nil && err != io.EOF {
		return err
	}
	d.mu.Lock()
	d.images = append(d.images, img)
	d.mu.Unlock()
	return nil
}

// memImage is a crash image opened as a metadata device.
type memImage []byte

func (m memImage) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(len(m)) {
		return 0, io.EOF
	}
	n := copy(p, m[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}
func (m memImage) WriteAt(p []byte, off int64) (int, error) { return copy(m[off:], p), nil }
func (m memImage) Sync() error                              { return nil }

// TestBulkMarksDurableWithTheirBitmapID: marks that no activity-log extent
// covers (every block of a peer declared bad, or announced Diskless, or
// getting a full sync) must be on disk no later than the bitmap id that
// the superblock ties them to. A crash in between would restart with the
// id and without the marks: the peer would be resynchronised from an
// empty bitmap and taken for UpToDate.
func TestBulkMarksDurableWithTheirBitmapID(t *testing.T) {
	const bravo = core.NodeID(1)
	for _, tt := range []struct {
		name string
		// hello is what bravo says at the (link-less) handshake.
		hello func(alpha core.Status) wire.Hello
		// then is what happens once bravo is connected.
		then func(t *testing.T, r *resource)
	}{
		{
			name: "invalidate-remote",
			then: func(t *testing.T, r *resource) {
				if err := r.InvalidateRemote("bravo"); err != nil {
					t.Fatal(err)
				}
			},
		},
		{
			name: "the peer invalidates its data",
			then: func(t *testing.T, r *resource) {
				engineCall(t, r, func() { r.engine.Receive(bravo, &wire.Frame{Type: wire.TypeInvalidateRequest}) })
			},
		},
		{
			name: "the peer announces Diskless",
			then: func(t *testing.T, r *resource) {
				engineCall(t, r, func() {
					st := r.engine.Status()
					state := wire.State{Role: uint8(core.Secondary), Disk: uint8(core.Diskless), Repl: uint8(core.Established),
						Size: r.st.DataSize, Gen: wire.GenIDs{Current: st.Current, History: st.History}}
					payload, err := state.MarshalBinary()
					if err != nil {
						t.Fatal(err)
					}
					r.engine.Receive(bravo, &wire.Frame{Type: wire.TypeStateChange, Payload: payload})
				})
			},
		},
		{
			name: "a new peer gets a full sync",
			hello: func(alpha core.Status) wire.Hello {
				return wire.Hello{Role: uint8(core.Secondary), Disk: uint8(core.Inconsistent)}
			},
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, r := upResource(t, "pass-on")
			if err := r.Primary(true); err != nil {
				t.Fatal(err)
			}
			_, metaOff, metaSize, err := meta.InternalLayout(r.st.Backing.Size(), bitmapSlots(r.cfg), uint32(r.cfg.Disk.BlockSize))
			if err != nil {
				t.Fatal(err)
			}
			dev := &syncImages{Device: kmod.NewRegion(r.st.Backing, metaOff, metaSize), size: metaSize}
			store, err := meta.Open(dev, 0)
			if err != nil {
				t.Fatal(err)
			}
			engineCall(t, r, func() {
				r.st.Store = store
				alpha := r.engine.Status()
				h := wire.Hello{Role: uint8(core.Secondary), Disk: uint8(core.UpToDate),
					Gen: wire.GenIDs{Current: alpha.Current, History: alpha.History}}
				if tt.hello != nil {
					h = tt.hello(alpha)
				}
				h.Resource, h.From, h.To, h.Size = r.cfg.Name, uint8(bravo), uint8(r.self.ID), r.st.DataSize
				ours := r.engine.Hello(bravo)
				r.engine.Connected(bravo, &ours, &h)
			})
			if tt.then != nil {
				tt.then(t, r)
			}
			var marked int
			engineCall(t, r, func() { marked = int(r.engine.Bitmap(bravo).Count()) })
			if uint64(marked) != store.BitmapBits() {
				t.Fatalf("%d of %d blocks marked for bravo in memory, want every one", marked, store.BitmapBits())
			}

			dev.mu.Lock()
			images := append(dev.images, nil) // nil: the device as it is now
			dev.mu.Unlock()
			tied := false
			for i, img := range images {
				if img == nil {
					img = make([]byte, metaSize)
					if _, err := dev.ReadAt(img, 0); err != nil && err != io.EOF {
						t.Fatal(err)
					}
				}
				st, err := meta.Open(memImage(img), 0)
				if err != nil {
					t.Fatalf("image %d: %v", i, err)
				}
				words, err := st.ReadBitmap(int(bravo))
				if err != nil {
					t.Fatalf("image %d: %v", i, err)
				}
				set := 0
				for _, w := range words {
					set += bits.OnesCount64(w)
				}
				id := st.Superblock().BitmapUUID[bravo]
				tied = tied || id != 0
				if id != 0 && uint64(set) != st.BitmapBits() {
					t.Fatalf("crash image %d of %d: the superblock ties bravo's bitmap to %x, but only %d of its %d blocks are marked on disk",
						i, len(images), id, set, st.BitmapBits())
				}
			}
			if !tied {
				t.Fatalf("no crash image has a bitmap id for bravo")
			}
		})
	}
}

// engineCall runs fn with the engine on the resource's loop, then
// performs what the engine asks for.
func engineCall(t *testing.T, r *resource, fn func()) {
	t.Helper()
	if err := r.call(func() error {
		fn()
		r.process()
		return r.failed
	}); err != nil {
		t.Fatal(err)
	}
}
