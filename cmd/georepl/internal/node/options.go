package node

import (
	"github.com/georepl/georepl/cmd/georepl/internal/failover"
	"github.com/georepl/georepl/cmd/georepl/internal/storage"
	"github.com/georepl/georepl/configs"
	"github.com/georepl/georepl/kmod"
	"github.com/georepl/georepl/transports"
)

// Options are a node's ties to the world outside its process: where its
// connections and its disks come from. The zero value is the real world
// (the daemon's): transports from the registry, disks and metadata files
// opened with kmod.OpenBacking. A test that runs whole nodes in one process
// (package sim) passes simulated ones.
//
// There is no clock option: the node reads time only through package time
// (time.Now, timers, tickers, context deadlines), which a testing/synctest
// bubble replaces with its fake clock, and the engine is told the time
// through Engine.Tick and core.Config.Clock, both fed from package time.
type Options struct {
	// Transports finds the transport a connection's net.transport names;
	// nil means transports.Lookup.
	Transports func(name string) (transports.Transport, error)
	// OpenDevice opens a backing disk or an external metadata file by the
	// path the configuration names; nil means kmod.OpenBacking. The node
	// closes what it opened when the resource goes down. (The resync undo
	// log, a file the node creates and resizes itself, is always opened
	// with kmod.)
	OpenDevice func(path string) (Device, error)
	// ReadConfig reads the configuration files again, for the admin
	// verb adjust (and SIGHUP); nil when the daemon has none to read.
	ReadConfig func() (*configs.Config, error)
	// Consensus is the network of this node's voter of a resource's
	// failover log at addr (automatic failover); nil means TCP on addr
	// (failover.ListenTCP). Tests pass a failover.MemHub's.
	Consensus func(resource, node, addr string) (failover.Network, error)
	// BufferBudget, if set, is told the sum of max_buffer over the
	// node's connections (bufferBudget) whenever it may have changed: at
	// NewDaemon and after an adjust. The daemon bounds the Go runtime's
	// memory by it; tests that run several nodes in one process leave it
	// nil.
	BufferBudget func(bytes int64)
	// TLSRekeyRecords is how many TLS records a transport connection of
	// a tcp connection with TLS carries before the dialing node renews
	// its keys (rekey.go); 0 means 2^23. Tests make it small.
	TLSRekeyRecords uint64
}

// Device is a backing disk or an external metadata file: kmod.Backing, or
// a stand-in with the same contract (kmod.Store).
type Device = storage.Device

func (o Options) transport(name string) (transports.Transport, error) {
	if o.Transports != nil {
		return o.Transports(name)
	}
	return transports.Lookup(name)
}

func (o Options) openDevice(path string) (Device, error) {
	if o.OpenDevice != nil {
		return o.OpenDevice(path)
	}
	return kmod.OpenBacking(path)
}
