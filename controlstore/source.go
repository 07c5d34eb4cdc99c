package controlstore

import (
	"context"
	"log/slog"
	"strconv"
	"time"
)

// SourceKind says which signals a source carries, and so what the store is
// blind to while no source of that kind is live.
type SourceKind uint8

const (
	// SourceGateway is a gateway's OpControlStream: per-op signals and the
	// agent and global halts the gateway publishes or bridges from the bus.
	// It replays nothing: what is published while it is down is lost.
	SourceGateway SourceKind = iota
	// SourceBus is a durable, ordered feed of the agent and global halts
	// (the deployment's NATS JetStream bus). It resumes where it left off,
	// so it misses nothing within the bus's retention.
	SourceBus
	numSourceKinds
)

// String returns "gateway" or "bus".
func (k SourceKind) String() string {
	switch k {
	case SourceGateway:
		return "gateway"
	case SourceBus:
		return "bus"
	}
	return "kind(" + strconv.Itoa(int(k)) + ")"
}

// Source is one feed of signals into a Store: a gateway stream subscriber or
// a bus consumer. Sources tell the store what they deliver (Apply) and
// whether they are live (SetLive), and the store decides from that, in one
// place, which signal wins and when to fail closed. Create one with
// Store.AddSource; its methods are safe for concurrent use.
//
// Two sources can deliver the same halt, in different orders and with
// different gaps, and a gateway's bridge replays the bus's retained window
// to its streams whenever its own bus link reconnects (a replay of more
// than 256 halts also overruns the gateway's ring, which then skips some).
// The store reconciles them by these rules, for the agent and global
// scopes:
//
//   - A TERMINATE from any source applies at once, and is sticky.
//   - While a bus source runs, the scopes follow the bus. A live bus
//     source's PAUSE and RESUME apply at once; a gateway source's are
//     ignored while a bus source is live (Stats.Superseded). The bus
//     carries every such halt in publish order; the gateway's copy may
//     arrive late, twice, replayed, or not at all.
//   - A bus source catching up after an outage (started, not yet live)
//     delivers old halts in order; only the last PAUSE or RESUME of each
//     scope counts, applied when the source goes live (Stats.Deferred).
//   - During a bus outage (a bus source runs, none is live), the gateway
//     bridges the gap: its PAUSE applies at once, and its RESUME of a
//     paused scope waits for the bus. When a bus source goes live, what
//     the bus has for a scope becomes the scope's state; a scope it has
//     nothing for had no halt published since the bus began, so what the
//     gateway changed in it during the outage was a replay of older halts
//     and is undone (Stats.Reverted), and a RESUME still waiting is dropped.
//   - A bus outage longer than WithBusGrace (30 s by default) ends the
//     wait: the gateway's word stands from then on (what it changes is not
//     reverted when the bus returns, since the bus may lose halts to its
//     retention; only a PAUSE the bus last saw may still be re-asserted,
//     the safe side), and its waiting RESUMEs settle. So does stopping the
//     last bus source. A bus that stays away cannot leave a scope paused
//     for ever. (A RESUME still settling when the first bus source starts
//     waits like the others, and is dropped if the bus, live, has nothing
//     for the scope: the scope then stays paused, the safe side, until the
//     operator's next halt.)
//   - Where the gateway's word stands (no bus source, or past the grace),
//     its RESUME of a paused scope still settles first (WithResumeSettle,
//     one second by default; Stats.Settled), and a newer PAUSE or
//     TERMINATE of the scope from any source within the window cancels it,
//     so that a replayed PAUSE, RESUME, PAUSE does not let held calls run
//     in between, provided the replay's last PAUSE arrives within the
//     window. Releasing late is the safe side; a PAUSE applies at once.
//   - A bus source that starts has said nothing yet: what it said before
//     it stopped is never re-asserted; and when several run, the one that
//     goes live first speaks (it has caught up, so its word is the newest).
//     Once the gateway's word stands, a bus's RESUME from before the outage
//     is forgotten, so that it cannot undo a newer PAUSE the bus lost. A bus that detects it
//     lost halts (retention expired while it was away) still re-asserts its
//     last view when it goes live: the safe side when that view is a pause,
//     which an operator then re-issues a resume to lift.
//   - Per-op signals apply from any source, at once, last one wins (only
//     the gateway carries them, and it does not replay them).
//
// The rules assume what the real deployment does: when it has a bus, the
// operator API publishes every agent and global halt on it, and the
// gateway's copies come through it.
type Source struct {
	s     *Store
	name  string
	kind  SourceKind
	limit time.Duration // fail-closed limit; < 0: none

	// Under s.mu.
	running bool
	live    bool
	since   time.Time
	hold    string // non-empty: this source holds the store failing closed
	// view is a bus source's last PAUSE or RESUME of the global [0] and
	// agent [1] scopes since it last started (SignalUnspecified: none).
	view [2]Signal
}

