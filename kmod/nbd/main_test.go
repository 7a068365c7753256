package nbd

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if a test leaves goroutines behind: every
// connection, request and reader goroutine must end with its server or
// client.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
