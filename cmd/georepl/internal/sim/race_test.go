//go:build race

package sim

// defaultSchedules is TestSim's number of schedules when -sim.schedules is
// not given: under the race detector a schedule costs several times more,
// and make sim runs the full number without it.
const defaultSchedules = 50
