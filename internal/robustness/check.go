package robustness

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/opcontrol/opcontrol/controlstore"
)

// Guarantee names a property Check verifies.
type Guarantee string

// The guarantees; see the package documentation.
const (
	TerminateEnforced  Guarantee = "TerminateEnforced"
	TerminateAbsorbing Guarantee = "TerminateAbsorbing"
	NoSpuriousResume   Guarantee = "NoSpuriousResume"
	LiveDelivery       Guarantee = "LiveDelivery"
	Bounded            Guarantee = "Bounded"
)

// Config describes the run a history comes from.
type Config struct {
	// AgentID is the store's agent: "agent:"+AgentID and "*" cover every
	// call. Required.
	AgentID string
	// MaxEntries is the store's per-op entry cap (0:
	// controlstore.DefaultMaxEntries). A paused op entry may be evicted
	// once at least this many newer entries were published.
	MaxEntries int
	// TerminatedHistory is the store's Stats().TerminatedHistory (0: that
	// of the default). A per-op terminate may be forgotten only once at
	// least MaxEntries + TerminatedHistory newer per-op terminates were
	// published: it is compacted, never dropped, when evicted.
	TerminatedHistory int
	// ResumeSettle is the store's WithResumeSettle (0: the default). A
	// RESUME of the agent or global scope is certain to have applied only
	// this long after it was certainly delivered: the store lets it settle.
	ResumeSettle time.Duration
	// HoldWake is how long a call held when a terminate is applied may take
	// to end (default 2 s): past it, it must end with the terminated error.
	HoldWake time.Duration
	// GoroutineSlack and HeapSlack bound how far the final resources may
	// exceed the baseline (defaults 0 goroutines and 8 MiB).
	GoroutineSlack int
	HeapSlack      uint64
}

// Violation is a guarantee that a history breaks, with the events that show
// it.
type Violation struct {
	Guarantee Guarantee
	Detail    string
	Excerpt   []Event
}

// String renders the violation and its excerpt.
func (v Violation) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s violated: %s", v.Guarantee, v.Detail)
	for _, e := range v.Excerpt {
		b.WriteString("\n    " + e.String())
	}
	return b.String()
}

// maxExcerpt bounds an excerpt: the most recent events are kept.
const maxExcerpt = 24

// Check verifies the guarantees over events (in any order; references are by
// Event.ID) and returns every violation found, nil if none.
func Check(cfg Config, events []Event) []Violation {
	if cfg.MaxEntries <= 0 {
		cfg.MaxEntries = controlstore.DefaultMaxEntries
	}
	if cfg.TerminatedHistory <= 0 {
		cfg.TerminatedHistory = controlstore.DefaultTerminatedHistory // promised; the store keeps more
	}
	if cfg.ResumeSettle <= 0 {
		cfg.ResumeSettle = controlstore.DefaultResumeSettle
	}
	if cfg.HoldWake <= 0 {
		cfg.HoldWake = 2 * time.Second
	}
	if cfg.HeapSlack == 0 {
		cfg.HeapSlack = 8 << 20
	}
	c := newChecker(cfg, events)
	c.definite()
	c.observations()
	c.calls()
	c.bounded()
	return c.out
}

type checker struct {
	cfg      Config
	agentID  string
	ev       []Event // sorted by At, then ID
	byID     map[int]*Event
	pubs     []*Event            // non-bulk publishes
	bulks    []*Event            // bulk publishes
	pubsOn   map[string][]*Event // non-bulk publishes by id, in order
	links    []*Event
	settles  []*Event
	faults   []*Event
	defAt    map[int]time.Duration // publish ID -> when it is known applied
	creators []time.Duration       // when each entry-creating per-op publish began
	killers  []time.Duration       // when each per-op terminate publish began
	out      []Violation
}

