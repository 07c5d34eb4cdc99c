package testutil

import (
	"context"
	"log/slog"
	"strings"
	"sync"
)

// Logs is a slog.Handler that records every record it is given, for tests
// that assert what was logged (and what was not: a token must never be).
type Logs struct {
	mu      sync.Mutex
	records []slog.Record
}

// Logger returns a logger writing to l.
func (l *Logs) Logger() *slog.Logger { return slog.New(l) }

// Enabled implements slog.Handler: every level is recorded.
func (l *Logs) Enabled(context.Context, slog.Level) bool { return true }

// Handle implements slog.Handler.
func (l *Logs) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.records = append(l.records, r.Clone())
	return nil
}

// WithAttrs implements slog.Handler; attributes added this way are kept
// with no record (none of our assertions needs them).
func (l *Logs) WithAttrs([]slog.Attr) slog.Handler { return l }

// WithGroup implements slog.Handler.
func (l *Logs) WithGroup(string) slog.Handler { return l }

// Count returns how many records at level or above have a message that
// contains substr.
func (l *Logs) Count(level slog.Level, substr string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, r := range l.records {
		if r.Level >= level && strings.Contains(r.Message, substr) {
			n++
		}
	}
	return n
}

// Mentions reports whether s appears in any record's message or any of its
// attributes' values.
func (l *Logs) Mentions(s string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, r := range l.records {
		if strings.Contains(r.Message, s) {
			return true
		}
		found := false
		r.Attrs(func(a slog.Attr) bool {
			found = strings.Contains(a.Value.String(), s)
			return !found
		})
		if found {
			return true
		}
	}
	return false
}

// Records returns a copy of what was recorded.
func (l *Logs) Records() []slog.Record {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]slog.Record(nil), l.records...)
}
