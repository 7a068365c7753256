package node

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/georepl/georepl/core"
	"github.com/georepl/georepl/kmod/nbd"
)

// device is the resource as the NBD export serves it: writes go through
// the engine (and so to every peer), reads come from the local disk.
type device struct{ r *resource }

var (
	_ nbd.Device    = device{}
	_ nbd.MultiConn = device{}
)

func (d device) Size() uint64 { return d.r.st.dataSize }

// MultiConn: a flush goes through the engine, which flushes the whole local
// disk and barriers every peer, so it covers writes from every connection.
func (d device) MultiConn() bool { return true }

func (d device) ReadAt(ctx context.Context, p []byte, off uint64) error {
	n, err := d.r.st.data.ReadAt(p, int64(off))
	d.r.diskRead.Add(uint64(n))
	return err
}

func (d device) WriteAt(ctx context.Context, p []byte, off uint64, fua bool) error {
	return d.do(ctx, core.Request{Kind: core.ReqWrite, Offset: off, Length: uint64(len(p)), Data: p, FUA: fua})
}

func (d device) Flush(ctx context.Context) error {
	return d.do(ctx, core.Request{Kind: core.ReqFlush})
}

func (d device) Trim(ctx context.Context, off, length uint64) error {
	return d.do(ctx, core.Request{Kind: core.ReqTrim, Offset: off, Length: length})
}

func (d device) WriteZeroes(ctx context.Context, off, length uint64, fua bool) error {
	return d.do(ctx, core.Request{Kind: core.ReqZeroes, Offset: off, Length: length, FUA: fua})
}

func (d device) do(ctx context.Context, req core.Request) error {
	release, err := d.r.activate(ctx, req)
	if err != nil {
		return err // an I/O error to the client: the metadata disk is failing or the resource going down
	}
	defer release()
	err = d.r.submit(ctx, req)
	switch {
	case errors.Is(err, core.ErrNotPrimary):
		return fmt.Errorf("%w: %w", nbd.ErrReadOnly, d.r.notPrimaryError())
	case errors.Is(err, core.ErrOutOfRange):
		return fmt.Errorf("%w: %w", nbd.ErrOutOfRange, err)
	}
	return err
}

func (r *resource) notPrimaryError() error {
	return fmt.Errorf("resource %s is Secondary on node %s: writes are accepted only on the Primary (run `georepl primary %s` on the node that should take writes)", r.cfg.Name, r.self.Name, r.cfg.Name)
}

// startExport listens on the node's export address. The export stays up
// while the resource is up; it serves the device only while Primary, and
// refuses clients with a clear reason otherwise.
func (r *resource) startExport() error {
	lis, err := nbd.Listen(r.self.Export)
	if err != nil {
		return fmt.Errorf("export %s: %w", r.self.Export, err)
	}
	srv := nbd.NewServer(func(name string) (nbd.Device, error) {
		if name != "" && name != r.cfg.Name {
			return nil, fmt.Errorf("%w: this socket exports resource %q, not %q", nbd.ErrNoSuchExport, r.cfg.Name, name)
		}
		if !r.isPrimary() {
			return nil, r.notPrimaryError()
		}
		return device{r}, nil
	}, r.log.With("export", r.self.Export))
	r.export, r.exportLis = srv, lis
	go func() {
		if err := srv.Serve(lis); err != nil {
			r.log.Debug("export stopped", "err", err)
		}
	}()
	return nil
}

func (r *resource) stopExport() {
	if r.export != nil {
		r.export.Close()
		r.export, r.exportLis = nil, nil
	}
}

func (r *resource) isPrimary() bool {
	st := r.status.Load()
	return st != nil && st.Role == core.Primary.String()
}

// Primary promotes the resource on this node and attaches the kernel
// device the configuration names, if any.
func (r *resource) Primary(force bool) error {
	err := r.call(func() error {
		if err := r.engine.Promote(force); err != nil {
			return fmt.Errorf("cannot make %s Primary on %s: %w", r.cfg.Name, r.self.Name, err)
		}
		r.process()
		r.publishStatus()
		return nil
	})
	if err != nil {
		return err
	}
	if err := r.attachKernelDevice(); err != nil {
		return fmt.Errorf("%s is Primary on %s and its export serves, but the kernel device is not attached: %w", r.cfg.Name, r.self.Name, err)
	}
	return nil
}

// Secondary demotes the resource: clients of the export are disconnected
// first, then the engine waits for their outstanding requests.
func (r *resource) Secondary() error {
	if err := r.call(func() error {
		if r.engine.Status().Role != core.Primary {
			return fmt.Errorf("resource %s is already Secondary on %s", r.cfg.Name, r.self.Name)
		}
		return nil
	}); err != nil {
		return err
	}
	// The kernel device goes first: it refuses, naming the holder, while
	// it is mounted or open, and then nothing else has changed.
	if err := r.detachKernelDevice(); err != nil {
		return err
	}
	if r.export != nil {
		r.export.CloseConnections()
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := r.call(func() error {
			err := r.engine.Demote()
			if err == nil {
				r.process()
				r.publishStatus()
			}
			return err
		})
		if !errors.Is(err, core.ErrBusy) || time.Now().After(deadline) {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Connect lets this node connect to peerName again (all peers when empty).
func (r *resource) Connect(peerName string) error {
	return r.setWanted(peerName, true)
}

// Disconnect closes the connection to peerName (all peers when empty) and
// keeps it closed (StandAlone) until Connect.
func (r *resource) Disconnect(peerName string) error {
	return r.setWanted(peerName, false)
}

func (r *resource) setWanted(peerName string, wanted bool) error {
	targets, err := r.peersNamed(peerName)
	if err != nil {
		return err
	}
	return r.call(func() error {
		for _, p := range targets {
			r.mu.Lock()
			p.wanted = wanted
			if wanted {
				p.lastErr = ""
			}
			r.mu.Unlock()
			if !wanted && p.conn != nil {
				p.conn.close(errors.New("disconnected by the administrator"))
				r.setConn(p, nil)
				r.engine.Disconnected(p.id)
			}
		}
		r.process()
		return nil
	})
}

func (r *resource) peersNamed(name string) ([]*peer, error) {
	if name == "" {
		return sortedPeers(r.peers), nil
	}
	for _, p := range r.peers {
		if p.node.Name == name {
			return []*peer{p}, nil
		}
	}
	names := []string{}
	for _, p := range sortedPeers(r.peers) {
		names = append(names, p.node.Name)
	}
	return nil, fmt.Errorf("resource %s has no peer %q on node %s (peers: %v)", r.cfg.Name, name, r.self.Name, names)
}

// forceDown takes the resource down even when Primary (daemon shutdown).
func (r *resource) forceDown() error {
	r.stopExport()
	r.mu.Lock()
	r.up = false
	r.mu.Unlock()
	close(r.stop)
	<-r.loopDone
	for _, p := range r.peers {
		if p.dialDone != nil {
			<-p.dialDone
			p.dialDone = nil
		}
	}
	err := r.st.Close()
	r.publishStatus()
	return err
}

// DumpMD prints the metadata of a resource that is up.
func (r *resource) DumpMD(w io.Writer, asJSON bool) error {
	return r.call(func() error {
		r.persistBitmaps()
		return dumpStore(w, r.st.store, asJSON)
	})
}
