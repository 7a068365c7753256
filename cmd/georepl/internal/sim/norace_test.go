//go:build !race

package sim

// defaultSchedules is TestSim's number of schedules when -sim.schedules is
// not given.
const defaultSchedules = 2000
