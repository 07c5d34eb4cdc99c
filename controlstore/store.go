package controlstore

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"
)

// DefaultMaxEntries is the per-op entry cap when WithMaxEntries is not given.
// An entry costs about 300 bytes with its id, so the default bounds the store
// near 5 MiB whatever the gateway sends.
const DefaultMaxEntries = 16384

// Agent is the agent whose ops a store tracks: the subscription triple sent
// to the gateway, which must equal the agent's registered identity byte for
// byte (org and team may be empty).
type Agent struct {
	OrgID   string
	TeamID  string
	AgentID string
}

// Store is this agent's local record of op control. One writer (the stream
// subscriber) applies signals; every gated call reads it. Reads take no lock
// and allocate nothing. A Store must be created with New.
type Store struct {
	agent     Agent
	agentOpID string
	max       int
	seed      hashSeed
	now       func() time.Time

	// Read side, lock-free. version is a sequence lock: writers make it odd
	// while they change state, so a reader can tell that the three scopes it
	// read belong to one moment.
	armed      atomic.Bool
	version    atomic.Uint64
	count      atomic.Int64
	tab        atomic.Pointer[table]
	global     entry
	agentScope entry
	failClosed atomic.Bool
	wakeups    atomic.Uint64 // held calls woken to re-check
	held       atomic.Int64  // calls parked in Wait

	// Write side, under mu.
	mu         sync.Mutex
	paused     entryList
	terminated entryList
	scopesCh   chan struct{} // closed and replaced when the agent or global scope, or failClosed, changes
	waiting    map[*entry]struct{}
	absent     map[opKey]*absentWait
	live       bool
	liveSince  time.Time
	stats      Stats

	calls   [callShards]callShard
	metrics metrics
}

// entry is the state of one op id. Its key, id and errors never change;
// state changes only under Store.mu, inside a version bump.
type entry struct {
	key     opKey
	hash    uint64
	id      string
	state   atomic.Uint32
	evicted atomic.Bool
	// The errors a gate returns for this entry, made once so that a denied
	// or held call allocates nothing.
	termErr  TerminatedError
	pauseErr PausedError

	// changed is closed on the entry's next change. It is made only when a
	// call waits on the entry (most entries are never waited on), and is
	// guarded by Store.mu.
	changed    chan struct{}
	prev, next *entry // FIFO of entries in the same state, under Store.mu
}

func newEntry(id string, sc Scope) *entry {
	return &entry{
		id:       id,
		termErr:  TerminatedError{OpID: id, Scope: sc},
		pauseErr: PausedError{OpID: id, Scope: sc},
	}
}

// waitChan returns the channel closed on e's next change, or on the next
// change of a reserved scope. Under mu.
func (s *Store) waitChan(e *entry) <-chan struct{} {
	if e.changed == nil {
		e.changed = make(chan struct{})
		s.waiting[e] = struct{}{}
	}
	return e.changed
}

// New returns an empty store for agent, or an error when the configuration
// could never work: an empty agent.AgentID (the agent halt
// "agent:{agent_id}" could never match, and the gateway refuses such a
// subscription), a triple that is not valid UTF-8 (it cannot be sent), or an
// option out of range. The agent's own halt id is accepted whatever its
// length. A nil Option is ignored.
func New(agent Agent, opts ...Option) (*Store, error) {
	if agent.AgentID == "" {
		return nil, errors.New("controlstore: New: Agent.AgentID is empty; it must be the agent id registered with the gateway")
	}
	for _, f := range []struct{ name, v string }{{"OrgID", agent.OrgID}, {"TeamID", agent.TeamID}, {"AgentID", agent.AgentID}} {
		if !utf8.ValidString(f.v) {
			return nil, fmt.Errorf("controlstore: New: Agent.%s is not valid UTF-8", f.name)
		}
	}
	o := options{maxEntries: DefaultMaxEntries, now: time.Now}
	for _, opt := range opts {
		if opt != nil {
			opt(&o)
		}
	}
	if err := o.validate(); err != nil {
		return nil, err
	}
	s := &Store{
		agent:     agent,
		agentOpID: AgentOpIDPrefix + agent.AgentID,
		max:       o.maxEntries,
		seed:      newHashSeed(),
		now:       o.now,
		scopesCh:  make(chan struct{}),
		waiting:   make(map[*entry]struct{}),
		absent:    make(map[opKey]*absentWait),
	}
	s.liveSince = s.now()
	s.tab.Store(newTable(2 * o.maxEntries))
	s.global.termErr = TerminatedError{OpID: GlobalOpID, Scope: ScopeGlobal}
	s.global.pauseErr = PausedError{OpID: GlobalOpID, Scope: ScopeGlobal}
	s.agentScope.termErr = TerminatedError{OpID: s.agentOpID, Scope: ScopeAgent}
	s.agentScope.pauseErr = PausedError{OpID: s.agentOpID, Scope: ScopeAgent}
	s.metrics = newMetrics(o.meterProvider)
	return s, nil
}

