package core

import (
	"errors"
	"fmt"
)

// ErrLiveChange is wrapped by Reconfigure's error when a setting cannot
// change in the engine's current state.
var ErrLiveChange = errors.New("cannot change while connected")

// Reconfigure replaces the settings of peer pc.ID while the engine runs
// (the administrator's adjust). Every field takes effect from the next
// decision that reads it: MaxBuffer and OnCongestion at the next write
// (and a larger MaxBuffer releases the writes it held at once),
// ResyncRate and ResyncMinAppShare at the next Tick, Csums at the next
// resync, AfterSplitBrain and DiscardNode at the next handshake.
//
// Protocol changes only while the peer is not connected: a write in
// flight was sent under the old protocol (with or without a receive-ack
// request), so it could wait for an answer that never comes, or
// complete on a weaker one than the application was promised. Once
// disconnected no write is in flight to the peer (disconnect marked them
// out of sync) and the next connection uses the new protocol.
func (e *Engine) Reconfigure(pc PeerConfig) error {
	p := e.peer(pc.ID)
	if p == nil {
		return fmt.Errorf("core: no peer %d", pc.ID)
	}
	if err := pc.check(); err != nil {
		return err
	}
	if pc.Protocol != p.cfg.Protocol && p.conn == Connected {
		return fmt.Errorf("core: peer %d (%q): protocol %v to %v: %w", pc.ID, p.cfg.Name, p.cfg.Protocol, pc.Protocol, ErrLiveChange)
	}
	pc.Name = p.cfg.Name
	p.cfg = pc
	e.unblockQueued(p)
	e.finish()
	return nil
}
