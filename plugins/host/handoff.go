package host

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/georepl/georepl/plugins/internal/control"
	"github.com/georepl/georepl/transports"
)

// handoff receives the sockets one plugin process hands over (see package
// control): one packet per connection, its hand-off id and its sockets.
// A caller reserves an id before the control call that sets the
// connection up, and takes the sockets after the call answered.
type handoff struct {
	conn *net.UnixConn
	log  *slog.Logger

	mu      sync.Mutex
	nextID  uint64
	waiting map[uint64]chan []*os.File
	err     error         // why the reader stopped
	done    chan struct{} // closed when the reader stops
}

// newHandoffPair returns the host's end of a new hand-off socket pair,
// reading, and the plugin's end, for the plugin's ExtraFiles.
func newHandoffPair(log *slog.Logger) (*handoff, *os.File, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("hand-off socket pair: %w", err)
	}
	ours := os.NewFile(uintptr(fds[0]), "georepl-handoff")
	theirs := os.NewFile(uintptr(fds[1]), "georepl-handoff-plugin")
	nc, err := net.FileConn(ours)
	ours.Close()
	if err != nil {
		theirs.Close()
		return nil, nil, fmt.Errorf("hand-off socket pair: %w", err)
	}
	h := &handoff{conn: nc.(*net.UnixConn), log: log, waiting: map[uint64]chan []*os.File{}, done: make(chan struct{})}
	go h.read()
	return h, theirs, nil
}

// handoffTimeout bounds the wait for sockets the plugin says it sent.
var handoffTimeout = 5 * time.Second

// maxHandoffFDs bounds the descriptors one packet may carry; a packet
// with more is a protocol error, and its descriptors are closed.
const maxHandoffFDs = 2 * control.RingFDs

func (h *handoff) read() {
	buf := make([]byte, 64)
	oob := make([]byte, unix.CmsgSpace(4*maxHandoffFDs))
	for {
		n, oobn, flags, _, err := h.conn.ReadMsgUnix(buf, oob)
		if err != nil {
			h.stop(err)
			return
		}
		files, fdErr := parseRights(oob[:oobn])
		id, idErr := control.DecodeHandoff(buf[:n])
		switch {
		case flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0:
			err = errors.New("hand-off packet truncated")
		case fdErr != nil:
			err = fdErr
		case idErr != nil:
			err = idErr
		case len(files) != transports.NumChannels && len(files) != control.RingFDs:
			err = fmt.Errorf("hand-off packet with %d descriptors, want %d (sockets) or %d (rings)", len(files), transports.NumChannels, control.RingFDs)
		}
		if err != nil {
			h.log.Error("plugin broke the hand-off protocol; dropping what it sent", "err", err)
			closeFiles(files)
			continue
		}
		h.mu.Lock()
		ch, ok := h.waiting[id]
		if ok {
			delete(h.waiting, id)
			ch <- files
		}
		h.mu.Unlock()
		if !ok {
			h.log.Warn("plugin handed over a connection nobody waits for (its call was cancelled); closing it", "handoff", id)
			closeFiles(files)
		}
	}
}

func parseRights(oob []byte) ([]*os.File, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("hand-off control message: %w", err)
	}
	var files []*os.File
	var errs []error
	for _, m := range msgs {
		fds, err := unix.ParseUnixRights(&m)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, fd := range fds {
			files = append(files, os.NewFile(uintptr(fd), "plugin-socket"))
		}
	}
	return files, errors.Join(errs...)
}

func closeFiles(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}

func (h *handoff) stop(err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.err == nil {
		h.err = err
		close(h.done)
	}
}

// reserve returns a new hand-off id and the channel its sockets arrive on.
func (h *handoff) reserve() (uint64, chan []*os.File) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.nextID++
	ch := make(chan []*os.File, 1)
	h.waiting[h.nextID] = ch
	return h.nextID, ch
}

// cancel gives id up, closing its sockets if they arrived.
func (h *handoff) cancel(id uint64, ch chan []*os.File) {
	h.mu.Lock()
	delete(h.waiting, id)
	h.mu.Unlock()
	select {
	case files := <-ch:
		closeFiles(files)
	default:
	}
}

// take returns id's sockets once the control call that set the
// connection up has answered: the plugin sent them before answering, so
// they are on their way or here.
func (h *handoff) take(id uint64, ch chan []*os.File) ([]*os.File, error) {
	timer := time.NewTimer(handoffTimeout)
	defer timer.Stop()
	select {
	case files := <-ch:
		return files, nil
	case <-timer.C:
		h.cancel(id, ch)
		return nil, fmt.Errorf("plugin broke the hand-off protocol: it answered, but the connection's sockets did not come within %v", handoffTimeout)
	case <-h.done:
	}
	select {
	case files := <-ch: // read just before the socket closed
		return files, nil
	default:
	}
	h.cancel(id, ch)
	return nil, fmt.Errorf("%w: the plugin answered but its sockets never came: %v", control.ErrPluginUnavailable, h.err)
}

func (h *handoff) close() error { return h.conn.Close() }

// dupNonblocking returns a non-blocking duplicate of f's descriptor.
func dupNonblocking(f *os.File) (int, error) {
	fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}
