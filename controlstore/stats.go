package controlstore

// Stats counts what the store holds and has done.
type Stats struct {
	Entries    int // per-op entries held
	Paused     int // of which paused
	Terminated int // of which terminated
	Applied    uint64
	Rejected   uint64
	// EvictedPaused counts paused entries evicted from a store full of
	// paused entries: their held calls failed closed, and a later call of
	// such an op runs.
	EvictedPaused uint64
	// EvictedTerminated counts terminated entries evicted to make room.
	// Each is kept as a fingerprint and stays terminated.
	EvictedTerminated uint64
	// Fingerprints is the number of compacted terminates held now;
	// ForgottenTerminated counts those forgotten after outliving
	// TerminatedHistory further compactions (their ops may run again).
	Fingerprints        int
	ForgottenTerminated uint64
	// TerminatedHistory is how many further compactions a compacted
	// terminate outlives at least (see WithTerminatedHistory).
	TerminatedHistory int
	// Superseded counts PAUSE and RESUME of the agent or global scope that
	// a gateway source delivered while a bus source was live, and that
	// were therefore ignored (see Source).
	Superseded uint64
	// Deferred counts PAUSE and RESUME of the agent or global scope that a
	// bus source delivered while catching up (not yet live); the last one
	// of each scope applies when the source goes live.
	Deferred uint64
	// Settled counts gateway RESUMEs of a paused agent or global scope
	// that were held back, to settle (WithResumeSettle) or to wait for a
	// bus outage to end (WithBusGrace); a RESUME that arrives while one is
	// held joins it. SettleCancelled counts those that ended without
	// applying: a newer PAUSE or TERMINATE of the scope from any source,
	// or a bus source going live. The others applied.
	Settled         uint64
	SettleCancelled uint64
	// Reverted counts reserved scopes returned to their state from before
	// a bus outage when a bus source went live with nothing for them: the
	// gateway's changes meanwhile were replays of older halts.
	Reverted uint64
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
	st.Fingerprints = int(s.fps.n.Load())
	st.ForgottenTerminated = s.fps.forgotten
	st.TerminatedHistory = s.fps.History()
	return st
}
