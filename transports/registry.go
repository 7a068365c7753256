package transports

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
)

// ErrUnknownTransport is wrapped by Lookup's error when no transport is
// registered under the name asked for.
var ErrUnknownTransport = errors.New("unknown transport")

var (
	registryMu sync.RWMutex
	registry   = map[string]Transport{}
)

// Register makes a transport available by name. It panics if name is empty,
// t is nil, or name is already registered: two transports with one name is a
// programming error, as in database/sql.
func Register(name string, t Transport) {
	registryMu.Lock()
	defer registryMu.Unlock()
	if name == "" || t == nil {
		panic("transports: Register with empty name or nil transport")
	}
	if _, dup := registry[name]; dup {
		panic(fmt.Sprintf("transports: Register called twice for %q", name))
	}
	registry[name] = t
}

// Lookup returns the transport registered as name. For an unknown name it
// returns an error wrapping ErrUnknownTransport that lists the registered
// names, so that a typo in a resource file is easy to fix.
func Lookup(name string) (Transport, error) {
	registryMu.RLock()
	defer registryMu.RUnlock()
	if t, ok := registry[name]; ok {
		return t, nil
	}
	return nil, fmt.Errorf("transports: %w %q (registered: %s)", ErrUnknownTransport, name, strings.Join(namesLocked(), ", "))
}

// Names lists the registered transports, sorted.
func Names() []string {
	registryMu.RLock()
	defer registryMu.RUnlock()
	return namesLocked()
}

func namesLocked() []string {
	names := make([]string, 0, len(registry))
	for n := range registry {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}