func newChecker(cfg Config, events []Event) *checker {
	c := &checker{
		cfg:     cfg,
		agentID: controlstore.AgentOpIDPrefix + cfg.AgentID,
		ev:      slices.Clone(events),
		byID:    make(map[int]*Event, len(events)),
		pubsOn:  make(map[string][]*Event),
		defAt:   make(map[int]time.Duration),
	}
	slices.SortStableFunc(c.ev, func(a, b Event) int {
		if r := cmp.Compare(a.At, b.At); r != 0 {
			return r
		}
		return cmp.Compare(a.ID, b.ID)
	})
	for i := range c.ev {
		e := &c.ev[i]
		c.byID[e.ID] = e
		switch e.Kind {
		case KindPublish:
			if e.Bulk > 0 {
				c.bulks = append(c.bulks, e)
				continue
			}
			c.pubs = append(c.pubs, e)
			c.pubsOn[e.OpID] = append(c.pubsOn[e.OpID], e)
			if e.Applies && c.isOp(e.OpID) && e.Signal != controlstore.SignalResume {
				c.creators = append(c.creators, e.At)
				if e.Signal == controlstore.SignalTerminate {
					c.killers = append(c.killers, e.At)
				}
			}
		case KindLink:
			c.links = append(c.links, e)
		case KindSettle:
			c.settles = append(c.settles, e)
		case KindFault:
			c.faults = append(c.faults, e)
		}
	}
	return c
}

// isOp reports whether id names one op (not a reserved scope).
func (c *checker) isOp(id string) bool {
	return id != controlstore.GlobalOpID && !strings.HasPrefix(id, controlstore.AgentOpIDPrefix)
}

func (c *checker) report(g Guarantee, excerpt []*Event, format string, args ...any) {
	slices.SortStableFunc(excerpt, func(a, b *Event) int {
		if r := cmp.Compare(a.At, b.At); r != 0 {
			return r
		}
		return cmp.Compare(a.ID, b.ID)
	})
	excerpt = slices.CompactFunc(excerpt, func(a, b *Event) bool { return a.ID == b.ID })
	if len(excerpt) > maxExcerpt {
		excerpt = excerpt[len(excerpt)-maxExcerpt:]
	}
	v := Violation{Guarantee: g, Detail: fmt.Sprintf(format, args...)}
	for _, e := range excerpt {
		v.Excerpt = append(v.Excerpt, *e)
	}
	c.out = append(c.out, v)
}

// linkAt returns the index of the last link sample at or before t (-1 if
// none).
func (c *checker) linkAt(t time.Duration) int {
	i, _ := slices.BinarySearchFunc(c.links, t, func(e *Event, t time.Duration) int {
		if e.At <= t {
			return -1
		}
		return 1
	})
	return i - 1
}

// definite finds the publishes known to have been applied, and by when: a
// publish P is, once a later marker M (published after P returned) was seen
// applied at settle S, if the link samples from the last one before P to
// the first one after S all show one live stream whose skipped count did
// not change. The gateway delivers a stream's envelopes in publish order
// and skips only when lagging, so P was applied before M.
func (c *checker) definite() {
	for _, p := range c.pubs {
		if !p.Applies {
			continue
		}
		a := c.linkAt(p.At)
		if a < 0 || !c.links[a].Live || c.links[a].Stream == 0 {
			continue
		}
		// The first settle whose marker was published after p returned
		// (a settle comes after its marker: start the scan at p.End).
		first, _ := slices.BinarySearchFunc(c.settles, p.End, func(s *Event, t time.Duration) int { return cmp.Compare(s.At, t) })
		for _, s := range c.settles[first:] {
			m := c.byID[s.Ref]
			if m == nil || m.At < p.End || s.At < m.End {
				continue
			}
			b := a
			for b < len(c.links) && c.links[b].At < s.At {
				b++
			}
			if b == len(c.links) {
				break
			}
			ok := true
			for _, l := range c.links[a : b+1] {
				if !l.Live || l.Stream != c.links[a].Stream || l.Skipped != c.links[a].Skipped {
					ok = false
					break
				}
			}
			if ok {
				c.defAt[p.ID] = s.At
			}
			break
		}
	}
}

// next is the store's transition function.
func next(st controlstore.State, sig controlstore.Signal) controlstore.State {
	if st == controlstore.Terminated {
		return st
	}
	switch sig {
	case controlstore.SignalPause:
		return controlstore.Paused
	case controlstore.SignalResume:
		return controlstore.Running
	case controlstore.SignalTerminate:
		return controlstore.Terminated
	}
	return st
}

// stateSet is a set of states, one bit each.
type stateSet uint8

func (s stateSet) has(st controlstore.State) bool { return s&(1<<st) != 0 }

