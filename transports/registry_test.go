package transports_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/georepl/georepl/transports"
)

// nopTransport is a Transport that refuses everything; the registry only
// stores it.
type nopTransport struct{}

var errNop = errors.New("nop transport")

func (nopTransport) Dial(context.Context, string, transports.Options) (transports.Conn, error) {
	return nil, errNop
}

func (nopTransport) Listen(string, transports.Options) (transports.Listener, error) {
	return nil, errNop
}

// The registry is global: each test registers names of its own.

func TestRegisterThenLookup(t *testing.T) {
	tr := nopTransport{}
	transports.Register("registry-test-lookup", tr)
	got, err := transports.Lookup("registry-test-lookup")
	if err != nil {
		t.Fatalf("Lookup: %v", err)
	}
	if got != transports.Transport(tr) {
		t.Errorf("Lookup returned %v, want the registered transport", got)
	}
}

func TestRegisterPanicsOnProgrammingErrors(t *testing.T) {
	transports.Register("registry-test-dup", nopTransport{})
	cases := []struct {
		name string
		tr   transports.Transport
		want string
	}{
		{"registry-test-dup", nopTransport{}, "twice"},
		{"", nopTransport{}, "empty name"},
		{"registry-test-nil", nil, "nil transport"},
	}
	for _, tc := range cases {
		func() {
			defer func() {
				r := recover()
				if msg, _ := r.(string); !strings.Contains(msg, tc.want) {
					t.Errorf("Register(%q, %v) panicked with %v, want a message containing %q", tc.name, tc.tr, r, tc.want)
				}
			}()
			transports.Register(tc.name, tc.tr)
		}()
	}
}

func TestLookupUnknownListsRegistered(t *testing.T) {
	transports.Register("registry-test-known-a", nopTransport{})
	transports.Register("registry-test-known-b", nopTransport{})
	_, err := transports.Lookup("registry-test-typo")
	if !errors.Is(err, transports.ErrUnknownTransport) {
		t.Fatalf("Lookup of an unknown name: %v, want ErrUnknownTransport", err)
	}
	for _, want := range []string{`"registry-test-typo"`, "registry-test-known-a", "registry-test-known-b"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
	names := transports.Names()
	for i := 1; i < len(names); i++ {
		if names[i-1] >= names[i] {
			t.Errorf("Names() = %v, not sorted", names)
		}
	}
}
