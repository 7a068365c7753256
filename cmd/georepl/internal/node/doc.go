// Package node is georepl's driver: it wires the I/O-free engine (package
// core) to real disks (kmod), real connections (transports), metadata
// (core/meta), the NBD export (kmod/nbd) and the admin socket. It holds the
// goroutines; the engine holds the decisions.
//
// A Daemon runs one node (one name in the configuration) for every resource
// that names it. Options are its ties to the world (transports, block
// devices), which a test replaces to run whole nodes in one process.
//
// # Execution model
//
// No goroutine owns a resource's core.Engine. It sits under a mutex
// (resource.emu), and whichever goroutine has an event for it takes the
// mutex, hands the event to the engine and performs the Ready itself:
//
//   - an application request: the goroutine that read it from the NBD
//     connection (resource.start; before it waits, another takes over
//     reading);
//   - a received frame: the link's reader of that channel (resource.receive);
//   - a finished local operation: the goroutine that performed it
//     (resource.performOp);
//   - administrative calls, links coming up and going down, and ticks
//     (the engine's every 20 ms, bitmap pages every second, status every
//     250 ms): the resource's loop goroutine (resource.loop), which is
//     only one of these holders, not the engine's owner;
//   - an I/O error the driver saw outside the engine's operations (a read
//     served from the disk, an activity-log write): the goroutine that saw
//     it (detachDisk); a failed flush of the disk outside them: a
//     goroutine of its own (reportSyncFailures).
//
// With the mutex held, the holder calls resource.process: it makes what
// each Ready asks durable first (Persist, bitmap pages), drops the
// connections it names, queues its frames on the links (without waking
// their writers where the link writes inline), collects its local
// operations, and moves the completed requests to a list that
// unlockEngine calls once the mutex is released (a completion writes an
// NBD reply, never under the mutex). Then, unlocked, the holder hands what
// is left to the executor (executor.carryOut), which decides what the
// holder does itself (write a peer's frames, perform the last local
// operation and go on with what that made ready) and what it hands off (to
// a link's writer goroutine, to a new goroutine per operation), as far as
// that costs no wake-up of another goroutine; see executor for the rules
// and docs/architecture.md, "Engine and driver", for why.
//
// Other goroutines never touch the engine: per link, a writer and a reader
// per channel and a monitor (pings, timeout); per resource, a dial loop
// towards each peer it dials and the activity log's writer (transactions,
// and flushes that retire extents); per daemon, the acceptors of its
// listeners. Locks are taken in the order emu, then resource.mu (the
// fields other goroutines read); the activity log, the undo guard and the
// flush gate (storage.SyncGate) have locks of their own, which a holder of emu
// may take, and none of which is held while emu is taken.
//
// # Where things are
//
// resource.go runs a resource (engine, Ready, links); executor.go carries
// out the work of a Ready; link.go and handshake.go are the connections;
// device.go the device the export serves; verbs.go the administrative
// operations; payloads.go the pool of write payloads; storage.go attaches
// the disk (package storage opens and recovers it); alwriter.go the
// activity log's writer and waits (its table is storage.ALTable);
// consistentresync.go the resource's part of the resync undo log (the
// guard is storage.UndoGuard); flushreport.go hands the flush gate's
// failures to the engine; status.go what status shows, statustext.go how
// it is printed, events.go the events.
package node
