package transports

import (
	"net"
	"sync"
)

// Admission bounds the connections held before their peer has proved who
// it is (a listener's half-open connections, a handshake in progress):
// at most total in all, and at most perSource from one source address.
// A flood from a few addresses can then exhaust neither memory nor
// descriptors, nor keep out a peer that connects from another address:
// when every slot is taken, a new connection evicts the oldest one of the
// source that holds the most slots.
//
// An Admission is safe for concurrent use.
type Admission struct {
	total, perSource int

	mu sync.Mutex
	// bySource holds each source's admitted connections, oldest first.
	bySource map[string][]*Admitted
	n        int
}

// Admitted is a connection that holds a slot of an Admission.
type Admitted struct {
	a      *Admission
	source string
	evict  func()
	gone   bool // released or evicted; under a.mu
}

// NewAdmission returns an Admission of total slots, perSource of which at
// most one source may hold. It panics unless 0 < perSource <= total.
func NewAdmission(total, perSource int) *Admission {
	if perSource <= 0 || perSource > total {
		panic("transports: NewAdmission needs 0 < perSource <= total")
	}
	return &Admission{total: total, perSource: perSource, bySource: map[string][]*Admitted{}}
}

// Admit takes a slot for a connection from source (see Source). When
// every slot is taken, it first evicts the oldest connection of the
// source that holds the most: it calls that connection's evict, once,
// on the caller's goroutine, after its slot was freed. evict must close
// the connection it was given with, and must not call Admit.
//
// Admit returns nil, and takes no slot, when source already holds
// perSource slots: the caller refuses the connection.
func (a *Admission) Admit(source string, evict func()) *Admitted {
	a.mu.Lock()
	if len(a.bySource[source]) >= a.perSource {
		a.mu.Unlock()
		return nil
	}
	var victim *Admitted
	if a.n >= a.total {
		victim = a.oldestOfLargest()
		a.remove(victim)
	}
	s := &Admitted{a: a, source: source, evict: evict}
	a.bySource[source] = append(a.bySource[source], s)
	a.n++
	a.mu.Unlock()
	if victim != nil {
		victim.evict()
	}
	return s
}

// Release gives the slot back: the connection's peer is authenticated,
// or the connection is closed. Release after eviction, or a second
// Release, does nothing.
func (s *Admitted) Release() {
	s.a.mu.Lock()
	defer s.a.mu.Unlock()
	if !s.gone {
		s.a.remove(s)
	}
}

// oldestOfLargest returns the oldest connection of a source that holds
// the most slots. Under a.mu, with at least one slot taken.
func (a *Admission) oldestOfLargest() *Admitted {
	var largest []*Admitted
	for _, held := range a.bySource {
		if len(held) > len(largest) {
			largest = held
		}
	}
	return largest[0]
}

// remove frees s's slot. Under a.mu.
func (a *Admission) remove(s *Admitted) {
	held := a.bySource[s.source]
	for i, h := range held {
		if h == s {
			held = append(held[:i], held[i+1:]...)
			break
		}
	}
	if len(held) == 0 {
		delete(a.bySource, s.source)
	} else {
		a.bySource[s.source] = held
	}
	s.gone = true
	a.n--
}

// Source is the source address of a connection from addr, as Admission
// counts them: its IP address (without the port), or the whole address
// when it has no IP.
func Source(addr net.Addr) string {
	switch a := addr.(type) {
	case *net.TCPAddr:
		return a.IP.String()
	case *net.UDPAddr:
		return a.IP.String()
	}
	if addr == nil {
		return ""
	}
	if host, _, err := net.SplitHostPort(addr.String()); err == nil {
		return host
	}
	return addr.String()
}