// SourceOption configures a Source.
type SourceOption func(*sourceOptions)

type sourceOptions struct {
	failClosedAfter time.Duration
}

// FailClosedAfter makes the store fail closed (every gated call fails with
// ErrUnavailable; a terminate still wins) once no running source of this
// source's kind has been live for d, and stop as soon as one is live again.
// Counting starts when the kind last stopped being live, or when its first
// source started. d = 0 fails closed whenever no source of the kind is live;
// a negative d is treated as 0, the safe side.
//
// Because the rule is per kind, a second subscriber that is down does not
// make a store fail closed while another source of its kind is live.
func FailClosedAfter(d time.Duration) SourceOption {
	return func(o *sourceOptions) { o.failClosedAfter = max(d, 0) }
}

// kindState is what the store knows of all sources of one kind. Under mu.
type kindState struct {
	live      int         // running sources of this kind that are live
	running   int         // running sources of this kind
	downSince time.Time   // when live last became 0
	failed    bool        // its fail-closed limit has passed
	stop      func() bool // the fail-closed timer's, if armed
	gen       uint64      // bumped whenever the timer is re-armed; a stale timer does nothing
}

// AddSource registers a source of signals. name identifies it in
// SyncStatus and logs (for example "stream" or "jetstream"); it need not be
// unique. The source starts stopped: call Start when it begins to run.
// A nil SourceOption is ignored; an unknown kind is taken as SourceGateway,
// the kind whose absence blinds the store to most.
func (s *Store) AddSource(name string, kind SourceKind, opts ...SourceOption) *Source {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addSourceLocked(name, kind, opts)
}

func (s *Store) addSourceLocked(name string, kind SourceKind, opts []SourceOption) *Source {
	o := sourceOptions{failClosedAfter: -1}
	for _, opt := range opts {
		if opt != nil {
			opt(&o)
		}
	}
	if kind >= numSourceKinds {
		kind = SourceGateway
	}
	src := &Source{s: s, name: name, kind: kind, limit: o.failClosedAfter, since: s.now()}
	s.sources = append(s.sources, src)
	s.syncChangedLocked()
	return src
}

// Name returns the source's name.
func (src *Source) Name() string { return src.name }

// Kind returns the source's kind.
func (src *Source) Kind() SourceKind { return src.kind }

// Apply applies one signal delivered by this source, by the rules in the
// Source documentation. It returns what Store.Apply returns; a signal the
// rules ignore returns nil.
func (src *Source) Apply(opID string, sig Signal) error {
	return src.s.apply(opID, sig, src)
}

// Start records that the source has begun to run, not yet live. From now
// on its fail-closed limit counts. Calling Start on a running source does
// nothing.
func (src *Source) Start() {
	s := src.s
	s.mu.Lock()
	defer s.unlockAndLog()
	if src.running {
		return
	}
	k := &s.kinds[src.kind]
	src.running, src.live, src.since = true, false, s.now()
	if k.running == 0 && k.live == 0 {
		k.downSince = src.since
	}
	// A bus source that starts has said nothing yet: a view left from
	// before it stopped is no newer than what the gateway delivered since,
	// and must not be re-asserted.
	src.view = [2]Signal{}
	k.running++
	if src.kind == SourceBus && k.running == 1 && k.live == 0 {
		s.busDownLocked()
	}
	s.rearmKind(src.kind)
}

// Stop records that the source has stopped running. It is no longer live,
// and its fail-closed limit stops counting; a store already failing closed
// stays so until a source of the kind is live again (a stopped feed does not
// make a blind store safe).
func (src *Source) Stop() {
	s := src.s
	s.mu.Lock()
	defer s.unlockAndLog()
	if !src.running {
		return
	}
	src.setLiveLocked(false)
	src.running = false
	s.kinds[src.kind].running--
	if src.kind == SourceBus && s.kinds[SourceBus].running == 0 {
		s.busGoneLocked()
	}
	s.rearmKind(src.kind)
}

