package controlstore

import "time"

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
