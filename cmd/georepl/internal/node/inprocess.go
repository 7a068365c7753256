package node

import (
	"fmt"

	"github.com/georepl/georepl/kmod/nbd"
)

// LocalDevice is resource name as the NBD export serves it, for a program
// that runs the node in its own process (the simulator): writes, flushes
// and FUA go through the activity log and the engine to every peer,
// exactly as an NBD client's do. Write payloads must come from the
// device's WriteBuffer (nbd.WriteBuffers). It fails unless the resource is
// up; after the resource goes down, requests fail.
func (d *Daemon) LocalDevice(name string) (nbd.Device, error) {
	r, err := d.resource(name)
	if err != nil {
		return nil, err
	}
	if !r.isUp() {
		return nil, fmt.Errorf("resource %s is not up on %s", name, d.nodeName)
	}
	return device{r}, nil
}

// StatusNow is Status as of now rather than as of the last periodic
// snapshot (every 250 ms): each resource that is up publishes its status
// on its loop goroutine first, so the result reflects every event the
// engine has taken. It waits for the loops, which Status never does.
func (d *Daemon) StatusNow(name string) ([]*ResourceStatus, error) {
	names, err := d.namesFor(name)
	if err != nil {
		return nil, err
	}
	for _, n := range names {
		r := d.lookup(n)
		if r != nil && r.isUp() {
			// A resource going down meanwhile publishes by itself.
			_ = r.call(func() error {
				r.publishStatus()
				return nil
			})
		}
	}
	return d.Status(name)
}