// SetLive records whether the source is live: delivering everything that is
// published from now on. A transition to live ends failing closed for the
// source's kind. It does nothing on a stopped source.
func (src *Source) SetLive(live bool) {
	s := src.s
	s.mu.Lock()
	defer s.unlockAndLog()
	if src.running {
		src.setLiveLocked(live)
	}
}

func (src *Source) setLiveLocked(live bool) {
	if src.live == live {
		return
	}
	s := src.s
	k := &s.kinds[src.kind]
	src.live, src.since = live, s.now()
	if live {
		k.live++
		if k.live == 1 {
			k.failed = false
		}
		if src.kind == SourceBus && k.live == 1 {
			s.busLiveLocked(src)
		}
	} else {
		k.live--
		if k.live == 0 {
			k.downSince = src.since
			if src.kind == SourceBus {
				s.busDownLocked()
			}
		}
	}
	s.rearmKind(src.kind)
}

// HoldFailClosed makes the store fail closed, whatever its sources'
// liveness, until ReleaseFailClosed: for a source that knows it has lost
// signals (a bus whose retention expired while it was away) and was told
// to stop everything until an operator looks. reason is reported in
// SyncStatus; an empty reason is recorded as "held".
func (src *Source) HoldFailClosed(reason string) {
	if reason == "" {
		reason = "held"
	}
	s := src.s
	s.mu.Lock()
	defer s.unlockAndLog()
	src.hold = reason
	s.updateFailClosed()
	s.syncChangedLocked()
}

// ReleaseFailClosed ends this source's HoldFailClosed.
func (src *Source) ReleaseFailClosed() {
	s := src.s
	s.mu.Lock()
	defer s.unlockAndLog()
	src.hold = ""
	s.updateFailClosed()
	s.syncChangedLocked()
}

// rearmKind re-evaluates kind k's fail-closed limit: the smallest limit of
// its running sources, counted from downSince while no source of k is live.
// Under mu.
func (s *Store) rearmKind(k SourceKind) {
	ks := &s.kinds[k]
	ks.gen++
	if ks.stop != nil {
		ks.stop()
		ks.stop = nil
	}
	limit := time.Duration(-1)
	for _, src := range s.sources {
		if src.kind == k && src.running && src.limit >= 0 && (limit < 0 || src.limit < limit) {
			limit = src.limit
		}
	}
	if ks.live == 0 && limit >= 0 && !ks.failed {
		wait := limit - s.now().Sub(ks.downSince)
		if wait <= 0 {
			ks.failed = true
		} else {
			gen := ks.gen
			ks.stop = s.afterFunc(wait, func() {
				s.mu.Lock()
				defer s.unlockAndLog()
				if ks.gen == gen && ks.live == 0 {
					ks.failed = true
					ks.stop = nil
					s.updateFailClosed()
				}
			})
		}
	}
	s.updateFailClosed()
	if live := s.liveLocked(); live != s.lastLive {
		s.lastLive, s.liveSince = live, s.now()
	}
	s.syncChangedLocked()
}

// syncChangedLocked wakes the watchers of SyncChanged. Under mu.
func (s *Store) syncChangedLocked() {
	close(s.syncCh)
	s.syncCh = make(chan struct{})
}

// SyncChanged returns a channel that is closed at the next change of what
// SyncStatus reports (a source started, stopped, went live or down, or
// failing closed changed), so that a health reporter needs no polling.
// Read SyncStatus after it closes, then call SyncChanged again.
func (s *Store) SyncChanged() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.syncCh
}

// updateFailClosed recomputes whether the store fails closed: any kind past
// its limit, any source holding it, or the deprecated SetFailClosed switch.
// A change is made inside a version bump, and wakes every held call. Under mu.
func (s *Store) updateFailClosed() {
	on := s.manualFailClosed
	for i := range s.kinds {
		on = on || s.kinds[i].failed
	}
	for _, src := range s.sources {
		on = on || src.hold != ""
	}
	if s.failClosed.Load() == on {
		return
	}
	s.version.Add(1)
	s.armed.Store(true)
	s.failClosed.Store(on)
	s.rearm()
	s.version.Add(1)
	s.notifyScopes()
	s.failClosedChanged = true
	s.syncChangedLocked()
}

