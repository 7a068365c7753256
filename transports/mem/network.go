package mem

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/georepl/georepl/transports"
)

// PipeCapacity is how many bytes one direction of one channel buffers
// before its writer blocks.
const PipeCapacity = 256 << 10

var (
	// ErrConnRefused is wrapped by Dial's error when nothing listens on
	// the address.
	ErrConnRefused = errors.New("connection refused")
	// ErrAddrInUse is wrapped by Listen's error when the address already
	// has a listener.
	ErrAddrInUse = errors.New("address already in use")
	// ErrBroken is returned by every read and write of a connection cut
	// by Network.Break.
	ErrBroken = errors.New("mem: connection broken")
)

// Addr is the address of an in-memory endpoint.
type Addr string

// Network returns "mem".
func (Addr) Network() string { return "mem" }

// String returns the endpoint's name.
func (a Addr) String() string { return string(a) }

// Network is a set of in-memory endpoints. It implements
// transports.Transport; the zero value is not usable, call NewNetwork. A
// Network is safe for concurrent use.
type Network struct {
	mu        sync.Mutex
	listeners map[string]*listener
	conns     map[*conn]struct{} // established, not yet closed
	dials     int                // numbers dialers' local addresses
}

// NewNetwork returns an empty network.
func NewNetwork() *Network {
	return &Network{
		listeners: map[string]*listener{},
		conns:     map[*conn]struct{}{},
	}
}

var _ transports.Transport = (*Network)(nil)

// Listen starts listening on the name addr, which must not be empty nor
// already listened on (ErrAddrInUse). opts is ignored: there is nothing to
// keep alive in memory.
func (n *Network) Listen(addr string, _ transports.Options) (transports.Listener, error) {
	if addr == "" {
		return nil, errors.New("mem: listen: empty address")
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if _, taken := n.listeners[addr]; taken {
		return nil, fmt.Errorf("mem: listen %q: %w", addr, ErrAddrInUse)
	}
	l := &listener{network: n, addr: Addr(addr), closed: make(chan struct{}), arrived: make(chan struct{}, 1)}
	n.listeners[addr] = l
	return l, nil
}

// Dial connects to the listener at addr. The connection is set up at once
// and queued for the listener's Accept; Dial fails with ErrConnRefused if
// nothing listens there, and with ctx's error if ctx is already done.
func (n *Network) Dial(ctx context.Context, addr string, _ transports.Options) (transports.Conn, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("mem: dial %q: %w", addr, err)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	l, ok := n.listeners[addr]
	if !ok {
		return nil, fmt.Errorf("mem: dial %q: %w", addr, ErrConnRefused)
	}
	n.dials++
	dialer, acceptor := newConnPair(n, Addr(fmt.Sprintf("dial-%d", n.dials)), l.addr)
	if !l.enqueue(acceptor) {
		// l is closing and about to leave the map.
		return nil, fmt.Errorf("mem: dial %q: %w", addr, ErrConnRefused)
	}
	n.conns[dialer] = struct{}{}
	n.conns[acceptor] = struct{}{}
	return dialer, nil
}

// Break cuts every established connection that has an end at addr: all
// pending and future reads and writes of both ends fail with ErrBroken,
// without delivering buffered bytes. Listeners are not affected. Break
// returns how many connections it cut (each counted once).
func (n *Network) Break(addr string) int {
	n.mu.Lock()
	var cut []*conn
	for c := range n.conns {
		if c.local.String() == addr || c.remote.String() == addr {
			cut = append(cut, c)
		}
	}
	n.mu.Unlock()
	broken := 0
	for _, c := range cut {
		if c.breakLink() {
			broken++
		}
	}
	return broken
}

// forget drops c from the set Break searches.
func (n *Network) forget(c *conn) {
	n.mu.Lock()
	defer n.mu.Unlock()
	delete(n.conns, c)
}

// unlisten frees l's address for another Listen.
func (n *Network) unlisten(l *listener) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.listeners[l.addr.String()] == l {
		delete(n.listeners, l.addr.String())
	}
}
