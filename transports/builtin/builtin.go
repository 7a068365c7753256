// Package builtin lists, in one place, every transport compiled into
// georepl. A program calls Register once at start-up, before it looks
// transports up by the names its resource files use:
//
//	builtin.Register()
//	tr, err := transports.Lookup(cfg.Transport) // "tcp" or "quic"
//
// The in-memory transport (transports/mem) is for tests and is not listed.
package builtin

import (
	"sync"

	"github.com/georepl/georepl/transports"
	"github.com/georepl/georepl/transports/quic"
	"github.com/georepl/georepl/transports/tcp"
)

var registerOnce sync.Once

// Names lists the built-in transports.
func Names() []string { return []string{"tcp", "quic"} }

// Register registers every built-in transport under its name: "tcp" and
// "quic". Calling it again does nothing, so that several packages may
// call it. It panics if another package already registered one of those
// names.
func Register() {
	registerOnce.Do(func() {
		transports.Register("tcp", tcp.New())
		transports.Register("quic", quic.New())
	})
}