// Agent returns the agent the store was created for.
func (s *Store) Agent() Agent { return s.agent }

// Armed reports whether anything could hold or deny a call right now: an
// entry, a paused or terminated scope, or failing closed. When it is false,
// Check returns nil for every op; it is one atomic load.
func (s *Store) Armed() bool { return s.armed.Load() }

// Held returns the number of calls parked in Wait right now.
func (s *Store) Held() int { return int(s.held.Load()) }

// Len returns the number of per-op entries held (reserved scopes excluded).
func (s *Store) Len() int { return int(s.count.Load()) }

// State returns the state recorded under exactly opID: "*" and this agent's
// "agent:{agent_id}" return their scope's state; an id with no entry is
// Running. It does not combine scopes; Check does.
func (s *Store) State(opID string) State {
	switch {
	case opID == GlobalOpID:
		return State(s.global.state.Load())
	case opID == s.agentOpID:
		return State(s.agentScope.state.Load())
	case opID == "" || strings.HasPrefix(opID, AgentOpIDPrefix):
		return Running
	}
	k := parseKey(opID)
	if e := s.tab.Load().lookup(&k, k.hash(&s.seed)); e != nil {
		return State(e.state.Load())
	}
	return Running
}

// Check reports, without blocking, whether a call of op may start now:
// nil, a *TerminatedError (any scope terminated), ErrUnavailable (failing
// closed), or a *PausedError (held: call Wait). Terminated wins over
// everything; failing closed wins over paused. The returned errors are
// shared and must not be modified.
//
// Check takes no lock and allocates nothing. With nothing signalled it is
// one atomic load.
func (s *Store) Check(op Op) error {
	if !s.armed.Load() {
		return nil
	}
	return s.check(&op)
}

// check is Check's slow path, kept apart so that Check inlines.
func (s *Store) check(op *Op) error {
	if v := s.version.Load(); v&1 == 0 {
		err := s.evaluate(op)
		if s.version.Load() == v {
			return err
		}
	}
	// A writer changed state while we read. Writers hold mu for well under
	// a microsecond, so waiting for one is cheaper than spinning.
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.evaluate(op)
}

// evaluate combines the three scopes of op. Callers guarantee a consistent
// view (version check or mu).
func (s *Store) evaluate(op *Op) error {
	g := State(s.global.state.Load())
	a := State(s.agentScope.state.Load())
	var e *entry
	o := Running
	if s.count.Load() > 0 && !op.IsZero() {
		if e = s.tab.Load().lookup(&op.key, op.key.hash(&s.seed)); e != nil {
			o = State(e.state.Load())
		}
	}
	switch {
	case g == Terminated:
		return &s.global.termErr
	case a == Terminated:
		return &s.agentScope.termErr
	case o == Terminated:
		return &e.termErr
	case s.failClosed.Load():
		return ErrUnavailable
	case o == Paused:
		return &e.pauseErr
	case a == Paused:
		return &s.agentScope.pauseErr
	case g == Paused:
		return &s.global.pauseErr
	}
	return nil
}

