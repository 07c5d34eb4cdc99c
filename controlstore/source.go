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
// to its streams whenever its own bus link reconnects. The store
// reconciles them by these rules:
//
//   - A TERMINATE from any source applies at once, and is sticky.
//   - A bus source catching up after an outage (started, not yet live)
//     delivers old halts in order; of those, only the last PAUSE or RESUME
//     of each scope counts, applied when the source goes live (counted in
//     Stats.Deferred).
//   - Once a live bus source has delivered a PAUSE or RESUME of the agent
//     or global scope, the bus speaks for that scope: a gateway source's
//     PAUSE and RESUME of it are ignored while a bus source is live
//     (counted in Stats.Superseded). The bus carries every such halt, in
//     publish order, while the gateway's copy may arrive late, twice, or
//     replayed. For a scope the bus has not spoken of (it starts with new
//     halts only, and the first bus source to Start has said nothing), the
//     gateway's copies apply. A bus that detects it lost halts (retention
//     expired while it was away) still re-asserts its last view when it
//     goes live: the safe side when that view is a pause, which an
//     operator then re-issues a resume to lift.
//   - Where a gateway's copy applies, its RESUME of a paused agent or
//     global scope settles first (WithResumeSettle, one second by default;
//     Stats.Settled): a newer PAUSE or TERMINATE of the scope from any
//     source within the window cancels it, so that a replayed PAUSE,
//     RESUME, PAUSE does not let held calls run in between, provided the
//     replay's last PAUSE arrives within the window. Releasing late is the
//     safe side; a PAUSE applies at once.
//   - While a bus source is running but not live, such a RESUME waits
//     for it, up to WithBusGrace (30 s by default) from when the bus last
//     stopped being live: the bridge replays its window exactly when the
//     bus is in trouble (the agent's bus source is then usually
//     reconnecting too), and a long replay overruns the gateway's
//     256-envelope ring, so a replayed RESUME can arrive without the PAUSE
//     behind it. The bus, back, delivers the operator's last word; a bus
//     that stays away past the grace no longer holds the gateway's RESUME
//     back, so the scope cannot stay paused for ever.
//   - Per-op signals apply from any source, at once, last one wins (only
//     the gateway carries them, and it does not replay them).
//
// The rules assume what the real deployment does: when it has a bus, the
// operator API publishes every agent and global halt on it.
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
	live      int       // running sources of this kind that are live
	running   int       // running sources of this kind
	downSince time.Time // when live last became 0
	failed    bool      // its fail-closed limit has passed
	timer     *time.Timer
	gen       uint64 // bumped whenever the timer is re-armed; a stale timer does nothing
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
	if src.kind == SourceBus && k.running == 0 {
		// The first bus source to run has said nothing yet: a view left
		// by a bus source that stopped is no newer than what the
		// gateway delivered since, and must not be re-asserted.
		s.busView = [2]Signal{}
	}
	k.running++
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
		if src.kind == SourceBus {
			s.busLiveLocked()
		}
	} else {
		k.live--
		if k.live == 0 {
			k.downSince = src.since
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
	if ks.timer != nil {
		ks.timer.Stop()
		ks.timer = nil
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
			ks.timer = time.AfterFunc(wait, func() {
				s.mu.Lock()
				defer s.unlockAndLog()
				if ks.gen == gen && ks.live == 0 {
					ks.failed = true
					ks.timer = nil
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
// applies now (true), by the rules in the Source documentation:
//
//   - A TERMINATE always applies now, and cancels a RESUME settling for the
//     scope.
//   - From a bus source, a PAUSE or RESUME records the bus's view of the
//     scope; it applies now only if that source is live (caught up). A
//     source catching up after an outage delivers old halts in order;
//     applying them would take the scope back through states the operator
//     has long left (a resume of a pause that has since been re-issued, for
//     a moment), so only the last one counts, when the source goes live
//     (see busLiveLocked).
//   - From a gateway source, a PAUSE or RESUME is ignored while the bus
//     speaks for the scope (busSpeaksLocked). Otherwise a PAUSE applies now
//     and cancels a settling RESUME; a RESUME of a paused scope settles
//     first (settleLocked), because the gateway's bridge replays its
//     window, and a replayed PAUSE, RESUME, PAUSE must not release every
//     held call for the moment between.
//
// Under mu.
func (s *Store) reconcileLocked(src *Source, scope *entry, sig Signal) bool {
	i := s.scopeIndex(scope)
	if sig == SignalTerminate {
		s.cancelSettleLocked(i)
		return true
	}
	switch src.kind {
	case SourceBus:
		s.busView[i] = sig
		if !src.live {
			// Deferred, but the newer word: a gateway RESUME settling
			// for the scope must not release it meanwhile.
			if sig == SignalPause {
				s.cancelSettleLocked(i)
			}
			s.stats.Deferred++
			return false
		}
		s.cancelSettleLocked(i) // the bus speaks for the scope now
	case SourceGateway:
		if s.busSpeaksLocked(i) {
			s.stats.Superseded++
			return false
		}
		if sig == SignalPause {
			s.cancelSettleLocked(i)
			return true
		}
		if s.resumeSettle > 0 && State(scope.state.Load()) == Paused {
			s.settleLocked(i)
			return false
		}
	}
	return true
}

// busSpeaksLocked reports whether the bus's word on reserved scope i
// outranks a gateway's: a bus source is live and has delivered a PAUSE or
// RESUME of the scope since it began. A bus that has said nothing of the
// scope (it starts with new halts only) has nothing to set against an older
// halt the gateway replays, so the gateway's copy stands. Under mu.
func (s *Store) busSpeaksLocked(i int) bool {
	return s.kinds[SourceBus].live > 0 && s.busView[i] != SignalUnspecified
}

// settleTimer is a gateway RESUME of one reserved scope, waiting out the
// settle window. Under mu.
type settleTimer struct {
	stop func() bool // nil: none pending
	gen  uint64      // bumped whenever one is armed or cancelled; a stale timer does nothing
}

// settleLocked (re)starts the settle window of a gateway RESUME of
// reserved scope i: a repeated RESUME joins the open window and restarts
// it, so that it ends a full window after the last one. Each window ends
// exactly once: cancelled, superseded or applied. Under mu.
func (s *Store) settleLocked(i int) {
	if s.settle[i].stop == nil {
		s.stats.Settled++
	}
	s.armSettleLocked(i, s.resumeSettle)
}

// armSettleLocked makes the settle of reserved scope i due in d. Under mu.
func (s *Store) armSettleLocked(i int, d time.Duration) {
	st := &s.settle[i]
	if st.stop != nil {
		st.stop()
	}
	st.gen++
	gen := st.gen
	st.stop = s.afterFunc(d, func() { s.settleDue(i, gen) })
}

// cancelSettleLocked drops a RESUME settling for reserved scope i, if any.
// Under mu.
func (s *Store) cancelSettleLocked(i int) {
	st := &s.settle[i]
	if st.stop == nil {
		return
	}
	st.stop()
	st.stop = nil
	st.gen++
	s.stats.SettleCancelled++
}

// settleDue applies a settled RESUME, by the rules as they stand when it
// is due: the bus may have come to speak for the scope meanwhile, or be
// on its way back, in which case the RESUME waits for it (see
// WithBusGrace).
func (s *Store) settleDue(i int, gen uint64) {
	s.mu.Lock()
	st := &s.settle[i]
	if st.gen != gen || st.stop == nil {
		s.mu.Unlock()
		return
	}
	if wait := s.busGraceLeftLocked(); wait > 0 {
		s.armSettleLocked(i, wait)
		s.mu.Unlock()
		return
	}
	st.stop = nil
	if s.busSpeaksLocked(i) {
		s.stats.Superseded++
		s.mu.Unlock()
		return
	}
	changed := s.changeScopeLocked(s.scopeAt(i), SignalResume)
	s.mu.Unlock()
	if changed {
		s.metrics.apply(SignalResume)
	}
}

// busGraceLeftLocked is how much longer a gateway RESUME waits for a bus
// source that is running but not live: WithBusGrace counted from when the
// bus last stopped being live (or first started); 0 when no bus source is
// running, one is live, or the grace has passed. Under mu.
func (s *Store) busGraceLeftLocked() time.Duration {
	k := &s.kinds[SourceBus]
	if s.busGrace <= 0 || k.running == 0 || k.live > 0 {
		return 0
	}
	return max(0, s.busGrace-s.now().Sub(k.downSince))
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

// busLiveLocked runs when a bus source goes live: the bus's view of each
// reserved scope becomes the scope's state. That view is the last halt
// published for the scope since the bus source began, so it is at least as
// new as anything a gateway delivered meanwhile; and it undoes a gateway
// copy that arrived late, after a newer halt the bus had already applied.
// Under mu.
func (s *Store) busLiveLocked() {
	for i, sig := range s.busView {
		if sig == SignalUnspecified {
			// The bus has nothing to set against a gateway RESUME that
			// waited for it: it settles from now.
			if s.settle[i].stop != nil {
				s.armSettleLocked(i, s.resumeSettle)
			}
			continue
		}
		s.cancelSettleLocked(i)
		s.changeScopeLocked(s.scopeAt(i), sig)
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