// unlockAndLog releases mu and then logs a change of failing closed, so
// that a slow log handler never delays a signal waiting for mu.
func (s *Store) unlockAndLog() {
	changed, on := s.failClosedChanged, s.failClosed.Load()
	s.failClosedChanged = false
	var why []slog.Attr
	if changed && on {
		why = s.failClosedReasonsLocked()
	}
	s.mu.Unlock()
	if !changed {
		return
	}
	if on {
		s.log.LogAttrs(context.Background(), slog.LevelWarn,
			"op control failing closed: every gated call fails with ErrUnavailable until this clears", why...)
		return
	}
	s.log.LogAttrs(context.Background(), slog.LevelInfo, "op control no longer failing closed")
}

// failClosedReasonsLocked says why the store fails closed. Under mu.
func (s *Store) failClosedReasonsLocked() []slog.Attr {
	var attrs []slog.Attr
	for i := range s.kinds {
		if s.kinds[i].failed {
			attrs = append(attrs, slog.String("blind", SourceKind(i).String()),
				slog.Time("down_since", s.kinds[i].downSince))
		}
	}
	for _, src := range s.sources {
		if src.hold != "" {
			attrs = append(attrs, slog.String("held_by", src.name), slog.String("reason", src.hold))
		}
	}
	if s.manualFailClosed {
		attrs = append(attrs, slog.Bool("manual", true))
	}
	return attrs
}

// reconcileLocked decides whether a signal for a reserved scope from src
// applies now (true), by the rules in the Source documentation. Under mu.
func (s *Store) reconcileLocked(src *Source, scope *entry, sig Signal) bool {
	i := s.scopeIndex(scope)
	if sig == SignalTerminate {
		s.cancelSettleLocked(i)
		return true
	}
	switch src.kind {
	case SourceBus:
		src.view[i] = sig
		if !src.live {
			// Deferred, but the newer word: a gateway RESUME waiting for
			// the scope must not release it meanwhile.
			if sig == SignalPause {
				s.cancelSettleLocked(i)
			}
			s.stats.Deferred++
			return false
		}
		s.cancelSettleLocked(i) // the bus speaks for the scope now
		return true
	case SourceGateway:
		k := &s.kinds[SourceBus]
		if k.live > 0 {
			s.stats.Superseded++
			return false
		}
		if sig == SignalPause {
			s.cancelSettleLocked(i)
			s.notePriorLocked(i)
			return true
		}
		if State(scope.state.Load()) != Paused {
			return true // changes nothing
		}
		if s.resumeSettle > 0 || s.busWaitingLocked() {
			s.settleLocked(i)
			return false
		}
	}
	return true
}

// notePriorLocked records, before a gateway changes reserved scope i
// during a bus outage within its grace, the scope's state, once per
// outage: if the bus, back within its grace, has nothing for the scope, no
// halt of it was published since the bus began, so the gateway's changes
// were replays of older halts, and the scope returns to this state (see
// busLiveLocked). Under mu.
func (s *Store) notePriorLocked(i int) {
	if !s.busWaitingLocked() || s.gwPrior[i].set {
		return
	}
	s.gwPrior[i] = priorState{set: true, state: State(s.scopeAt(i).state.Load())}
}

// priorState is a reserved scope's state before a gateway changed it
// during a bus outage.
type priorState struct {
	set   bool
	state State
}

// busWaitingLocked reports whether a gateway RESUME waits for the bus: a
// bus source is running, none is live, and the outage is within
// WithBusGrace. Under mu.
func (s *Store) busWaitingLocked() bool {
	k := &s.kinds[SourceBus]
	return s.busGrace > 0 && k.running > 0 && k.live == 0 && !s.busGraceOver
}

