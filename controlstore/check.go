package controlstore

import "strings"

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
	h := k.hash(&s.seed)
	if e := s.tab.Load().lookup(&k, h); e != nil {
		return State(e.state.Load())
	}
	if s.fps.contains(h) {
		return Terminated
	}
	return Running
}

// Check reports, without blocking, whether a call of op may start now:
// nil, a *TerminatedError (any scope terminated), ErrUnavailable (failing
// closed), or a *PausedError (held: call Wait). Terminated wins over
// everything; failing closed wins over paused. The returned errors are
// shared and must not be modified.
//
// Check takes no lock and allocates nothing, but for the error that
// refuses an op whose terminate was compacted (see WithTerminatedHistory).
// With nothing signalled it is one atomic load.
func (s *Store) Check(op Op) error {
	if !s.armed.Load() {
		return nil
	}
	return s.check(&op)
}

// check is Check's slow path, kept apart so that Check inlines.
func (s *Store) check(op *Op) error {
	err := s.consistent(op)
	if err == &s.compactedTerm { //nolint:errorlint // identity of the store's own marker, never wrapped
		// The op's entry was compacted to a fingerprint: its error is
		// made here, to name the op.
		return &TerminatedError{OpID: op.String(), Scope: ScopeOp}
	}
	return err
}

// consistent evaluates op on a view of one moment.
func (s *Store) consistent(op *Op) error {
	if v := s.version.Load(); v&1 == 0 {
		err := s.evaluate(op)
		if s.version.Load() == v {
			return err
		}
	}
	// A writer changed state while we read. Writers hold mu for well under
	// a microsecond (but for the rare clearing of a fingerprint
	// generation), so waiting for one is cheaper than spinning.
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.evaluate(op)
}

// evaluate combines the three scopes of op. Callers guarantee a consistent
// view (version check or mu). A compacted terminate is reported as
// &s.compactedTerm, which check replaces.
func (s *Store) evaluate(op *Op) error {
	g := State(s.global.state.Load())
	a := State(s.agentScope.state.Load())
	var e *entry
	o := Running
	if (s.count.Load() > 0 || s.fps.n.Load() > 0) && !op.IsZero() {
		h := op.key.hash(&s.seed)
		if e = s.tab.Load().lookup(&op.key, h); e != nil {
			o = State(e.state.Load())
		} else if s.fps.contains(h) {
			o = Terminated
		}
	}
	switch {
	case g == Terminated:
		return &s.global.termErr
	case a == Terminated:
		return &s.agentScope.termErr
	case o == Terminated && e == nil:
		return &s.compactedTerm
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