// Wait gates a call of op: it returns nil as soon as every scope of op is
// running, at once if nothing holds it. While any scope is paused it blocks,
// re-checking after every change that concerns op: a RESUME followed at once
// by a PAUSE keeps it held. It returns a *TerminatedError if a scope is or
// becomes terminated, ErrUnavailable while failing closed, an *EvictedError
// if op's paused entry is evicted, and a *PausedError wrapping ctx.Err() if
// ctx ends first.
//
// Only a change of op's own entry, of this agent's scope, of the global
// scope, or of the fail-closed switch wakes a waiter: signals for other ops
// never do.
func (s *Store) Wait(ctx context.Context, op Op) error {
	if err := s.Check(op); !isHeld(err) {
		return err
	}
	return s.wait(ctx, &op)
}

func isHeld(err error) bool {
	_, held := err.(*PausedError) //nolint:errorlint // the store's own errors, never wrapped
	return held
}

// absentWait is where calls wait for an op that has no entry yet: they are
// held by their agent or global scope, and a TERMINATE of the op itself must
// still reach them. Insert closes it. Under mu.
type absentWait struct {
	ch      chan struct{}
	waiters int
}

func (s *Store) wait(ctx context.Context, op *Op) error {
	var waited *entry
	var absent *absentWait
	defer func() {
		if absent != nil {
			s.leaveAbsent(op, absent)
		}
	}()
	for woken := false; ; woken = true {
		if absent != nil {
			s.leaveAbsent(op, absent)
			absent = nil
		}
		if waited != nil && waited.evicted.Load() {
			return &EvictedError{OpID: waited.id}
		}
		// After a wakeup most waiters can leave on the lock-free check, so
		// releasing thousands of held calls does not queue them on mu.
		if woken {
			if err := s.Check(*op); !isHeld(err) {
				return err
			}
		}
		s.mu.Lock()
		err := s.evaluate(op)
		pe, held := err.(*PausedError) //nolint:errorlint // the store's own errors, never wrapped
		if !held {
			s.mu.Unlock()
			return err
		}
		var opCh <-chan struct{}
		waited = nil
		if !op.IsZero() {
			if waited = s.tab.Load().lookup(&op.key, op.key.hash(&s.seed)); waited != nil {
				opCh = s.waitChan(waited)
			} else {
				absent = s.absent[op.key]
				if absent == nil {
					absent = &absentWait{ch: make(chan struct{})}
					s.absent[op.key] = absent
				}
				absent.waiters++
				opCh = absent.ch
			}
		}
		if opCh == nil {
			opCh = s.scopesCh // no op: only the scopes concern this call
		}
		s.mu.Unlock()

		// The channel was read under mu, so any change from here on closes
		// it: counting the call as held now is exact. One channel per waiter
		// (scope changes close op channels too) keeps waking thousands of
		// held calls free of contention on a shared channel.
		s.held.Add(1)
		select {
		case <-ctx.Done():
			s.held.Add(-1)
			return &PausedError{OpID: pe.OpID, Scope: pe.Scope, Err: ctx.Err()}
		case <-opCh:
		}
		s.held.Add(-1)
		s.wakeups.Add(1)
	}
}

// Apply applies one signal from the gateway:
//
//	PAUSE     → Paused, unless Terminated
//	RESUME    → Running (the entry is removed), unless Terminated
//	TERMINATE → Terminated, for good: no later signal lifts it
//
// opID is "*" (every op), "agent:{agent_id}" (every op of this agent) or any
// other id (one op, matched as an exact string; ids in OpenTelemetry form
// are parsed once here). Repeated signals are harmless. Apply rejects, and
// changes nothing for, an unspecified or unknown signal, an empty id, an id
// longer than MaxOpIDLen, and an agent halt addressed to another agent; the
// error is a *RejectedError.
//
// Apply is O(1) amortised and never waits for readers. A TERMINATE cancels,
// before Apply returns, every in-flight call Tracked under a scope it covers.
func (s *Store) Apply(opID string, sig Signal) error {
	if err := s.validate(opID, sig); err != nil {
		s.mu.Lock()
		s.stats.Rejected++
		s.mu.Unlock()
		s.metrics.reject(err.Reason)
		return err
	}
	var scope *entry
	switch opID {
	case GlobalOpID:
		scope = &s.global
	case s.agentOpID:
		scope = &s.agentScope
	}

	s.mu.Lock()
	s.version.Add(1)
	// Arm before the state changes, so that no reader can see the new
	// state through State yet pass Check's unarmed fast path; rearm settles
	// it once the change is made.
	s.armed.Store(true)
	var e *entry
	if scope != nil {
		e = scope
		s.applyScope(scope, sig)
	} else {
		e = s.applyOp(opID, sig)
	}
	s.rearm()
	s.version.Add(1)
	s.stats.Applied++
	s.mu.Unlock()

	s.metrics.apply(sig)
	if sig == SignalTerminate && e != nil {
		s.cancelCalls(e)
	}
	return nil
}

