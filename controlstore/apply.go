package controlstore

import (
	"context"
	"strings"
)

// Apply applies one signal by the semantics in the package documentation
// (terminate is sticky; RESUME removes an op's entry). opID is "*" (every
// op), "agent:{agent_id}" (every op of this agent) or any other id (one op,
// matched as an exact string; ids in OpenTelemetry form are parsed once
// here). It rejects, and changes nothing for, an unspecified or unknown
// signal, an empty id, an id longer than MaxOpIDLen (but for this agent's
// own halt), and an agent halt addressed to another agent; the error is a
// *RejectedError.
//
// Apply is O(1) amortised and never waits for readers. A TERMINATE cancels,
// before Apply returns, every in-flight call Tracked under a scope it covers.
//
// Apply is for signals of no particular source (tests, a hand-driven
// store). A feed of signals applies them through its Source instead, so
// that the store can reconcile two feeds.
func (s *Store) Apply(opID string, sig Signal) error {
	return s.apply(opID, sig, nil)
}

func (s *Store) apply(opID string, sig Signal, src *Source) error {
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
	if scope != nil {
		if src == nil {
			// A hand-driven signal is the newest word on the scope: no
			// pending RESUME overrides it, and no bus undoes it.
			i := s.scopeIndex(scope)
			s.cancelSettleLocked(i)
			s.gwPrior[i] = priorState{}
			for _, other := range s.sources {
				other.view[i] = SignalUnspecified
			}
		} else if !s.reconcileLocked(src, scope, sig) {
			s.mu.Unlock()
			return nil
		}
	}
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
		if next == Running || s.fps.contains(h) {
			return nil // unknown and resumed, or terminated for good already
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
	if t.crowded(s.maxSlots) {
		s.tab.Store(t.rebuilt(s.maxSlots))
	}
}

// remove takes e out of the table (its list is the caller's business).
func (s *Store) remove(e *entry) {
	t := s.tab.Load()
	t.remove(e)
	s.count.Add(-1)
	s.metrics.entries.Add(context.Background(), -1)
	if t.crowded(s.maxSlots) {
		s.tab.Store(t.rebuilt(s.maxSlots))
	}
}

// makeRoom evicts one entry when the store is full. The oldest terminated
// entry goes first, and loses nothing: it is compacted to a fingerprint and
// stays terminated (see compacted). Only when every entry is paused does
// the oldest paused entry go, and its waiters fail closed with an
// *EvictedError; a pause can be lost that way, a terminate never. Under mu.
func (s *Store) makeRoom() {
	if int(s.count.Load()) < s.max {
		return
	}
	victim := s.terminated.head
	if victim != nil {
		s.terminated.remove(victim)
		s.fps.add(victim.hash)
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
	s.armed.Store(s.count.Load() > 0 || s.fps.n.Load() > 0 ||
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