// busDownLocked runs when no bus source is live any more while one runs
// (or the first one starts): the grace for gateway RESUMEs starts. Under mu.
func (s *Store) busDownLocked() {
	s.busGraceGen++
	if s.busGraceStop != nil {
		s.busGraceStop()
		s.busGraceStop = nil
	}
	s.busGraceOver = s.busGrace <= 0
	if s.busGraceOver {
		s.forgetBusResumesLocked()
		return
	}
	gen := s.busGraceGen
	s.busGraceStop = s.afterFunc(s.busGrace, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.busGraceGen != gen {
			return
		}
		// The bus has missed its grace: the gateway's word stands (what
		// it changed is no longer undone when the bus returns: the bus
		// may have lost halts to its retention meanwhile), and the
		// RESUMEs that waited for the bus settle now.
		s.busGraceOver, s.busGraceStop = true, nil
		s.gwPrior = [2]priorState{}
		s.forgetBusResumesLocked()
		for i := range s.settle {
			if st := &s.settle[i]; st.pending && st.stop == nil {
				s.armSettleLocked(i, 0) // its window has passed; the others keep theirs
			}
		}
	})
}

// forgetBusResumesLocked drops every bus source's view that is a RESUME:
// once the gateway's word stands, a RESUME from before the outage may be
// older than a PAUSE the bus has lost to its retention, and must never be
// re-asserted over it. A PAUSE view may stay: re-asserting it errs on the
// safe side. Under mu.
func (s *Store) forgetBusResumesLocked() {
	for _, src := range s.sources {
		for i, sig := range src.view {
			if sig == SignalResume {
				src.view[i] = SignalUnspecified
			}
		}
	}
}

// busGoneLocked runs when no bus source runs any more: the gateway alone
// decides, its changes are final, and the RESUMEs that waited for the bus
// settle from now. Under mu.
func (s *Store) busGoneLocked() {
	s.busGraceGen++
	if s.busGraceStop != nil {
		s.busGraceStop()
		s.busGraceStop = nil
	}
	s.gwPrior = [2]priorState{}
	s.rearmWaitingLocked(s.resumeSettle)
}

// rearmWaitingLocked makes every pending settle due in d. Under mu.
func (s *Store) rearmWaitingLocked(d time.Duration) {
	for i := range s.settle {
		if s.settle[i].pending {
			s.armSettleLocked(i, d)
		}
	}
}

// settleTimer is a gateway RESUME of one reserved scope, waiting out the
// settle window or a bus outage. Under mu.
type settleTimer struct {
	pending bool
	stop    func() bool // its timer, if armed
	gen     uint64      // bumped whenever it is armed or cancelled; a stale timer does nothing
}

// settleLocked (re)starts the settle window of a gateway RESUME of
// reserved scope i: a repeated RESUME joins the pending one and restarts
// its window. Each pending RESUME ends exactly once: cancelled, dropped
// when a bus source goes live, or applied. Under mu.
func (s *Store) settleLocked(i int) {
	if !s.settle[i].pending {
		s.stats.Settled++
		s.settle[i].pending = true
	}
	s.armSettleLocked(i, s.resumeSettle)
}

// armSettleLocked makes the pending settle of reserved scope i due in d.
// Under mu.
func (s *Store) armSettleLocked(i int, d time.Duration) {
	st := &s.settle[i]
	if st.stop != nil {
		st.stop()
	}
	st.gen++
	gen := st.gen
	st.stop = s.afterFunc(d, func() { s.settleDue(i, gen) })
}

// cancelSettleLocked drops a RESUME pending for reserved scope i, if any.
// Under mu.
func (s *Store) cancelSettleLocked(i int) {
	st := &s.settle[i]
	if !st.pending {
		return
	}
	if st.stop != nil {
		st.stop()
	}
	*st = settleTimer{gen: st.gen + 1}
	s.stats.SettleCancelled++
}

// settleDue applies a settled RESUME, unless it must wait on for a bus
// outage (busDownLocked's grace timer, busGoneLocked or busLiveLocked
// then decides).
func (s *Store) settleDue(i int, gen uint64) {
	s.mu.Lock()
	st := &s.settle[i]
	if st.gen != gen || !st.pending {
		s.mu.Unlock()
		return
	}
	st.stop = nil
	if s.busWaitingLocked() {
		s.mu.Unlock()
		return
	}
	st.pending = false
	changed := s.changeScopeLocked(s.scopeAt(i), SignalResume)
	s.mu.Unlock()
	if changed {
		s.metrics.apply(SignalResume)
	}
}

// changeScopeLocked moves a reserved scope by sig inside a version bump,
// and reports whether it changed (a terminated scope never does). Under mu.
func (s *Store) changeScopeLocked(scope *entry, sig Signal) bool {
	if cur := State(scope.state.Load()); cur == Terminated || cur == target(sig) {
		return false
	}
	s.version.Add(1)
	// Arm before the state changes; rearm settles it (see apply).
	s.armed.Store(true)
	s.applyScope(scope, sig)
	s.rearm()
	s.version.Add(1)
	s.stats.Applied++
	return true
}

