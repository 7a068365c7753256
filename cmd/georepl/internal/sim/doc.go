// Package sim runs whole georepl nodes (package node: engine, activity
// log, links, handshake, executor) in one process, under a simulated
// world that a seeded scheduler drives, and checks after every step that
// the promises of the admin guide hold. It is how interleavings no process
// test reaches (a write in flight while a link drops mid-switchover, a
// flush racing the activity log, a role change during a handshake) are
// found, and replayed.
//
// # The world
//
// Three nodes, alpha, bravo and charlie, share one resource. Each is a
// node.Daemon built with node.Options that hand it simulated transports
// and disks; its clock is the fake clock of a testing/synctest bubble
// (the node reads time only through package time, so it needs no clock
// seam).
//
//   - The network (net.go) carries whole wire frames. A frame waits in
//     flight until the scheduler delivers it, alone or with the frames
//     behind it (as one TCP segment brings several: a reader that finds
//     the next frame buffered hands its write to another goroutine); each
//     channel of each direction keeps its order, and the scheduler picks
//     the order across channels, directions and connections. It can cut a
//     connection between any two frames, the handshake's included, and
//     partition two nodes (dials fail until healed).
//   - The disks (disk.go) model a volatile write cache. A completed write
//     is visible at once and durable only once a flush issued after it
//     completed; a power loss keeps, for each 4 KiB page, any one of the
//     versions it went through since it was last durable; a process
//     crash keeps everything. Every read, write and flush of the data
//     disk (but the first attach's, on a disk nothing was written to)
//     waits until the scheduler completes it, and not before its
//     latency passed (none for most reads and writes, some milliseconds
//     for a few, and for every flush); the metadata file's complete at
//     once (the node performs them holding locks, and synctest sees a
//     goroutine waiting for a lock as running).
//   - A process crash or power loss fences the incarnation: its disk
//     handles fail, its connections are cut, its daemon is closed in the
//     background; a restart is a new daemon on the same disks.
//
// After every action the scheduler calls synctest.Wait: every goroutine
// of the cluster runs until it waits for something only the scheduler
// gives (a frame, a disk operation, time). So a step is one event and
// everything that follows from it, and virtual time passes only when the
// scheduler sleeps (1 ms per step, and its own choices of more).
//
// # A schedule
//
// A seed draws the settings (protocol A, B or C per connection, disk
// flushes, resync_min_app_share, the number of steps; most schedules
// start with the nodes connected, some while they connect) and every
// choice:
// which frame to deliver, which disk operation to complete, application
// writes (tagged 4 KiB blocks, one or two, sometimes FUA) and flushes on
// the Primary, time passing, and faults: cutting a connection, a
// partition, a process crash or a power loss of any node, a planned
// switchover (demote, then promote another), a forced promotion of a
// node cut off from the Primary, pause-sync, invalidate, and in a third
// of the schedules an I/O error failing a read or write of a data disk
// (the node detaches it); and repairs: healing, restarts, reattaching a
// detached disk (down and up, as a crash and a restart), resume-sync, an
// operator's connect (offering --discard-my-data after a split brain),
// promotions. Faults strike a
// healthy cluster mostly. The application writes only on the last node
// promoted, never two writes to one block at once, and waits, after a
// promotion, until the writes the new Primary received before it are on
// its disk.
//
// A schedule ends with a settle: every fault is repaired, an operator
// promotes a node if there is no Primary and demotes extra ones, and the
// cluster runs until it is quiet (everyone Connected and Established,
// nothing out of sync, nothing in flight).
//
// # The checker
//
// The model (model.go) records what the application saw: every write's
// issue and completion on one logical clock, which flushes completed, and
// terms, one per promotion, whose lineage lists for every block the
// writes the Primary's data went through (its image when promoted, then
// its own writes). It holds, at every step:
//
//   - (a) a write that completed and was then made durable by a completed
//     flush or by FUA is held by every node it was durable on (the
//     Primary and the protocol C peers the flush waited for) when that
//     node is promoted without --force, whatever crashes or power losses
//     came between; and what the activity log is for: at every step,
//     every write a node's disk holds only in its volatile cache lies in
//     an extent of its durable activity log or is marked for every peer
//     (else a power loss would drop it and nothing would resynchronise
//     it), and after a power loss every block the loss changed is so
//     covered;
//   - (b) a write a protocol B or C peer acknowledged is held by that peer
//     when it is promoted, unless it crashed since;
//   - (c) the image of every node that reports UpToDate, Outdated or
//     Consistent is a state some Primary's data passed through: write-order
//     consistent with the lineage of some term (checker.Verify: no write
//     present while one that completed before it was issued is missing),
//     and holding no block written only in another branch (a split brain
//     merged). A node that lost power is exempt until a resync into it
//     completes: the admin guide promises a local disk's semantics there
//     (flushed writes, the rest in any combination);
//   - (d) after the settle, every node UpToDate and in sync with the
//     Primary holds the Primary's bytes;
//   - a node never sees its peer break the wire protocol, the cluster
//     settles once every fault is repaired, and no goroutine of a node is
//     left blocked when every node has stopped.
//
// (e), a split brain never merged without a policy or an operator's word,
// is (c)'s last clause: data of two branches in one image fits no lineage.
//
// # Driving it
//
// TestSim runs random schedules (2,000 by default, fifty under the race
// detector); a failure prints the seed and the command that replays it
// with a step trace:
//
//	go test ./cmd/georepl/internal/sim -run 'TestSim$' -sim.seed=245 -sim.trace
//
// -sim.logs adds the nodes' logs to the trace; -sim.schedules,
// -sim.first and -sim.duration choose how many schedules run;
// -sim.keepgoing reports every failing one and counts each class of
// violation. When a known bug hides others, -sim.ignore counts a class
// without stopping, and -sim.avoid steers the scheduler clear of a
// situation (see Run). A replay is deterministic up to the Go runtime's
// own choices (map order, select), which the scheduler's sorted choices
// make rare: a failing seed replays nearly always. A seed means a
// schedule only for one version of the scheduler: a change to its
// choices (weights, actions) plays other schedules from the same seeds.
//
// TestSimRegressions replays testdata/regressions.txt, the seeds that
// found bugs; re-derive them (a long -sim.keepgoing run lists seeds per
// class of violation) when the scheduler changes.
//
// Run is the entry point for other drivers; it must be called inside a
// synctest bubble.
package sim
