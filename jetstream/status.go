package jetstream

import (
	"time"

	"github.com/opcontrol/opcontrol/controlstore"
)

// State is the subscriber's health, in the words every source uses
// (controlstore.SourceState).
type State = controlstore.SourceState

// States. The names match package stream's where the meaning is the same.
const (
	// Idle: Run is not running.
	Idle = controlstore.SourceIdle
	// Connecting: waiting for the connection to the bus, or creating the
	// two consumers and catching up on what is pending for them.
	Connecting = controlstore.SourceConnecting
	// Live: both consumers are established and caught up; every halt
	// published from now on is applied as it arrives.
	Live = controlstore.SourceLive
	// Backoff: the last attempt failed or the consumers were lost; waiting
	// for the next attempt.
	Backoff = controlstore.SourceBackoff
	// Unauthorized: the server refused the credentials, or the account may
	// not do what the subscriber needs (see the package documentation for
	// the permissions). Retried slowly.
	Unauthorized = controlstore.SourceUnauthorized
	// Misconfigured: the stream does not exist or JetStream is not
	// enabled for the account. Retried slowly: the gateway creates the
	// stream when it connects.
	Misconfigured = controlstore.SourceMisconfigured
	// Lost: live, but halts of this agent may have been lost: the stream's
	// retention expired messages the subscriber had not read (see
	// Status.Loss). It stays until AcknowledgeLoss; while not live the
	// state says why and Status.Loss still reports the loss.
	Lost = controlstore.SourceLost
)

// Status is a snapshot of the subscriber's health.
type Status struct {
	State State
	// Since is when State last changed.
	Since time.Time
	// Attempts counts the attempts since the subscriber was last live (or
	// since Run started), the current one included.
	Attempts int
	// LastError is the error that ended the last failed attempt or the
	// last live session, and LastErrorAt when it happened.
	LastError   error
	LastErrorAt time.Time
	// NextAttempt is when the next attempt starts, while waiting after a
	// failure; otherwise zero.
	NextAttempt time.Time
	// Agent and Global are the two subjects' positions.
	Agent, Global SubjectStatus
	// Applied counts messages handed to the store; Dropped counts the
	// others by reason (DropReason values, and the controlstore reject
	// reasons for ids the store refused).
	Applied uint64
	Dropped map[string]uint64
	// Loss is the first loss not yet acknowledged, or nil. Losses counts
	// every loss detected.
	Loss   *Loss
	Losses uint64
}

// SubjectStatus is the position of one subject.
type SubjectStatus struct {
	Subject string
	// LastSequence is the stream sequence of the last message consumed on
	// the subject (applied or dropped); 0 if none.
	LastSequence uint64
	// Position is the stream sequence up to which every message of the
	// subject has been consumed: the next consumer starts at Position+1.
	// PositionKnown is false until the subscriber first caught up (before
	// that it starts by time, or from the start of the retained window).
	Position      uint64
	PositionKnown bool
	// CaughtUp reports whether the current consumer has delivered
	// everything that was pending for it when it was created.
	CaughtUp bool
}

// Loss describes messages that expired from the stream before the
// subscriber read them. Whether any of them was a halt of this agent cannot
// be known: the server keeps nothing of them.
type Loss struct {
	// Subjects are the subjects whose positions the stream had passed
	// (StreamSubjects when the stream was replaced).
	Subjects []string
	// After is the lowest of their positions: every message of those
	// subjects up to it had been consumed.
	After uint64
	// FirstSequence is the stream's first sequence when the loss was
	// found: messages After+1 .. FirstSequence-1 are gone. 0 when the
	// stream itself was replaced.
	FirstSequence uint64
	// Reason is "retention expired" or "stream replaced".
	Reason string
	// DetectedAt is when the subscriber found it.
	DetectedAt time.Time
}
