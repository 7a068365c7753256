package nbd

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Lookup resolves the export name a client asks for to the Device to serve.
// It is called once per negotiation option that names an export, from the
// connection's goroutine. An error refuses the client: the text of the error
// is sent to it (nbdinfo prints it), with NBD_REP_ERR_UNKNOWN when the error
// Is ErrNoSuchExport and NBD_REP_ERR_POLICY otherwise.
type Lookup func(name string) (Device, error)

// ErrServerClosed is returned by Serve after Close.
var ErrServerClosed = errors.New("nbd: server closed")

// Server serves Devices to NBD clients. Create it with NewServer, then call
// Serve once per listener. All methods are safe for concurrent use.
type Server struct {
	lookup      Lookup
	log         *slog.Logger
	listExports func() []string
	tlsConfig   *tls.Config   // nil: no TLS (WithTLS)
	connIDs     atomic.Uint64 // numbers connections in logs
	connLimit   int64         // what one connection may hold (budget.go)
	total       *budget       // what every connection together may hold

	mu        sync.Mutex
	closed    bool
	listeners map[net.Listener]struct{}
	conns     map[*conn]struct{}
	connsDone sync.WaitGroup
}

// ServerOption configures a Server in NewServer.
type ServerOption func(*Server)

// WithExportList makes the server answer NBD_OPT_LIST with the names list
// returns. Without it, listing is refused with NBD_REP_ERR_POLICY and
// clients must name the export they want.
func WithExportList(list func() []string) ServerOption {
	return func(s *Server) { s.listExports = list }
}

// WithTLS makes the server insist on TLS, the protocol's FORCEDTLS mode:
// a client must send NBD_OPT_STARTTLS first and complete a TLS handshake
// under config before any other option is served (others get
// NBD_REP_ERR_TLS_REQD; NBD_OPT_EXPORT_NAME hangs up). config says whom
// the server accepts: give it ClientAuth tls.RequireAndVerifyClientCert
// and ClientCAs to require client certificates. Use its
// GetConfigForClient to change certificates while the server runs.
func WithTLS(config *tls.Config) ServerOption {
	return func(s *Server) { s.tlsConfig = config }
}

// NewServer returns a server that serves the Devices lookup resolves. log
// receives connection events (debug), refusals (info) and device errors
// that reach clients as EIO (error); nil means slog.Default().
func NewServer(lookup Lookup, log *slog.Logger, opts ...ServerOption) *Server {
	if log == nil {
		log = slog.Default()
	}
	s := &Server{
		lookup:    lookup,
		log:       log,
		connLimit: DefaultConnQueueLimit,
		total:     processQueue,
		listeners: make(map[net.Listener]struct{}),
		conns:     make(map[*conn]struct{}),
	}
	for _, opt := range opts {
		opt(s)
	}
	return s
}

// Serve accepts connections on l and serves each in its own goroutines
// until l fails or the server is closed; it then closes l. It returns
// ErrServerClosed after Close, or the listener's error. Serve may be called
// for several listeners at once.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		l.Close()
		return ErrServerClosed
	}
	s.listeners[l] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, l)
		s.mu.Unlock()
		l.Close()
	}()

	var backoff time.Duration
	for {
		nc, err := l.Accept()
		if err != nil {
			if s.isClosed() {
				return ErrServerClosed
			}
			if isTransientAcceptError(err) {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.log.Warn("nbd: accept failed; retrying", "listener", l.Addr().String(), "err", err, "retry_in", backoff)
				time.Sleep(backoff)
				continue
			}
			return fmt.Errorf("nbd: accept on %s: %w", l.Addr(), err)
		}
		backoff = 0
		c := newConn(s, nc)
		if !s.track(c) {
			nc.Close()
			return ErrServerClosed
		}
		go c.serve()
	}
}

// Close stops every listener, stops reading requests from every client,
// waits until the requests already received have been carried out by their
// Devices (their replies are sent if the client still listens), and closes
// the connections. Serve calls then return ErrServerClosed.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	var errs []error
	for l := range s.listeners {
		if err := l.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, fmt.Errorf("nbd: close listener %s: %w", l.Addr(), err))
		}
	}
	for c := range s.conns {
		c.shutdown()
	}
	s.mu.Unlock()
	s.connsDone.Wait()
	return errors.Join(errs...)
}

// CloseConnections drops every client connection the same way as Close
// does, and waits for them, but keeps listening: clients that connect
// afterwards are served (or refused by Lookup). When it returns, no request
// from the dropped connections is still running on a Device; use it before
// taking Devices away (for example when a resource stops being Primary).
func (s *Server) CloseConnections() {
	<-s.StopConnections()
}

// StopConnections drops every client connection as CloseConnections does,
// but returns at once: the channel it returns is closed once those
// connections ended, and with them every request they had read. Use it
// when the caller itself must act before those requests can end (a
// resource that holds writes until it regains quorum fails them when it
// is demoted): it stops the requests coming, does its part, then waits.
func (s *Server) StopConnections() <-chan struct{} {
	s.mu.Lock()
	dropped := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		c.shutdown()
		dropped = append(dropped, c)
	}
	s.mu.Unlock()
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		for _, c := range dropped {
			<-c.done
		}
	}()
	return ended
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// track registers a new connection; it returns false if the server closed.
func (s *Server) track(c *conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.conns[c] = struct{}{}
	s.connsDone.Add(1)
	return true
}

func (s *Server) untrack(c *conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	s.connsDone.Done()
}

// isTransientAcceptError reports accept errors that say "not now" (out of
// descriptors or memory, a connection aborted before it was accepted)
// rather than "this listener is broken".
func isTransientAcceptError(err error) bool {
	for _, errno := range []syscall.Errno{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.ECONNABORTED} {
		if errors.Is(err, errno) {
			return true
		}
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
