package host

import (
	"context"
	"io"
	"log"
	"log/slog"

	"github.com/hashicorp/go-hclog"
)

// slogger is go-plugin's logger (an hclog.Logger) writing to the daemon's
// slog logger: go-plugin passes every line the plugin logs through it,
// with the plugin's level, so the lines land in the daemon's log with the
// attributes of l (the plugin's name).
type slogger struct {
	l    *slog.Logger
	name string
	args []any
}

func newSlogger(l *slog.Logger) *slogger { return &slogger{l: l} }

func slogLevel(level hclog.Level) slog.Level {
	switch level {
	case hclog.Trace, hclog.Debug:
		return slog.LevelDebug
	case hclog.Warn:
		return slog.LevelWarn
	case hclog.Error:
		return slog.LevelError
	}
	return slog.LevelInfo
}

func hclogLevel(level slog.Level) hclog.Level {
	switch {
	case level <= slog.LevelDebug:
		return hclog.Debug
	case level <= slog.LevelInfo:
		return hclog.Info
	case level <= slog.LevelWarn:
		return hclog.Warn
	}
	return hclog.Error
}

func (s *slogger) Log(level hclog.Level, msg string, args ...any) {
	l := s.l
	if s.name != "" {
		l = l.With("component", s.name)
	}
	all := append(s.args[:len(s.args):len(s.args)], args...)
	kept := all[:0:0]
	for i := 0; i+1 < len(all); i += 2 {
		// go-plugin adds the time the plugin logged; the daemon's
		// record has its own.
		if k, _ := all[i].(string); k != "timestamp" {
			kept = append(kept, all[i], all[i+1])
		}
	}
	l.Log(context.Background(), slogLevel(level), msg, kept...)
}

func (s *slogger) Trace(msg string, args ...any) { s.Log(hclog.Trace, msg, args...) }
func (s *slogger) Debug(msg string, args ...any) { s.Log(hclog.Debug, msg, args...) }
func (s *slogger) Info(msg string, args ...any)  { s.Log(hclog.Info, msg, args...) }
func (s *slogger) Warn(msg string, args ...any)  { s.Log(hclog.Warn, msg, args...) }
func (s *slogger) Error(msg string, args ...any) { s.Log(hclog.Error, msg, args...) }

func (s *slogger) enabled(level hclog.Level) bool {
	return s.l.Enabled(context.Background(), slogLevel(level))
}

func (s *slogger) IsTrace() bool { return s.enabled(hclog.Trace) }
func (s *slogger) IsDebug() bool { return s.enabled(hclog.Debug) }
func (s *slogger) IsInfo() bool  { return s.enabled(hclog.Info) }
func (s *slogger) IsWarn() bool  { return s.enabled(hclog.Warn) }
func (s *slogger) IsError() bool { return s.enabled(hclog.Error) }

func (s *slogger) ImpliedArgs() []any { return s.args }

func (s *slogger) With(args ...any) hclog.Logger {
	c := *s
	c.args = append(s.args[:len(s.args):len(s.args)], args...)
	return &c
}

func (s *slogger) Name() string { return s.name }

func (s *slogger) Named(name string) hclog.Logger {
	c := *s
	if c.name != "" {
		name = c.name + "." + name
	}
	c.name = name
	return &c
}

func (s *slogger) ResetNamed(name string) hclog.Logger {
	c := *s
	c.name = name
	return &c
}

// SetLevel does nothing: the daemon's logger decides.
func (s *slogger) SetLevel(hclog.Level) {}

// GetLevel reports the lowest level the daemon's logger keeps, so that
// go-plugin does not drop lines the daemon would log.
func (s *slogger) GetLevel() hclog.Level {
	for _, l := range []slog.Level{slog.LevelDebug, slog.LevelInfo, slog.LevelWarn} {
		if s.l.Enabled(context.Background(), l) {
			return hclogLevel(l)
		}
	}
	return hclog.Error
}

func (s *slogger) StandardLogger(opts *hclog.StandardLoggerOptions) *log.Logger {
	return log.New(s.StandardWriter(opts), "", 0)
}

func (s *slogger) StandardWriter(*hclog.StandardLoggerOptions) io.Writer {
	return writerFunc(func(p []byte) (int, error) {
		s.Info(string(p))
		return len(p), nil
	})
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