// busLiveLocked runs when a bus source goes live. For each reserved scope,
// a gateway RESUME still pending is dropped; then the bus's view, the last
// halt published for the scope since the bus source began, becomes the
// scope's state: it is at least as new as anything a gateway delivered
// meanwhile. A scope the bus has nothing for had no halt published since
// the bus began, so what the gateway changed during the outage was a
// replay of older halts: the scope returns to its state from before
// (counted in Stats.Reverted). Under mu.
func (s *Store) busLiveLocked(src *Source) {
	s.busGraceGen++
	if s.busGraceStop != nil {
		s.busGraceStop()
		s.busGraceStop = nil
	}
	for i, sig := range src.view {
		s.cancelSettleLocked(i)
		prior := s.gwPrior[i]
		s.gwPrior[i] = priorState{}
		switch {
		case sig != SignalUnspecified:
			s.changeScopeLocked(s.scopeAt(i), sig)
		case prior.set:
			back := SignalResume
			if prior.state == Paused {
				back = SignalPause
			}
			if s.changeScopeLocked(s.scopeAt(i), back) {
				s.stats.Reverted++
			}
		}
	}
}

// scopeAt is the reserved scope with index i: 0 global, 1 agent.
func (s *Store) scopeAt(i int) *entry {
	if i == 1 {
		return &s.agentScope
	}
	return &s.global
}

func (s *Store) scopeIndex(scope *entry) int {
	if scope == &s.agentScope {
		return 1
	}
	return 0
}

// SyncStatus is the store's record of its sources.
type SyncStatus struct {
	// Live reports whether every kind of source that is running has a
	// live source: the store is blind to nothing it was told to watch.
	// A store with no running source is not live.
	Live bool
	// Since is when Live last changed (or when the store was created).
	Since time.Time
	// FailClosed reports whether gated calls currently fail with
	// ErrUnavailable.
	FailClosed bool
	// Sources lists every source, in the order they were added.
	Sources []SourceStatus
}

// SourceStatus is the store's record of one source.
type SourceStatus struct {
	Name    string
	Kind    SourceKind
	Running bool
	Live    bool
	// Since is when Running or Live last changed.
	Since time.Time
	// FailClosedHold is the reason given to HoldFailClosed, or "".
	FailClosedHold string
}

// SyncStatus returns the store's record of its sources.
func (s *Store) SyncStatus() SyncStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := SyncStatus{Live: s.liveLocked(), Since: s.liveSince, FailClosed: s.failClosed.Load()}
	for _, src := range s.sources {
		st.Sources = append(st.Sources, SourceStatus{
			Name: src.name, Kind: src.kind, Running: src.running, Live: src.live,
			Since: src.since, FailClosedHold: src.hold,
		})
	}
	return st
}

// liveLocked computes SyncStatus.Live. Under mu.
func (s *Store) liveLocked() bool {
	watched := false
	for i := range s.kinds {
		k := &s.kinds[i]
		if k.running > 0 {
			watched = true
			if k.live == 0 {
				return false
			}
		}
	}
	return watched
}

// Sync returns SyncStatus().
//
// Deprecated: use SyncStatus, whose name says what it returns.
func (s *Store) Sync() SyncStatus { return s.SyncStatus() }

// SetLive records whether the store's one gateway source is live, creating
// that source (named "default") on first use.
//
// Deprecated: sources report their liveness themselves; use AddSource and
// Source.SetLive.
func (s *Store) SetLive(live bool) {
	src := s.defaultSource()
	src.Start()
	src.SetLive(live)
}

// SetFailClosed switches failing closed on or off by hand, on top of what
// the sources decide.
//
// Deprecated: use FailClosedAfter on a source, or Source.HoldFailClosed.
func (s *Store) SetFailClosed(on bool) {
	s.mu.Lock()
	defer s.unlockAndLog()
	s.manualFailClosed = on
	s.updateFailClosed()
}

func (s *Store) defaultSource() *Source {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.legacySource == nil {
		s.legacySource = s.addSourceLocked("default", SourceGateway, nil)
	}
	return s.legacySource
}
