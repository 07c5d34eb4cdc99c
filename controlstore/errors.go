package controlstore

import (
	"errors"
	"strconv"
)

// Sentinel errors. Match them with errors.Is; the concrete types below carry
// the details.
var (
	// ErrTerminated is matched by every error reporting that a call's op was
	// terminated, whatever the scope.
	ErrTerminated = errors.New("opcontrol: op terminated")
	// ErrPaused is matched by the error Check returns while a call's op is
	// paused, and by the error Wait returns when the caller gave up waiting.
	ErrPaused = errors.New("opcontrol: op paused")
	// ErrUnavailable is returned while the store fails closed: its subscriber
	// has been blind for longer than the configured limit, so the store
	// cannot vouch that an op was not paused or terminated meanwhile.
	ErrUnavailable = errors.New("opcontrol: op control unavailable: not synchronised with the gateway")
	// ErrEvicted is matched by the error a held call gets when its paused
	// entry is evicted to stay within the entry cap. The call fails closed
	// rather than run without the resume it was waiting for.
	ErrEvicted = errors.New("opcontrol: paused op evicted from a full store")
	// ErrRejected is matched by every error Apply returns for a signal it
	// refused; see RejectedError for the reason.
	ErrRejected = errors.New("opcontrol: signal rejected")
)

// TerminatedError reports that a call may not run because an op, its agent,
// or every agent was terminated. errors.Is(err, ErrTerminated) is true.
type TerminatedError struct {
	// OpID is the id the terminate was addressed to: the op's own id,
	// "agent:{agent_id}", or "*".
	OpID string
	// Scope is the scope of OpID.
	Scope Scope
}

func (e *TerminatedError) Error() string {
	return "opcontrol: " + describe(e.Scope, e.OpID) + " terminated"
}

// Is makes errors.Is(err, ErrTerminated) true.
func (e *TerminatedError) Is(target error) bool { return target == ErrTerminated }

// PausedError reports that an op, its agent or every agent is paused. Check
// returns it while a call would be held; Wait returns it, wrapping the
// context's error, when the caller stopped waiting first. errors.Is(err,
// ErrPaused) is true, and so is errors.Is(err, context.DeadlineExceeded)
// (or context.Canceled) when Err is set.
type PausedError struct {
	// OpID is the id the pause was addressed to: the op's own id,
	// "agent:{agent_id}", or "*".
	OpID string
	// Scope is the scope of OpID.
	Scope Scope
	// Err is the context error that ended the wait, or nil from Check.
	Err error
}

func (e *PausedError) Error() string {
	msg := "opcontrol: " + describe(e.Scope, e.OpID) + " paused"
	if e.Err != nil {
		msg += "; call held until: " + e.Err.Error()
	}
	return msg
}

// Is makes errors.Is(err, ErrPaused) true.
func (e *PausedError) Is(target error) bool { return target == ErrPaused }

// Unwrap returns the context error that ended the wait, if any.
func (e *PausedError) Unwrap() error { return e.Err }

// EvictedError reports that a held call's paused entry was evicted. It
// matches ErrEvicted and ErrUnavailable: the store no longer knows the op's
// state, so the call fails closed.
type EvictedError struct {
	OpID string
}

func (e *EvictedError) Error() string {
	return "opcontrol: op " + strconv.Quote(e.OpID) + " was paused and evicted from a full store; failing closed"
}

// Is makes errors.Is true for ErrEvicted and ErrUnavailable.
func (e *EvictedError) Is(target error) bool { return target == ErrEvicted || target == ErrUnavailable }

// RejectReason says why Apply refused a signal. Values are stable and safe
// as metric attribute values.
type RejectReason string

// Reasons for RejectedError.
const (
	ReasonUnspecifiedSignal RejectReason = "unspecified_signal"
	ReasonUnknownSignal     RejectReason = "unknown_signal"
	ReasonEmptyOpID         RejectReason = "empty_op_id"
	ReasonOpIDTooLong       RejectReason = "op_id_too_long"
	ReasonForeignAgent      RejectReason = "foreign_agent"
)

// RejectedError reports a signal that Apply refused and did not apply.
// errors.Is(err, ErrRejected) is true.
type RejectedError struct {
	Reason RejectReason
	// OpID is the refused id, cut to 64 bytes so that logging it is safe.
	OpID   string
	Signal Signal
}

func (e *RejectedError) Error() string {
	return "opcontrol: signal " + e.Signal.String() + " for op " + strconv.Quote(e.OpID) + " rejected: " + string(e.Reason)
}

// Is makes errors.Is(err, ErrRejected) true.
func (e *RejectedError) Is(target error) bool { return target == ErrRejected }

func describe(sc Scope, id string) string {
	switch sc {
	case ScopeGlobal:
		return "every op of every agent (" + strconv.Quote(id) + ")"
	case ScopeAgent:
		return "every op of this agent (" + strconv.Quote(id) + ")"
	}
	return "op " + strconv.Quote(id)
}

func truncate(id string) string {
	const keep = 64
	if len(id) <= keep {
		return id
	}
	return id[:keep] + "…"
}
