package builtin_test

import (
	"slices"
	"testing"

	"github.com/georepl/georepl/transports"
	"github.com/georepl/georepl/transports/builtin"
	"github.com/georepl/georepl/transports/quic"
	"github.com/georepl/georepl/transports/tcp"
)

func TestRegisterListsTCPAndQUICOnce(t *testing.T) {
	builtin.Register()
	builtin.Register() // must not panic on the duplicate names

	if got, want := transports.Names(), []string{"quic", "tcp"}; !slices.Equal(got, want) {
		t.Errorf("Names() = %v, want %v (mem must not be registered)", got, want)
	}
	tcpTransport, err := transports.Lookup("tcp")
	if _, ok := tcpTransport.(*tcp.Transport); !ok || err != nil {
		t.Errorf("Lookup(tcp) = %T, %v; want a *tcp.Transport", tcpTransport, err)
	}
	quicTransport, err := transports.Lookup("quic")
	if _, ok := quicTransport.(*quic.Transport); !ok || err != nil {
		t.Errorf("Lookup(quic) = %T, %v; want a *quic.Transport", quicTransport, err)
	}
}
