package failover

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// Network carries a member's consensus traffic and the proposals a
// follower forwards to the leader: raft accepts proposals on the leader
// only, and every member reports into the log.
type Network interface {
	// Transport is raft's transport.
	Transport() raft.Transport
	// Forward sends a proposal (a log entry) to the member at addr and
	// returns its answer.
	Forward(ctx context.Context, addr string, proposal []byte) ([]byte, error)
	// Serve sets what answers the proposals forwarded to this member.
	Serve(handle func(proposal []byte) []byte)
	// Close stops both.
	Close() error
}

// Tags of the first byte of a connection to a TCPNetwork.
const (
	tagRaft    = 'R'
	tagForward = 'F'
)

// maxProposal bounds a forwarded proposal or answer: they are small JSON
// documents.
const maxProposal = 64 << 10

// TCPNetwork is the daemon's Network: raft's RPCs and forwarded proposals
// on one TCP address (the node's failover address), told apart by the
// first byte of each connection.
type TCPNetwork struct {
	ln        net.Listener
	advertise net.Addr
	raftConns chan net.Conn
	closed    chan struct{}
	closeOnce sync.Once
	handle    atomic.Pointer[func([]byte) []byte]
	trans     *raft.NetworkTransport
	timeout   time.Duration
}

// ListenTCP listens on addr (HOST:PORT, the address the other voters
// dial). timeout bounds each consensus RPC and forwarded proposal.
func ListenTCP(addr string, timeout time.Duration, logOutput io.Writer) (*TCPNetwork, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("failover: listening on %s: %w", addr, err)
	}
	adv, err := net.ResolveTCPAddr("tcp", addr)
	if err != nil || adv.IP == nil || adv.IP.IsUnspecified() {
		ln.Close()
		return nil, fmt.Errorf("failover: address %s is not one the other voters can dial", addr)
	}
	if adv.Port == 0 {
		adv = ln.Addr().(*net.TCPAddr) // tests: a port of the system's choice
	}
	n := &TCPNetwork{ln: ln, advertise: adv, raftConns: make(chan net.Conn), closed: make(chan struct{}), timeout: timeout}
	if logOutput == nil {
		logOutput = io.Discard
	}
	n.trans = raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream:  tcpLayer{n},
		MaxPool: 3,
		Timeout: timeout,
		Logger:  hclog.New(&hclog.LoggerOptions{Name: "raft-net", Output: logOutput, Level: hclog.DefaultLevel}),
		// No pipelined replication: raft's deadlocks when a follower
		// rejects an append while entries keep coming (the sender then
		// waits forever on the transport, and so does Shutdown). The
		// log carries a few small entries a second: one append at a
		// time per follower loses nothing.
		MaxRPCsInFlight: 1,
	})
	go n.acceptLoop()
	return n, nil
}

func (n *TCPNetwork) Transport() raft.Transport { return n.trans }

// Addr is the address the other voters dial.
func (n *TCPNetwork) Addr() string { return n.advertise.String() }

func (n *TCPNetwork) Serve(handle func([]byte) []byte) { n.handle.Store(&handle) }

func (n *TCPNetwork) Close() error {
	err := n.trans.Close()
	n.closeOnce.Do(func() {
		close(n.closed)
		n.ln.Close()
	})
	return err
}

func (n *TCPNetwork) acceptLoop() {
	for {
		c, err := n.ln.Accept()
		if err != nil {
			return
		}
		go n.sort(c)
	}
}

// sort reads a connection's tag and hands it to raft or answers its
// forwarded proposal.
func (n *TCPNetwork) sort(c net.Conn) {
	_ = c.SetReadDeadline(time.Now().Add(n.timeout))
	var tag [1]byte
	if _, err := io.ReadFull(c, tag[:]); err != nil {
		c.Close()
		return
	}
	_ = c.SetReadDeadline(time.Time{})
	switch tag[0] {
	case tagRaft:
		select {
		case n.raftConns <- c:
		case <-n.closed:
			c.Close()
		}
	case tagForward:
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(n.timeout))
		proposal, err := readMessage(c)
		h := n.handle.Load()
		if err != nil || h == nil {
			return
		}
		_ = writeMessage(c, (*h)(proposal))
	default:
		c.Close()
	}
}

