package controlstore

import "context"

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

// leaveAbsent drops a waiter's hold on an absentWait.
func (s *Store) leaveAbsent(op *Op, w *absentWait) {
	s.mu.Lock()
	defer s.mu.Unlock()
	w.waiters--
	if w.waiters == 0 && s.absent[op.key] == w {
		delete(s.absent, op.key)
	}
}
