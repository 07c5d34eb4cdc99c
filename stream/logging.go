package stream

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"time"

	"google.golang.org/grpc/codes"
)

// logFailure logs a failed attempt or a lost stream (liveFor > 0): a lost
// stream always, at warn level; a failed attempt once per change of state
// and code (at error level for a misconfiguration, warn otherwise), and
// its repeats at debug level.
func (s *Subscriber) logFailure(state State, code codes.Code, err error, attempts int, changed bool, wait, liveFor time.Duration) {
	level, msg := slog.LevelDebug, "op-control stream not live"
	switch {
	case state == Unauthorized || state == Misconfigured:
		if changed {
			level = slog.LevelError
		}
	case liveFor > 0:
		level, msg = slog.LevelWarn, "op-control stream lost: signals published until it is live again are missed"
	case changed:
		level = slog.LevelWarn
	}
	attrs := []slog.Attr{
		slog.String("state", state.String()),
		slog.String("code", code.String()),
		slog.Int("attempts", attempts),
		slog.Duration("retry_in", wait),
	}
	if liveFor > 0 {
		attrs = append(attrs, slog.Duration("live_for", liveFor))
	}
	if err != nil && !errors.Is(err, io.EOF) {
		attrs = append(attrs, slog.String("error", err.Error()))
	}
	if h := hint(code, err); h != "" {
		attrs = append(attrs, slog.String("hint", h))
	}
	s.log.LogAttrs(context.Background(), level, msg, attrs...)
}

// limit returns the log limiter of key (a drop reason, or "sequence").
// Owned by the goroutine in Run.
func (s *Subscriber) limit(key string) *logLimit {
	l, ok := s.limits[key]
	if !ok {
		l = &logLimit{}
		s.limits[key] = l
	}
	return l
}

// logLimit lets one line through per logInterval and counts the rest.
type logLimit struct {
	last       time.Time
	suppressed uint64
}

func (l *logLimit) allow(now time.Time) bool {
	if !l.last.IsZero() && now.Sub(l.last) < logInterval {
		l.suppressed++
		return false
	}
	l.last = now
	return true
}

func (l *logLimit) takeSuppressed() uint64 {
	n := l.suppressed
	l.suppressed = 0
	return n
}
