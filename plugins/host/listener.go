package host

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/georepl/georepl/plugins/internal/control"
	"github.com/georepl/georepl/transports"
)

// listener is a listener in the plugin process. When the process dies it
// listens again, on the address it was bound to, in the restarted one: the
// daemon's accept loop never notices.
type listener struct {
	p    *Plugin
	opts transports.Options
	addr control.Addr // bound address, reused after a restart

	mu        sync.Mutex
	gen       *generation // the process listening; nil between two
	id        uint64
	closeOnce sync.Once
	closed    chan struct{}
}

// acceptRetry paces Accept after an error that concerns one incoming
// connection only, so that a plugin failing every time does not spin.
const acceptRetry = 50 * time.Millisecond

func (l *listener) errClosed() error {
	return fmt.Errorf("plugin %q: accept on %s: %w", l.p.cfg.Name, l.addr, net.ErrClosed)
}

// Accept returns the next connection. Errors that concern one incoming
// connection (the plugin failed to set it up or to hand it over) are
// logged and Accept goes on: only ctx's end and Close end it.
func (l *listener) Accept(ctx context.Context) (transports.Conn, error) {
	// The control call ends when Close is called, even if the plugin
	// hangs.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-l.closed:
			cancel()
		case <-ctx.Done():
		}
	}()
	for {
		select {
		case <-l.closed:
			return nil, l.errClosed()
		default:
		}
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("plugin %q: accept on %s: %w", l.p.cfg.Name, l.addr, err)
		}
		g, id, err := l.listening(ctx)
		if err != nil {
			continue // ctx or Close, seen above
		}
		c, err := l.acceptOn(ctx, g, id)
		if err == nil {
			return c, nil
		}
		select {
		case <-g.ctl.Done():
			continue // the process died: listen again in the next
		case <-l.closed:
			continue
		default:
		}
		if ctx.Err() != nil {
			continue
		}
		if errors.Is(err, net.ErrClosed) {
			// The plugin's listener closed without Close: listen again.
			l.mu.Lock()
			if l.gen == g {
				l.gen = nil
			}
			l.mu.Unlock()
		}
		l.p.log.Warn("accepting a connection failed", "address", l.addr, "err", err)
		select {
		case <-time.After(acceptRetry):
		case <-ctx.Done():
		}
	}
}

func (l *listener) acceptOn(ctx context.Context, g *generation, id uint64) (transports.Conn, error) {
	hid, ch := g.handoff.reserve()
	reply, err := g.ctl.Accept(ctx, &control.AcceptRequest{Listener: id, Handoff: hid, DataPlanes: l.p.cfg.DataPlanes})
	if err != nil {
		g.handoff.cancel(hid, ch)
		return nil, control.FromStatus(ctx, err)
	}
	return l.p.takeConn(g, hid, ch, reply)
}

// listening returns the process that listens for l and the plugin's id of
// the listener, listening again first in a new process, waiting for one if
// the plugin is restarting. It fails only when ctx ends or l is closed.
func (l *listener) listening(ctx context.Context) (*generation, uint64, error) {
	for {
		l.mu.Lock()
		g, id := l.gen, l.id
		l.mu.Unlock()
		if g != nil {
			select {
			case <-g.ctl.Done():
			default:
				return g, id, nil
			}
		}
		g, changed, err := l.p.running()
		var retry <-chan time.Time
		if err == nil {
			reply, err := l.p.listenOn(g, l.addr.Str, l.opts)
			if err == nil {
				l.mu.Lock()
				l.gen, l.id = g, reply.Listener
				l.mu.Unlock()
				l.p.log.Info("listening again after the plugin restarted", "address", reply.Addr)
				continue
			}
			l.p.log.Warn("listening again failed", "address", l.addr, "err", err)
			retry = time.After(acceptRetry * 20)
			changed = nil
		}
		select {
		case <-changed:
		case <-retry:
		case <-l.closed:
			return nil, 0, net.ErrClosed
		case <-ctx.Done():
			return nil, 0, ctx.Err()
		}
	}
}

// Close stops listening in the plugin. A pending Accept returns an error
// wrapping net.ErrClosed.
func (l *listener) Close() error {
	var err error
	l.closeOnce.Do(func() {
		close(l.closed)
		l.mu.Lock()
		g, id := l.gen, l.id
		l.gen = nil
		l.mu.Unlock()
		if g == nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		defer cancel()
		if _, cerr := g.ctl.CloseListener(ctx, &control.CloseListenerRequest{Listener: id}); cerr != nil {
			select {
			case <-g.ctl.Done(): // the process is gone, and its listener with it
			default:
				err = fmt.Errorf("plugin %q: close listener on %s: %w", l.p.cfg.Name, l.addr, control.FromStatus(ctx, cerr))
			}
		}
	})
	return err
}

func (l *listener) Addr() net.Addr { return l.addr }