func (s stateSet) step(sig controlstore.Signal) stateSet {
	var out stateSet
	for st := controlstore.Running; st <= controlstore.Terminated; st++ {
		if s.has(st) {
			out |= 1 << next(st, sig)
		}
	}
	return out
}

func (s stateSet) String() string {
	var names []string
	for st := controlstore.Running; st <= controlstore.Terminated; st++ {
		if s.has(st) {
			names = append(names, st.String())
		}
	}
	return "{" + strings.Join(names, ",") + "}"
}

// evictable reports whether a paused entry of op id could have been
// evicted between from and to: at least MaxEntries newer entries were
// published.
func (c *checker) evictable(id string, from, to time.Duration) bool {
	if !c.isOp(id) {
		return false
	}
	return c.countBetween(c.creators, from, to, func(sig controlstore.Signal) bool { return sig != controlstore.SignalResume }) >= c.cfg.MaxEntries
}

// forgettable reports whether a terminate of op id could have been
// forgotten between from and to: compacted once MaxEntries newer entries
// arrived, then outlived by TerminatedHistory further compactions, each of
// which takes a newer per-op terminate.
func (c *checker) forgettable(id string, from, to time.Duration) bool {
	if !c.isOp(id) {
		return false
	}
	return c.countBetween(c.killers, from, to, func(sig controlstore.Signal) bool { return sig == controlstore.SignalTerminate }) >=
		c.cfg.MaxEntries+c.cfg.TerminatedHistory
}

// countBetween counts the times in sorted in (from, to), plus the bulk
// publishes of a signal that counts, overlapping that interval.
func (c *checker) countBetween(sorted []time.Duration, from, to time.Duration, counts func(controlstore.Signal) bool) int {
	lo, _ := slices.BinarySearch(sorted, from+1)
	hi, _ := slices.BinarySearch(sorted, to)
	n := max(hi-lo, 0)
	for _, b := range c.bulks {
		if b.Applies && b.At < to && b.End > from && counts(b.Signal) {
			n += b.Bulk
		}
	}
	return n
}

// observations checks every read of the store: a terminated id stays
// terminated, a paused id runs again only after a RESUME was published,
// and every state is one the published signals allow, given which of them
// were certainly delivered (see definite). An observation's At is taken
// before the read and its End after it.
func (c *checker) observations() {
	seenTerm := map[string]*Event{}
	seenPaused := map[string]*Event{}
	for i := range c.ev {
		o := &c.ev[i]
		if o.Kind != KindObserve {
			continue
		}
		end := max(o.End, o.At)
		possible, anyOrder := stateSet(1<<controlstore.Running), stateSet(1<<controlstore.Running)
		var firstPub, firstPause *Event
		var excerpt []*Event
		for _, p := range c.pubsOn[o.OpID] {
			if !p.Applies || p.At >= end {
				continue
			}
			if firstPub == nil {
				firstPub = p
			}
			if firstPause == nil && p.Signal == controlstore.SignalPause {
				firstPause = p
			}
			excerpt = append(excerpt, p)
			anyOrder |= anyOrder.step(p.Signal)
			if at, ok := c.certainAt(p); ok && at <= o.At {
				possible = possible.step(p.Signal)
			} else {
				possible |= possible.step(p.Signal)
			}
		}
		excerpt = append(excerpt, o)
		// Only a violation needs the link samples around (built lazily).
		around := func(extra ...*Event) []*Event {
			return append(append(excerpt, extra...), c.linksAround(firstPub, o)...)
		}

		if t := seenTerm[o.OpID]; t != nil && o.State != controlstore.Terminated {
			if !c.forgettable(o.OpID, t.At, end) {
				c.report(TerminateAbsorbing, around(t), "%s was observed terminated at %.4fs, then %s at %.4fs",
					short(o.OpID), t.At.Seconds(), o.State, o.At.Seconds())
			}
			continue
		}
		if p := seenPaused[o.OpID]; p != nil && o.State == controlstore.Running && firstPause != nil &&
			!c.resumedAfter(o.OpID, firstPause.At, end) && !c.evictable(o.OpID, p.At, end) {
			c.report(NoSpuriousResume, around(p), "%s was observed paused at %.4fs, then running at %.4fs, with no RESUME published",
				short(o.OpID), p.At.Seconds(), o.At.Seconds())
			continue
		}
		switch o.State {
		case controlstore.Terminated:
			if seenTerm[o.OpID] == nil {
				seenTerm[o.OpID] = o
			}
		case controlstore.Paused:
			seenPaused[o.OpID] = o
		}
		if possible.has(o.State) || (firstPub != nil && c.evictable(o.OpID, firstPub.At, end)) {
			continue
		}
		if !anyOrder.has(o.State) {
			c.report(LiveDelivery, around(), "%s is %s, which no published signal explains", short(o.OpID), o.State)
			continue
		}
		c.report(LiveDelivery, around(), "%s is %s, but the signals certainly delivered while live allow only %v",
			short(o.OpID), o.State, possible)
	}
}

