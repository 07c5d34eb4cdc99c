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
