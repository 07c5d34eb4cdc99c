package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"time"
)

// timeline prints the demo's events, one line each, with the time elapsed
// since the scenario started. Calls and operator actions are printed by the
// scenario in the order it observes them, each stamped with when it happened;
// the subscriber's log (-v) is printed as it comes. Safe for concurrent use.
type timeline struct {
	mu      sync.Mutex
	w       io.Writer
	start   time.Time // zero until the scenario starts
	verbose bool
}

func newTimeline(w io.Writer, verbose bool) *timeline {
	return &timeline{w: w, verbose: verbose}
}

// columns of event lines: time, who, call or signal, decision, gRPC status.
const lineFormat = "%8s  %-8s %-11s %-22s %s\n"

// begin starts the clock and prints the column headings.
func (t *timeline) begin() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.start = time.Now()
	fmt.Fprintln(t.w)
	fmt.Fprintf(t.w, lineFormat, "time", "op", "call", "decision", "gRPC status")
}

func (t *timeline) elapsed(at time.Time) string {
	if t.start.IsZero() {
		return ""
	}
	return fmt.Sprintf("%.3fs", at.Sub(t.start).Seconds())
}

func (t *timeline) printf(format string, args ...any) {
	t.mu.Lock()
	defer t.mu.Unlock()
	fmt.Fprintf(t.w, format, args...)
}

// header and info print the set-up, before the clock starts.
func (t *timeline) header(title string) { t.printf("%s\n", title) }

func (t *timeline) info(format string, args ...any) {
	t.printf("  "+format+"\n", args...)
}

// step announces a step of the scenario.
func (t *timeline) step(n int, title string) {
	t.printf("\n── step %d: %s\n", n, title)
}

// call prints a tool call that returned at out.end.
func (t *timeline) call(label, name string, out outcome) {
	t.mu.Lock()
	defer t.mu.Unlock()
	fmt.Fprintf(t.w, lineFormat, t.elapsed(out.end), label, name, out.decisionText(), out.codeText())
}

// operator prints an operator action published at at, with what came of it.
func (t *timeline) operator(at time.Time, text, result string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	fmt.Fprintf(t.w, "%8s  operator %s  → %s\n", t.elapsed(at), text, result)
}

// note explains what the last lines showed.
func (t *timeline) note(format string, args ...any) {
	t.printf("%8s  · "+format+"\n", append([]any{""}, args...)...)
}

// debugf prints only with -v.
func (t *timeline) debugf(format string, args ...any) {
	if t.verbose {
		t.printf("%8s  ~ "+format+"\n", append([]any{""}, args...)...)
	}
}

// logHandler returns an slog handler that prints records from who on the
// timeline: warnings and errors always, everything with -v.
func (t *timeline) logHandler(who string) slog.Handler {
	level := slog.LevelWarn
	if t.verbose {
		level = slog.LevelDebug
	}
	return &logHandler{t: t, who: who, level: level}
}

type logHandler struct {
	t     *timeline
	who   string
	level slog.Level
}

func (h *logHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= h.level }

func (h *logHandler) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	r.Attrs(func(a slog.Attr) bool {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		return true
	})
	h.t.mu.Lock()
	defer h.t.mu.Unlock()
	fmt.Fprintf(h.t.w, "%8s  ~ %s: %s: %s%s\n", h.t.elapsed(r.Time), h.who, strings.ToLower(r.Level.String()), r.Message, b.String())
	return nil
}

// WithAttrs drops the subscriber's fixed attributes (component, agent id):
// who already names the source.
func (h *logHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *logHandler) WithGroup(string) slog.Handler      { return h }
