package robustness

import (
	"slices"
	"time"

	"github.com/opcontrol/opcontrol/controlstore"
)

// Summary counts what a history holds and how fast signals took effect.
type Summary struct {
	// Signals counts publishes (bulk ones by their count); Terminates the
	// valid terminates among them addressed to this store, settle markers
	// (publishes noted "marker") excluded.
	Signals, Terminates int
	// TerminatesApplied counts the distinct ids whose terminate the store
	// was seen applying (KindApplied).
	TerminatesApplied int
	// Calls by outcome: Allowed ran at once, Released ran after a hold,
	// Denied were refused by a terminate, Cancelled were cancelled by one
	// in flight, Abandoned gave up while held, Unavailable failed closed.
	Calls, Allowed, Released, Denied, Cancelled, Abandoned, Unavailable, Errors int
	// TerminateLatency: from a terminate's publish to the store applying
	// it (cancelling the calls in flight). ResumeLatency: from the publish
	// of the RESUME that released a held call to the call reaching the
	// invoker.
	TerminateLatency, ResumeLatency []time.Duration
}

// Summarize computes the summary of events.
func Summarize(events []Event) Summary {
	var s Summary
	pubsOn := map[string][]*Event{}
	for i := range events {
		e := &events[i]
		if e.Kind != KindPublish {
			continue
		}
		if e.Bulk > 0 {
			s.Signals += e.Bulk
			if e.Applies && e.Signal == controlstore.SignalTerminate {
				s.Terminates += e.Bulk
			}
			continue
		}
		s.Signals++
		if e.Applies && e.Signal == controlstore.SignalTerminate && e.Note != "marker" {
			s.Terminates++
		}
		pubsOn[e.OpID] = append(pubsOn[e.OpID], e)
	}
	for _, ps := range pubsOn {
		slices.SortFunc(ps, func(a, b *Event) int { return int(a.At - b.At) })
	}
	// latest returns the last applicable publish of sig on id before t.
	latest := func(id string, sig controlstore.Signal, t time.Duration) *Event {
		var out *Event
		for _, p := range pubsOn[id] {
			if p.At > t {
				break
			}
			if p.Applies && p.Signal == sig {
				out = p
			}
		}
		return out
	}
	applied := map[string]bool{}
	for i := range events {
		e := &events[i]
		switch e.Kind {
		case KindApplied:
			if applied[e.OpID] {
				continue
			}
			applied[e.OpID] = true
			s.TerminatesApplied++
			if p := latest(e.OpID, controlstore.SignalTerminate, e.At); p != nil {
				s.TerminateLatency = append(s.TerminateLatency, e.At-p.At)
			}
		case KindCall:
			s.Calls++
			switch {
			case e.Outcome == OutcomeTerminated && e.Reached:
				s.Cancelled++
			case e.Outcome == OutcomeTerminated:
				s.Denied++
			case e.Outcome == OutcomeAbandoned:
				s.Abandoned++
			case e.Outcome == OutcomeUnavailable:
				s.Unavailable++
			case e.Outcome == OutcomeError:
				s.Errors++
			case e.HeldBy != "":
				s.Released++
			default:
				s.Allowed++
			}
			if e.HeldBy != "" && e.Reached {
				if p := latest(e.HeldBy, controlstore.SignalResume, e.Invoked); p != nil {
					s.ResumeLatency = append(s.ResumeLatency, e.Invoked-p.At)
				}
			}
		}
	}
	return s
}

// Percentile returns the p-th percentile (0 < p <= 100) of ds by the
// nearest-rank method, or 0 for no samples.
func Percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	rank := int(p/100*float64(len(s))+0.999999) - 1
	return s[min(max(rank, 0), len(s)-1)]
}