// certainAt is when p is certain to have applied, if it is: when it was
// certainly delivered, and for a RESUME of a reserved scope a settle
// window later.
func (c *checker) certainAt(p *Event) (time.Duration, bool) {
	at, ok := c.defAt[p.ID]
	if ok && p.Signal == controlstore.SignalResume && !c.isOp(p.OpID) {
		at += c.cfg.ResumeSettle
	}
	return at, ok
}

// resumedAfter reports whether a RESUME of id was published in (from, to).
func (c *checker) resumedAfter(id string, from, to time.Duration) bool {
	for _, p := range c.pubsOn[id] {
		if p.Applies && p.Signal == controlstore.SignalResume && p.At > from && p.At < to {
			return true
		}
	}
	return false
}

// linksAround returns the link samples and settles from just before from
// to just after o, for excerpts (bounded).
func (c *checker) linksAround(from, o *Event) []*Event {
	start := o.At
	if from != nil {
		start = from.At
	}
	var out []*Event
	i := max(c.linkAt(start), 0)
	for ; i < len(c.links) && c.links[i].At <= o.At; i++ {
		// Of a run of identical samples, the first and the last say it all.
		l := c.links[i]
		if n := len(out); n >= 2 && sameLink(out[n-1], l) && sameLink(out[n-2], l) {
			out[n-1] = l
			continue
		}
		out = append(out, l)
	}
	if i < len(c.links) {
		out = append(out, c.links[i])
	}
	for _, s := range c.settles {
		if s.At >= start && s.At <= o.At {
			out = append(out, s)
			if m := c.byID[s.Ref]; m != nil {
				out = append(out, m)
			}
		}
	}
	for _, f := range c.faults {
		if f.At >= start && f.At <= o.At {
			out = append(out, f)
		}
	}
	if len(out) > maxExcerpt/2 {
		out = out[len(out)-maxExcerpt/2:]
	}
	return out
}

func sameLink(a, b *Event) bool {
	return a.Live == b.Live && a.Stream == b.Stream && a.Skipped == b.Skipped
}

// termEvidence is the earliest sign that id was terminated in the store.
type termEvidence struct {
	at  time.Duration
	ev  *Event
	src Guarantee // TerminateEnforced (the store applied it) or TerminateAbsorbing (a call was refused)
}

// calls checks gate decisions against the terminates the store applied and
// the resumes that were published.
func (c *checker) calls() {
	term := map[string]termEvidence{}
	note := func(id string, at time.Duration, e *Event, src Guarantee) {
		if t, ok := term[id]; !ok || at < t.at {
			term[id] = termEvidence{at, e, src}
		}
	}
	for i := range c.ev {
		e := &c.ev[i]
		switch {
		case e.Kind == KindApplied:
			note(e.OpID, e.At, e, TerminateEnforced)
		case e.Kind == KindObserve && e.State == controlstore.Terminated:
			note(e.OpID, e.At, e, TerminateEnforced)
		case e.Kind == KindCall && e.Outcome == OutcomeTerminated && e.TerminatedBy != "":
			// A refused call is evidence for later calls: the gate must
			// not let a call of that scope through again.
			note(e.TerminatedBy, e.End, e, TerminateAbsorbing)
		}
	}

	for i := range c.ev {
		call := &c.ev[i]
		if call.Kind != KindCall {
			continue
		}
		covering := []string{controlstore.GlobalOpID, c.agentID}
		if call.OpID != "" {
			covering = append(covering, call.OpID)
		}
		var t termEvidence
		found := false
		for _, id := range covering {
			if ev, ok := term[id]; ok && (!found || ev.at < t.at) {
				if c.forgettable(id, ev.at, call.At) {
					continue
				}
				t, found = ev, true
			}
		}
		if !found || t.ev == call {
			c.resumes(call)
			continue
		}
		ex := []*Event{call, t.ev}
		switch {
		case call.At > t.at && call.Reached:
			c.report(t.src, ex, "call of %s started %.4fs after the terminate (%.4fs) yet reached the invoker",
				short(call.OpID), (call.At - t.at).Seconds(), t.at.Seconds())
		case call.Reached && call.Invoked > t.at && call.Outcome != OutcomeTerminated:
			c.report(TerminateEnforced, ex, "call of %s reached the invoker after the terminate and ended %s",
				short(call.OpID), call.Outcome)
		case call.Reached && call.Invoked <= t.at && call.End > t.at && call.Dur > 0 && t.at < call.At+call.Dur &&
			call.Outcome != OutcomeTerminated:
			c.report(TerminateEnforced, ex, "call of %s was in flight when the terminate was applied and ended %s, not terminated",
				short(call.OpID), call.Outcome)
		case !call.Reached && call.At < t.at && call.End > t.at+c.cfg.HoldWake && call.Outcome != OutcomeTerminated:
			c.report(TerminateEnforced, ex, "call of %s was held when the terminate was applied and ended %s %.3fs later",
				short(call.OpID), call.Outcome, (call.End - t.at).Seconds())
		default:
			c.resumes(call)
		}
	}
}

