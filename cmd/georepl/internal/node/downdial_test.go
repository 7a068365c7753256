package node

import (
	"context"
	"errors"
	"testing"

	"github.com/georepl/georepl/transports"
)

// stalledDialer is a transport whose dials never connect: each blocks
// until its context ends and reports why it ended on ended.
type stalledDialer struct {
	transports.Transport
	dialing chan struct{}
	ended   chan error
}

func (s stalledDialer) Dial(ctx context.Context, addr string, opts transports.Options) (transports.Conn, error) {
	select {
	case s.dialing <- struct{}{}:
	default:
	}
	<-ctx.Done()
	s.ended <- ctx.Err()
	return nil, ctx.Err()
}

// TestDownCancelsADial: taking a resource down while it dials a peer
// that does not answer ends the dial at once (its context is cancelled),
// rather than after the handshake timeout: down must not wait for it.
func TestDownCancelsADial(t *testing.T) {
	s := stalledDialer{dialing: make(chan struct{}, 1), ended: make(chan error, 8)}
	opts := Options{Transports: func(name string) (transports.Transport, error) {
		tr, err := transports.Lookup(name)
		if err != nil {
			return nil, err
		}
		return stalledDialer{Transport: tr, dialing: s.dialing, ended: s.ended}, nil
	}}
	_, r := upNodeWith(t, "pass-on", "alpha", opts, func(*resource) {})
	<-s.dialing
	if err := r.Down(); err != nil {
		t.Fatal(err)
	}
	for {
		select {
		case err := <-s.ended:
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("a dial pending when the resource went down ended with %v, not cancelled by the down", err)
			}
		default:
			return
		}
	}
}
