package interceptor

import (
	"context"
	"errors"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/opcontrol/opcontrol/controlstore"
)

// ErrorDomain is the errdetails.ErrorInfo domain of every error the
// interceptors return.
const ErrorDomain = "opcontrol"

// errdetails.ErrorInfo reasons of the errors the interceptors return.
const (
	// ReasonTerminated: the call's op, its agent or every agent was
	// terminated (codes.FailedPrecondition).
	ReasonTerminated = "OP_TERMINATED"
	// ReasonPaused: the call was held because an op was paused, and the
	// caller's context ended first (codes.DeadlineExceeded or
	// codes.Canceled).
	ReasonPaused = "OP_PAUSED"
	// ReasonUnavailable: op control fails closed: the store is not
	// synchronised with the gateway, or a held call's paused entry was
	// evicted (codes.Unavailable).
	ReasonUnavailable = "OP_CONTROL_UNAVAILABLE"
)

// ErrorInfo metadata keys.
const (
	// MetadataOpID is the caller's op id ("" for a call with no op).
	MetadataOpID = "op_id"
	// MetadataScope is the scope that decided: "op", "agent" or "global".
	MetadataScope = "scope"
	// MetadataTerminatedID is the id the terminate was addressed to: the op
	// id, "agent:{agent_id}" or "*".
	MetadataTerminatedID = "terminated_id"
	// MetadataPausedID is the id the pause was addressed to.
	MetadataPausedID = "paused_id"
	// MetadataEvictedID is the op id whose paused entry was evicted.
	MetadataEvictedID = "evicted_id"
)

// Error is the error both interceptors return for a call that op control
// stopped. It is a gRPC status error (status.Code, status.FromError and
// GRPCStatus work on it, with an errdetails.ErrorInfo detail) and it wraps
// the controlstore error that decided, so errors.Is(err,
// controlstore.ErrTerminated), errors.As(err, new(*controlstore.TerminatedError)),
// errors.Is(err, context.DeadlineExceeded) and the like work too:
//
//	cause                         code                reason
//	*controlstore.TerminatedError FailedPrecondition  OP_TERMINATED
//	*controlstore.PausedError     DeadlineExceeded or OP_PAUSED
//	  (context ended while held)  Canceled
//	controlstore.ErrUnavailable,  Unavailable         OP_CONTROL_UNAVAILABLE
//	*controlstore.EvictedError
//
// Errors are built only by this package; never modify one.
type Error struct {
	opID  string
	cause error
	st    *status.Status
}

// newError builds the error for a call of op stopped by cause, a
// controlstore error. Error paths only: it allocates.
func newError(op controlstore.Op, cause error) *Error {
	opID := op.String()
	md := map[string]string{MetadataOpID: opID}
	var (
		code   codes.Code
		reason string
		msg    = cause.Error()
		scope  controlstore.Scope
		scoped bool
		te     *controlstore.TerminatedError
		pe     *controlstore.PausedError
		ee     *controlstore.EvictedError
	)
	switch {
	case errors.As(cause, &te):
		code, reason = codes.FailedPrecondition, ReasonTerminated
		scope, scoped = te.Scope, true
		md[MetadataTerminatedID] = te.OpID
	case errors.As(cause, &ee):
		code, reason = codes.Unavailable, ReasonUnavailable
		md[MetadataEvictedID] = ee.OpID
	case errors.As(cause, &pe):
		code, reason = codes.Unavailable, ReasonPaused
		if pe.Err != nil {
			code = status.FromContextError(pe.Err).Code()
		}
		scope, scoped = pe.Scope, true
		md[MetadataPausedID] = pe.OpID
	case errors.Is(cause, controlstore.ErrUnavailable):
		code, reason = codes.Unavailable, ReasonUnavailable
	default:
		// Not a controlstore error: never produced by the interceptors,
		// but keep the contract (a status) rather than panic.
		code, reason = status.Code(cause), ""
	}
	if scoped {
		md[MetadataScope] = scope.String()
		if scope != controlstore.ScopeOp && opID != "" {
			msg += " (call of op " + quote(opID) + ")"
		}
	}
	st := status.New(code, msg)
	if reason != "" {
		if withInfo, err := st.WithDetails(&errdetails.ErrorInfo{Reason: reason, Domain: ErrorDomain, Metadata: md}); err == nil {
			st = withInfo
		}
	}
	return &Error{opID: opID, cause: cause, st: st}
}

// Error returns the message in the form gRPC status errors use.
func (e *Error) Error() string {
	return "rpc error: code = " + e.st.Code().String() + " desc = " + e.st.Message()
}

// GRPCStatus returns the error's gRPC status, with its errdetails.ErrorInfo.
func (e *Error) GRPCStatus() *status.Status { return e.st }

// Unwrap returns the controlstore error that stopped the call.
func (e *Error) Unwrap() error { return e.cause }

// OpID returns the gateway op id of the stopped call, or "" when the call
// had no op.
func (e *Error) OpID() string { return e.opID }

// terminatedCause returns the *TerminatedError ctx was cancelled with, or
// nil. Error paths only: it takes ctx's lock.
func terminatedCause(ctx context.Context) *controlstore.TerminatedError {
	var te *controlstore.TerminatedError
	if errors.As(context.Cause(ctx), &te) {
		return te
	}
	return nil
}