func (s *Store) validate(opID string, sig Signal) *RejectedError {
	var reason RejectReason
	switch {
	case sig == SignalUnspecified:
		reason = ReasonUnspecifiedSignal
	case sig < SignalPause || sig > SignalTerminate:
		reason = ReasonUnknownSignal
	case opID == "":
		reason = ReasonEmptyOpID
	case opID == s.agentOpID:
		return nil // the agent's own halt, however long its id
	case len(opID) > MaxOpIDLen:
		reason = ReasonOpIDTooLong
	case strings.HasPrefix(opID, AgentOpIDPrefix) && opID != s.agentOpID:
		reason = ReasonForeignAgent
	default:
		return nil
	}
	return &RejectedError{Reason: reason, OpID: truncate(opID), Signal: sig}
}

func target(sig Signal) State {
	switch sig {
	case SignalPause:
		return Paused
	case SignalTerminate:
		return Terminated
	}
	return Running
}

// applyScope changes a reserved scope. Under mu.
func (s *Store) applyScope(e *entry, sig Signal) {
	cur, next := State(e.state.Load()), target(sig)
	if cur == Terminated || cur == next {
		return
	}
	e.state.Store(uint32(next))
	s.notifyScopes()
}

// notifyScopes wakes every held call: a change of a reserved scope or of
// failing closed concerns them all. Scope changes are rare; held calls wait
// on their op's channel alone, so each of those is closed too. Under mu.
func (s *Store) notifyScopes() {
	close(s.scopesCh)
	s.scopesCh = make(chan struct{})
	for e := range s.waiting {
		close(e.changed)
		e.changed = nil
	}
	clear(s.waiting)
	for k, w := range s.absent {
		close(w.ch)
		delete(s.absent, k)
	}
}

// applyOp changes, creates or removes a per-op entry and returns the entry
// the signal addressed (nil for a RESUME of an unknown op). Under mu.
func (s *Store) applyOp(opID string, sig Signal) *entry {
	k := parseKey(opID)
	h := k.hash(&s.seed)
	e := s.tab.Load().lookup(&k, h)
	next := target(sig)
	if e == nil {
		if next == Running {
			return nil
		}
		s.makeRoom()
		e = newEntry(opID, ScopeOp)
		e.key, e.hash = k, h
		e.state.Store(uint32(next))
		s.insert(e)
		return e
	}
	cur := State(e.state.Load())
	if cur == Terminated || cur == next {
		return e
	}
	s.list(cur).remove(e)
	if next == Running {
		s.remove(e)
	} else {
		s.list(next).push(e)
	}
	e.state.Store(uint32(next))
	s.notify(e)
	return e
}

func (s *Store) list(st State) *entryList {
	if st == Paused {
		return &s.paused
	}
	return &s.terminated
}

// leaveAbsent drops a waiter's hold on an absentWait.
func (s *Store) leaveAbsent(op *Op, w *absentWait) {
	s.mu.Lock()
	defer s.mu.Unlock()
	w.waiters--
	if w.waiters == 0 && s.absent[op.key] == w {
		delete(s.absent, op.key)
	}
}

func (s *Store) insert(e *entry) {
	if len(s.absent) > 0 {
		if w := s.absent[e.key]; w != nil {
			close(w.ch)
			delete(s.absent, e.key)
		}
	}
	t := s.tab.Load()
	t.insert(e)
	s.list(State(e.state.Load())).push(e)
	s.count.Add(1)
	s.metrics.entries.Add(context.Background(), 1)
	if t.crowded() {
		s.tab.Store(t.rebuilt())
	}
}