func (n *TCPNetwork) Forward(ctx context.Context, addr string, proposal []byte) ([]byte, error) {
	d := net.Dialer{Timeout: n.timeout}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	deadline := time.Now().Add(n.timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	_ = c.SetDeadline(deadline)
	w := bufio.NewWriter(c)
	_ = w.WriteByte(tagForward)
	if err := writeMessage(w, proposal); err != nil {
		return nil, err
	}
	if err := w.Flush(); err != nil {
		return nil, err
	}
	return readMessage(c)
}

func writeMessage(w io.Writer, b []byte) error {
	var hdr [4]byte
	binary.BigEndian.PutUint32(hdr[:], uint32(len(b)))
	if _, err := w.Write(hdr[:]); err != nil {
		return err
	}
	_, err := w.Write(b)
	return err
}

func readMessage(r io.Reader) ([]byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	size := binary.BigEndian.Uint32(hdr[:])
	if size > maxProposal {
		return nil, fmt.Errorf("failover: forwarded message of %d bytes, at most %d", size, maxProposal)
	}
	b := make([]byte, size)
	_, err := io.ReadFull(r, b)
	return b, err
}

// tcpLayer is raft's StreamLayer over a TCPNetwork: the connections
// tagged for raft.
type tcpLayer struct{ n *TCPNetwork }

func (l tcpLayer) Accept() (net.Conn, error) {
	select {
	case c := <-l.n.raftConns:
		return c, nil
	case <-l.n.closed:
		return nil, net.ErrClosed
	}
}

func (l tcpLayer) Close() error {
	l.n.closeOnce.Do(func() {
		close(l.n.closed)
		l.n.ln.Close()
	})
	return nil
}

func (l tcpLayer) Addr() net.Addr { return l.n.advertise }

func (l tcpLayer) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", string(addr), timeout)
	if err != nil {
		return nil, err
	}
	if _, err := c.Write([]byte{tagRaft}); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// MemHub connects in-process members (tests): raft's in-memory transport
// and forwarded proposals, which a test cuts apart and heals.
type MemHub struct {
	mu    sync.Mutex
	nets  map[string]*memNetwork
	apart map[string]bool // isolated addresses
}

// NewMemHub is an empty hub.
func NewMemHub() *MemHub {
	return &MemHub{nets: map[string]*memNetwork{}, apart: map[string]bool{}}
}

// Join is the Network of a member at addr, connected to every other one
// unless isolated.
func (h *MemHub) Join(addr string) Network {
	_, tr := raft.NewInmemTransport(raft.ServerAddress(addr))
	n := &memNetwork{hub: h, addr: addr, trans: tr}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.nets[addr] = n
	h.rewire()
	return n
}

// Isolate cuts the member at addr off from every other, both ways.
func (h *MemHub) Isolate(addr string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.apart[addr] = true
	h.rewire()
}

// Heal connects every member again.
func (h *MemHub) Heal() {
	h.mu.Lock()
	defer h.mu.Unlock()
	clear(h.apart)
	h.rewire()
}

// rewire connects every pair of members not isolated and disconnects
// the others, leaving connected pairs alone.
func (h *MemHub) rewire() {
	for a, na := range h.nets {
		for b, nb := range h.nets {
			switch {
			case a == b:
			case h.apart[a] || h.apart[b]:
				na.trans.Disconnect(raft.ServerAddress(b))
			default:
				na.trans.Connect(raft.ServerAddress(b), nb.trans)
			}
		}
	}
}

type memNetwork struct {
	hub    *MemHub
	addr   string
	trans  *raft.InmemTransport
	handle atomic.Pointer[func([]byte) []byte]
}

func (n *memNetwork) Transport() raft.Transport        { return unpipelined{n.trans} }
func (n *memNetwork) Serve(handle func([]byte) []byte) { n.handle.Store(&handle) }

func (n *memNetwork) Close() error {
	n.hub.mu.Lock()
	defer n.hub.mu.Unlock()
	delete(n.hub.nets, n.addr)
	for _, o := range n.hub.nets {
		o.trans.Disconnect(raft.ServerAddress(n.addr))
	}
	return n.trans.Close()
}

func (n *memNetwork) Forward(ctx context.Context, addr string, proposal []byte) ([]byte, error) {
	n.hub.mu.Lock()
	to := n.hub.nets[addr]
	cut := n.hub.apart[addr] || n.hub.apart[n.addr]
	n.hub.mu.Unlock()
	if to == nil || cut {
		return nil, fmt.Errorf("failover: %s cannot reach %s", n.addr, addr)
	}
	h := to.handle.Load()
	if h == nil {
		return nil, errors.New("failover: the member at " + addr + " serves no proposals yet")
	}
	return (*h)(proposal), ctx.Err()
}

// unpipelined is raft's in-memory transport without pipelined
// replication, like the daemon's (ListenTCP).
type unpipelined struct{ *raft.InmemTransport }

func (unpipelined) AppendEntriesPipeline(raft.ServerID, raft.ServerAddress) (raft.AppendPipeline, error) {
	return nil, raft.ErrPipelineReplicationNotSupported
}
