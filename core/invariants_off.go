//go:build !invariants

package core

// invariantState is empty without the invariants build tag.
type invariantState struct{}

// checkInvariants costs nothing without the invariants build tag; see
// invariants.go.
func (e *Engine) checkInvariants() {}

func (s *invariantState) readyTaken() {}
