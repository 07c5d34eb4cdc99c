package robustness

import (
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/opcontrol/opcontrol/controlstore"
)

// Kind says what an Event records.
type Kind uint8

// Kinds of events.
const (
	// KindPublish: the gateway was asked to publish Signal for OpID
	// (At: the call began, End: it returned). Applies says whether the
	// signal, if delivered, is one this store accepts: addressed to its
	// agent's subscription, decodable and valid. Bulk > 0 stands for that
	// many publishes to distinct per-op ids that nothing else refers to.
	KindPublish Kind = iota + 1
	// KindLink: a sample of the subscriber's link. Live is true when the
	// subscriber's stream was live; Stream identifies that stream (the pair
	// of the subscriber's and the gateway's view of it; 0: unknown or
	// ambiguous); Skipped is the gateway's count of envelopes the stream
	// skipped for lagging.
	KindLink
	// KindState: the subscriber's health state changed to Note.
	KindState
	// KindApplied: the store applied a terminate of OpID (seen exactly, by
	// a call registered with Store.Track being cancelled).
	KindApplied
	// KindObserve: the store's State(OpID) was read as State.
	KindObserve
	// KindSettle: the marker publish Ref was observed applied at At.
	KindSettle
	// KindCall: a gated call of OpID ("" for none) ran from At to End.
	KindCall
	// KindFault: a fault was injected (Note says which).
	KindFault
	// KindResources: Goroutines and Heap at phase Note ("baseline" or
	// "final").
	KindResources
)

var kindNames = [...]string{"?", "publish", "link", "state", "applied", "observe", "settle", "call", "fault", "resources"}

func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return fmt.Sprintf("kind(%d)", k)
}

// Outcome is how a gated call ended.
type Outcome uint8

// Outcomes of calls.
const (
	// OutcomeOK: the call ran and succeeded.
	OutcomeOK Outcome = iota
	// OutcomeTerminated: refused (not Reached: denied) or cancelled
	// (Reached) by a terminate.
	OutcomeTerminated
	// OutcomeAbandoned: the caller's context ended while the call was held.
	OutcomeAbandoned
	// OutcomeUnavailable: refused because op control failed closed, or a
	// held op's entry was evicted.
	OutcomeUnavailable
	// OutcomeError: any other error.
	OutcomeError
)

var outcomeNames = [...]string{"ok", "terminated", "abandoned", "unavailable", "error"}

func (o Outcome) String() string {
	if int(o) < len(outcomeNames) {
		return outcomeNames[o]
	}
	return fmt.Sprintf("outcome(%d)", o)
}

// Event is one entry of a History. Which fields matter depends on Kind.
type Event struct {
	// ID is the event's index in its history, set by History.Add.
	ID   int
	Kind Kind
	// At is when the event happened, or began, relative to the history's
	// start; End is when a publish or a call returned.
	At, End time.Duration

	// OpID: publish, applied, observe, call.
	OpID   string
	Signal controlstore.Signal
	// Applies: publish (see KindPublish). Bulk: publish.
	Applies bool
	Bulk    int
	// State: observe.
	State controlstore.State

	// Live, Stream, Skipped: link.
	Live    bool
	Stream  int
	Skipped uint64

	// Ref: settle (the marker publish's ID).
	Ref int

	// Call: Reached is true when the call reached the invoker, at Invoked;
	// Dur is how long the server would take (0 for an instant call);
	// HeldBy is the id whose pause held the call ("" if it was not held);
	// TerminatedBy the id whose terminate stopped it ("" if none).
	Reached      bool
	Invoked      time.Duration
	Dur          time.Duration
	Outcome      Outcome
	HeldBy       string
	TerminatedBy string

	// Resources.
	Goroutines int
	Heap       uint64

	// Note: state name, fault, resources phase, or free text.
	Note string
}

// String renders e on one line, for violation excerpts.
func (e Event) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "#%-4d %9.4fs %-9s", e.ID, e.At.Seconds(), e.Kind)
	switch e.Kind {
	case KindPublish:
		if e.Bulk > 0 {
			fmt.Fprintf(&b, " %d x %s of distinct ops", e.Bulk, e.Signal)
			break
		}
		fmt.Fprintf(&b, " %s %s (returned %.4fs)", e.Signal, short(e.OpID), e.End.Seconds())
		if e.Note != "" {
			b.WriteString(" " + e.Note)
		}
		if !e.Applies {
			b.WriteString(" [not for this store]")
		}
	case KindLink:
		if e.Live {
			fmt.Fprintf(&b, " live stream=%d skipped=%d", e.Stream, e.Skipped)
		} else {
			b.WriteString(" down")
		}
	case KindApplied:
		fmt.Fprintf(&b, " terminate %s", short(e.OpID))
	case KindObserve:
		fmt.Fprintf(&b, " %s is %s", short(e.OpID), e.State)
	case KindSettle:
		fmt.Fprintf(&b, " marker #%d applied", e.Ref)
	case KindCall:
		fmt.Fprintf(&b, " %s op=%s ended@%.4fs %s", e.Note, short(e.OpID), e.End.Seconds(), e.Outcome)
		if e.Reached {
			fmt.Fprintf(&b, " reached@%.4fs", e.Invoked.Seconds())
		}
		if e.Dur > 0 {
			fmt.Fprintf(&b, " dur=%v", e.Dur)
		}
		if e.HeldBy != "" {
			fmt.Fprintf(&b, " held-by=%s", short(e.HeldBy))
		}
		if e.TerminatedBy != "" {
			fmt.Fprintf(&b, " terminated-by=%s", short(e.TerminatedBy))
		}
	case KindResources:
		fmt.Fprintf(&b, " %s goroutines=%d heap=%.1fMiB", e.Note, e.Goroutines, float64(e.Heap)/(1<<20))
	default:
		if e.Note != "" {
			b.WriteString(" " + e.Note)
		}
	}
	return b.String()
}

// short keeps excerpts readable whatever the op id (1 MiB ids included).
func short(id string) string {
	if len(id) > 60 {
		return fmt.Sprintf("%q…(%d bytes)", id[:40], len(id))
	}
	return fmt.Sprintf("%q", id)
}

// History is a concurrency-safe, append-only record of one run.
type History struct {
	start time.Time
	mu    sync.Mutex
	ev    []Event
}

// NewHistory returns an empty history starting now.
func NewHistory() *History { return &History{start: time.Now()} }

// Now returns the time since the history began (monotonic).
func (h *History) Now() time.Duration { return time.Since(h.start) }

// Add appends e, sets its ID and returns it.
func (h *History) Add(e Event) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	e.ID = len(h.ev)
	h.ev = append(h.ev, e)
	return e.ID
}

// Len returns the number of events.
func (h *History) Len() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.ev)
}

// Events returns a copy of the events, in the order they were added.
func (h *History) Events() []Event {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]Event(nil), h.ev...)
}