// resumes checks that a call that was held and then went ahead was released
// by a RESUME of the id that held it, published after a pause of that id.
func (c *checker) resumes(call *Event) {
	if call.HeldBy == "" || !call.Reached {
		return
	}
	var firstPause *Event
	for _, p := range c.pubsOn[call.HeldBy] {
		if p.Applies && p.Signal == controlstore.SignalPause && p.At < call.At {
			firstPause = p
			break
		}
	}
	if firstPause == nil {
		c.report(LiveDelivery, []*Event{call}, "call was held by %s, which no published PAUSE explains", short(call.HeldBy))
		return
	}
	if !c.resumedAfter(call.HeldBy, firstPause.At, call.Invoked) {
		ex := []*Event{call, firstPause}
		ex = append(ex, c.linksAround(firstPause, call)...)
		c.report(NoSpuriousResume, ex, "call held by %s went ahead at %.4fs with no RESUME of %s published since pause #%d",
			short(call.HeldBy), call.Invoked.Seconds(), short(call.HeldBy), firstPause.ID)
	}
}

// bounded compares the final resources with the baseline.
func (c *checker) bounded() {
	var base, final *Event
	for i := range c.ev {
		e := &c.ev[i]
		if e.Kind != KindResources {
			continue
		}
		switch e.Note {
		case "baseline":
			if base == nil {
				base = e
			}
		case "final":
			final = e
		}
	}
	if base == nil || final == nil {
		return
	}
	if final.Goroutines > base.Goroutines+c.cfg.GoroutineSlack {
		c.report(Bounded, []*Event{base, final}, "%d goroutines after the run, %d before (slack %d)",
			final.Goroutines, base.Goroutines, c.cfg.GoroutineSlack)
	}
	if final.Heap > base.Heap+c.cfg.HeapSlack {
		c.report(Bounded, []*Event{base, final}, "heap %.1f MiB after the run, %.1f MiB before (slack %.1f MiB)",
			float64(final.Heap)/(1<<20), float64(base.Heap)/(1<<20), float64(c.cfg.HeapSlack)/(1<<20))
	}
}

// Coverage says how much of a history Check could hold to account: of the
// publishes a store accepts (settle markers included), how many were
// certainly delivered (LiveDelivery binds them); how many store reads,
// calls and held-then-released calls it checked.
type Coverage struct {
	Applicable, Certain, Observations, Calls, Released int
}

// Cover computes the coverage of events under cfg.
func Cover(cfg Config, events []Event) Coverage {
	c := newChecker(cfg, events)
	c.definite()
	var cv Coverage
	for _, p := range c.pubs {
		if p.Applies {
			cv.Applicable++
		}
	}
	cv.Certain = len(c.defAt)
	for i := range c.ev {
		switch e := &c.ev[i]; e.Kind {
		case KindObserve:
			cv.Observations++
		case KindCall:
			cv.Calls++
			if e.HeldBy != "" && e.Reached {
				cv.Released++
			}
		}
	}
	return cv
}