// remove takes e out of the table (its list is the caller's business).
func (s *Store) remove(e *entry) {
	t := s.tab.Load()
	t.remove(e)
	s.count.Add(-1)
	s.metrics.entries.Add(context.Background(), -1)
	if t.crowded() {
		s.tab.Store(t.rebuilt())
	}
}

// makeRoom evicts one entry when the store is full: the oldest terminated
// entry, or, only when every entry is paused, the oldest paused one, whose
// waiters then fail closed with an *EvictedError. Under mu.
func (s *Store) makeRoom() {
	if int(s.count.Load()) < s.max {
		return
	}
	victim := s.terminated.head
	if victim != nil {
		s.terminated.remove(victim)
		s.stats.EvictedTerminated++
	} else {
		victim = s.paused.head
		s.paused.remove(victim)
		s.stats.EvictedPaused++
		victim.evicted.Store(true)
		s.notify(victim)
	}
	s.remove(victim)
	s.metrics.evict(State(victim.state.Load()))
}

// rearm recomputes whether anything could hold or deny a call. Under mu.
func (s *Store) rearm() {
	s.armed.Store(s.count.Load() > 0 ||
		s.global.state.Load() != uint32(Running) ||
		s.agentScope.state.Load() != uint32(Running) ||
		s.failClosed.Load())
}

// notify wakes the calls held on e. Under mu.
func (s *Store) notify(e *entry) {
	if e.changed != nil {
		close(e.changed)
		e.changed = nil
		delete(s.waiting, e)
	}
}

// SetLive records whether the subscriber's stream to the gateway is live,
// and since when. Only the subscriber should call it.
func (s *Store) SetLive(live bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.live != live {
		s.live, s.liveSince = live, s.now()
	}
}

// SetFailClosed switches failing closed on or off. While on, every gated
// call fails with ErrUnavailable, held calls included (a terminate still
// wins). The subscriber turns it on when it has been blind for longer than
// its configured limit and off when its stream is live again.
func (s *Store) SetFailClosed(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failClosed.Load() == on {
		return
	}
	s.version.Add(1)
	s.armed.Store(true)
	s.failClosed.Store(on)
	s.rearm()
	s.version.Add(1)
	s.notifyScopes()
}

// SyncStatus is the store's record of its subscriber.
type SyncStatus struct {
	// Live reports whether the subscriber's stream is live.
	Live bool
	// Since is when Live last changed (or when the store was created).
	Since time.Time
	// FailClosed reports whether gated calls currently fail with
	// ErrUnavailable.
	FailClosed bool
}

// Sync returns the store's record of its subscriber.
func (s *Store) Sync() SyncStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	return SyncStatus{Live: s.live, Since: s.liveSince, FailClosed: s.failClosed.Load()}
}

// Stats counts what the store holds and has done.
type Stats struct {
	Entries           int // per-op entries held
	Paused            int // of which paused
	Terminated        int // of which terminated
	Applied           uint64
	Rejected          uint64
	EvictedPaused     uint64
	EvictedTerminated uint64
	// Wakeups counts how often a held call was woken to re-check. Only
	// changes that concern a call wake it, so this grows with signals for
	// held ops, not with traffic.
	Wakeups uint64
	// Held is the number of calls parked in Wait right now.
	Held int
}

// Stats returns a snapshot of the store's counters.
func (s *Store) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.stats
	st.Entries = int(s.count.Load())
	st.Paused, st.Terminated = s.paused.n, s.terminated.n
	st.Wakeups = s.wakeups.Load()
	st.Held = int(s.held.Load())
	return st
}

// entryList is an intrusive FIFO of entries, oldest first. Under mu.
type entryList struct {
	head, tail *entry
	n          int
}

func (l *entryList) push(e *entry) {
	e.prev, e.next = l.tail, nil
	if l.tail != nil {
		l.tail.next = e
	} else {
		l.head = e
	}
	l.tail = e
	l.n++
}

func (l *entryList) remove(e *entry) {
	if e.prev != nil {
		e.prev.next = e.next
	} else {
		l.head = e.next
	}
	if e.next != nil {
		e.next.prev = e.prev
	} else {
		l.tail = e.prev
	}
	e.prev, e.next = nil, nil
	l.n--
}
