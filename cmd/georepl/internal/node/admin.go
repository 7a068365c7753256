package node

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/georepl/georepl/cmd/georepl/internal/admin"
)

// HandleAdmin answers one admin request (see package admin).
func (d *Daemon) HandleAdmin(ctx context.Context, req admin.Request, send func(admin.Reply) error) error {
	switch req.Verb {
	case "status":
		sts, err := d.Status(req.Resource)
		if err != nil {
			return err
		}
		data, err := json.Marshal(sts)
		if err != nil {
			return err
		}
		return send(admin.Reply{Data: data})
	case "events":
		events, cancel := d.Subscribe()
		defer cancel()
		// An empty reply first: every event from now on follows, so a
		// client may wait for it before it acts.
		if err := send(admin.Reply{}); err != nil {
			return nil
		}
		for {
			select {
			case <-ctx.Done():
				return nil
			case ev := <-events:
				if req.Resource != "" && ev.Resource != req.Resource {
					continue
				}
				data, err := json.Marshal(ev)
				if err != nil {
					return err
				}
				if err := send(admin.Reply{Data: data}); err != nil {
					return nil
				}
			}
		}
	case "adjust":
		lines, err := d.AdjustFromFiles(req.Resource, req.DryRun)
		if len(lines) > 0 {
			if serr := send(admin.Reply{Text: strings.Join(lines, "\n") + "\n"}); serr != nil {
				return serr
			}
		}
		return err
	}

	names := []string{req.Resource}
	if req.Resource == "" || req.Resource == "all" {
		if req.Verb != "up" && req.Verb != "down" {
			return fmt.Errorf("%s needs a resource name", req.Verb)
		}
		names = d.resourceNames()
	}
	for _, name := range names {
		r, err := d.resource(name)
		if err != nil {
			return err
		}
		switch req.Verb {
		case "up":
			err = r.Up()
		case "down":
			err = r.Down()
		case "primary":
			err = r.Primary(req.Force)
		case "secondary":
			err = r.Secondary()
		case "connect":
			err = r.Connect(req.Peer, req.DiscardMyData)
		case "disconnect":
			err = r.Disconnect(req.Peer)
		case "pause-sync", "resume-sync":
			err = r.PauseSync(req.Peer, req.Verb == "pause-sync")
		case "invalidate":
			err = r.Invalidate(req.Peer)
		case "invalidate-remote":
			err = r.InvalidateRemote(req.Peer)
		case "verify":
			err = r.Verify(req.Peer)
		case "detach":
			err = r.Detach()
		case "resize":
			var text string
			text, err = r.Resize(req.AssumeClean)
			if text != "" {
				if serr := send(admin.Reply{Text: text}); serr != nil && err == nil {
					err = serr
				}
			}
		case "dump-md":
			var buf bytes.Buffer
			if err = r.DumpMD(&buf, req.JSON); err == nil {
				err = send(admin.Reply{Text: buf.String()})
			}
		default:
			return fmt.Errorf("unknown admin verb %q", req.Verb)
		}
		if err != nil {
			return err
		}
	}
	return nil
}
