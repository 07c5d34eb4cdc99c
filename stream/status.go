package stream

import (
	"context"
	"log/slog"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/opcontrol/opcontrol/controlstore"
)

// State is the subscriber's health, in the words every source uses
// (controlstore.SourceState).
type State = controlstore.SourceState

// States.
const (
	// Idle: Run is not running.
	Idle = controlstore.SourceIdle
	// Connecting: an attempt is waiting for the connection to become
	// ready and the gateway to answer. While the gateway is unreachable
	// the subscriber stays Connecting, one attempt after another.
	Connecting = controlstore.SourceConnecting
	// Live: the gateway admitted the subscription; signals flow.
	Live = controlstore.SourceLive
	// Backoff: the last attempt or stream failed; waiting for the next.
	Backoff = controlstore.SourceBackoff
	// Unauthorized: the gateway answered Unauthenticated (no or unknown
	// credential token) or PermissionDenied (the store's agent triple is
	// not the token's identity). Retried slowly; the state stays until a
	// stream is live or another error is seen.
	Unauthorized = controlstore.SourceUnauthorized
	// Misconfigured: the gateway answered InvalidArgument, or
	// Unimplemented (no op-control service at this address). Retried
	// slowly, like Unauthorized.
	Misconfigured = controlstore.SourceMisconfigured
)

// Status is a snapshot of the subscriber's health.
type Status struct {
	State State
	// Since is when State last changed.
	Since time.Time
	// DownSince is when the stream was last lost, or when Run started if
	// it has not been live since; zero while Live. Signals published from
	// then on were missed: the gateway replays nothing.
	DownSince time.Time
	// Attempts counts the attempts since the stream was last live (or
	// since Run started), the current one included.
	Attempts int
	// LastError is the error that ended the last failed attempt or the
	// last stream (nil for a clean end of stream); LastCode is its status
	// code (codes.OK for a clean end); LastErrorAt is when it happened.
	LastError   error
	LastCode    codes.Code
	LastErrorAt time.Time
	// NextAttempt is when the next attempt starts, while waiting in
	// Backoff, Unauthorized or Misconfigured; otherwise zero.
	NextAttempt time.Time
	// LastSequence is the sequence number of the last message received
	// (advisory; see the package documentation).
	LastSequence uint64
	// Received counts frames received; Dropped counts those of them that
	// were dropped: frames that do not decode, signals the store refused,
	// and frames over the size limit. TooLarge counts the last kind alone:
	// each ended its stream (see the package documentation, "Input").
	Received, Dropped, TooLarge uint64
}

func (s *Subscriber) beginAttempt() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.status.Attempts++
	s.status.NextAttempt = time.Time{}
	if st := s.status.State; st != Unauthorized && st != Misconfigured {
		s.setStateLocked(Connecting, time.Now())
	}
}

func (s *Subscriber) setStateLocked(st State, now time.Time) {
	if s.status.State != st {
		s.status.State, s.status.Since = st, now
	}
}

// failed records a failed attempt or a lost stream (liveFor > 0) and logs
// it (see logFailure).
func (s *Subscriber) failed(state State, code codes.Code, err error, wait, liveFor time.Duration) {
	now := time.Now()
	s.mu.Lock()
	s.setStateLocked(state, now)
	s.status.LastError, s.status.LastCode, s.status.LastErrorAt = err, code, now
	if wait > 0 {
		s.status.NextAttempt = now.Add(wait)
	}
	key := failureKey{state, code}
	changed := key != s.logKey
	s.logKey = key
	attempts := s.status.Attempts
	s.mu.Unlock()

	s.logFailure(state, code, err, attempts, changed, wait, liveFor)
}

// goLive marks the stream live and returns when.
func (s *Subscriber) goLive() time.Time {
	now := time.Now()
	s.mu.Lock()
	attempts, downFor := s.status.Attempts, now.Sub(s.status.DownSince)
	s.setStateLocked(Live, now)
	s.status.Attempts, s.status.DownSince, s.status.NextAttempt = 0, time.Time{}, time.Time{}
	s.logKey = failureKey{state: Live}
	s.mu.Unlock()

	s.connected.Store(true)
	s.guard.setLive(true)
	s.metrics.setUp(true)
	s.readyOnce.Do(func() { close(s.ready) })
	s.log.LogAttrs(context.Background(), slog.LevelInfo, "op-control stream live",
		slog.Int("attempts", attempts), slog.Duration("down_for", downFor))
	return now
}

// goDown marks the stream no longer live.
func (s *Subscriber) goDown() {
	s.connected.Store(false)
	s.metrics.setUp(false)
	s.guard.setLive(false)
	s.mu.Lock()
	s.status.DownSince = time.Now()
	s.mu.Unlock()
}
