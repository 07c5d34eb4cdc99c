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
