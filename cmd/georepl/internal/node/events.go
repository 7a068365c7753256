package node

import (
	"sync"
	"time"
)

// Event is one state change, as `georepl events` streams it (JSON lines).
type Event struct {
	Time     time.Time `json:"time"`
	Resource string    `json:"resource"`
	Node     string    `json:"node"`
	Peer     string    `json:"peer,omitempty"`
	What     string    `json:"what"`
	Old      string    `json:"old,omitempty"`
	New      string    `json:"new,omitempty"`
	Detail   string    `json:"detail,omitempty"`
}

// broadcaster fans events out to subscribers. A subscriber that does not
// keep up loses events rather than stalling replication; it is told how
// many it lost.
type broadcaster struct {
	mu   sync.Mutex
	subs map[chan Event]struct{}
}

func newBroadcaster() *broadcaster { return &broadcaster{subs: map[chan Event]struct{}{}} }

func (b *broadcaster) subscribe() chan Event {
	ch := make(chan Event, 1024)
	b.mu.Lock()
	b.subs[ch] = struct{}{}
	b.mu.Unlock()
	return ch
}

func (b *broadcaster) unsubscribe(ch chan Event) {
	b.mu.Lock()
	delete(b.subs, ch)
	b.mu.Unlock()
}

func (b *broadcaster) publish(ev Event) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for ch := range b.subs {
		select {
		case ch <- ev:
		default:
			select {
			case ch <- Event{Time: ev.Time, Resource: ev.Resource, Node: ev.Node, What: "overflow", Detail: "events were lost: the reader is too slow"}:
			default:
			}
		}
	}
}

// Subscribe streams events until ctx ends.
func (d *Daemon) Subscribe() (events <-chan Event, cancel func()) {
	ch := d.events.subscribe()
	return ch, func() { d.events.unsubscribe(ch) }
}
