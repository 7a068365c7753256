//go:build race

package main

// raceEnabled builds the daemons under test with the race detector too, so
// `go test -race` covers the daemon's goroutines, not only the test's.
const raceEnabled = true
