package stream

import (
	"strconv"
	"time"

	"google.golang.org/grpc/codes"
)

// State is the subscriber's health.
type State int

// States.
const (
	// Idle: Run is not running.
	Idle State = iota
	// Connecting: an attempt is waiting for the connection to become
	// ready and the gateway to answer. While the gateway is unreachable
	// the subscriber stays Connecting, one attempt after another.
	Connecting
	// Live: the gateway admitted the subscription; signals flow.
	Live
	// Backoff: the last attempt or stream failed; waiting for the next.
	Backoff
	// Unauthorized: the gateway answered Unauthenticated (no or unknown
	// credential token) or PermissionDenied (the store's agent triple is
	// not the token's identity). Retried slowly; the state stays until a
	// stream is live or another error is seen.
	Unauthorized
	// Misconfigured: the gateway answered InvalidArgument, or
	// Unimplemented (no op-control service at this address). Retried
	// slowly, like Unauthorized.
	Misconfigured
)

// String returns the state's lowercase name.
func (st State) String() string {
	switch st {
	case Idle:
		return "idle"
	case Connecting:
		return "connecting"
	case Live:
		return "live"
	case Backoff:
		return "backoff"
	case Unauthorized:
		return "unauthorized"
	case Misconfigured:
		return "misconfigured"
	}
	return "state(" + strconv.Itoa(int(st)) + ")"
}

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
	// Received counts frames received; Dropped counts those that could
	// not be decoded or that the store rejected.
	Received, Dropped uint64
}
