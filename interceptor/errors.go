package interceptor

import (
	"context"
	"errors"
	"strconv"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/opcontrol/opcontrol/controlstore"
)

// ErrorDomain is the errdetails.ErrorInfo domain of every error the
// interceptors return.
const ErrorDomain = "opcontrol"

// errdetails.ErrorInfo reasons of the errors the interceptors return; the
// package documentation's error table pairs each with its code.
const (
	// ReasonTerminated: the call's op, its agent or every agent was
	// terminated.
	ReasonTerminated = "OP_TERMINATED"
	// ReasonPaused: the call was held because an op was paused, and the
	// caller's context ended first.
	ReasonPaused = "OP_PAUSED"
	// ReasonUnavailable: op control fails closed: the store is not
	// synchronised with the gateway, or a held call's paused entry was
	// evicted.
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
// stopped: a gRPC status error (status.Code, status.FromError and
// GRPCStatus work on it, with an errdetails.ErrorInfo detail) that wraps
// the controlstore error that decided, so errors.Is(err,
// controlstore.ErrTerminated), errors.As(err, new(*controlstore.TerminatedError))
// and errors.Is(err, context.DeadlineExceeded) work too. Which code and
// reason go with which cause is tabled in the package documentation.
//
// Errors are built only by this package; never modify one.
type Error struct {
	v     verdict
	cause error
	st    *status.Status
}

// verdict is what the gate decided about one call or stream message,
// worked out once from the store's error when the *Error is built.
// Metrics, span events and the stream wrapper read it; nothing re-derives
// it from the error chain.
type verdict struct {
	outcome outcome    // denied, unavailable, or held (the caller gave up)
	hold    holdResult // how a hold ending in this error ended
	code    codes.Code
	reason  string
	scope   controlstore.Scope
	scoped  bool   // scope is meaningful (terminated or paused)
	opID    string // the caller's op id, "" for none
	idKey   string // MetadataTerminatedID, MetadataPausedID, MetadataEvictedID or ""
	id      string // the id idKey names
}

// judge turns the store's answer for a call of op into a verdict. cause is
// one of the errors Check and Wait return, never wrapped: a
// *TerminatedError, an *EvictedError, a *PausedError (from Wait, when the
// caller's context ended while held), or ErrUnavailable.
func judge(op controlstore.Op, cause error) verdict {
	v := verdict{opID: op.String()}
	switch c := cause.(type) { //nolint:errorlint // the store's own errors, never wrapped
	case *controlstore.TerminatedError:
		v.outcome, v.hold, v.code, v.reason = outcomeDenied, holdTerminated, codes.FailedPrecondition, ReasonTerminated
		v.scope, v.scoped, v.idKey, v.id = c.Scope, true, MetadataTerminatedID, c.OpID
	case *controlstore.PausedError:
		// The caller gave up while held: its context's code. Wait returns
		// a *PausedError only with the context's error in Err.
		v.outcome, v.hold, v.code, v.reason = outcomeHeld, holdAbandoned, codes.Canceled, ReasonPaused
		if errors.Is(c.Err, context.DeadlineExceeded) {
			v.code = codes.DeadlineExceeded
		}
		v.scope, v.scoped, v.idKey, v.id = c.Scope, true, MetadataPausedID, c.OpID
	case *controlstore.EvictedError:
		v.outcome, v.hold, v.code, v.reason = outcomeUnavailable, holdUnavailable, codes.Unavailable, ReasonUnavailable
		v.idKey, v.id = MetadataEvictedID, c.OpID
	default: // controlstore.ErrUnavailable
		v.outcome, v.hold, v.code, v.reason = outcomeUnavailable, holdUnavailable, codes.Unavailable, ReasonUnavailable
	}
	return v
}

// newError builds the error for a call of op stopped by cause (see judge).
// Error paths only: it allocates.
func newError(op controlstore.Op, cause error) *Error {
	v := judge(op, cause)
	md := map[string]string{MetadataOpID: v.opID}
	if v.idKey != "" {
		md[v.idKey] = v.id
	}
	msg := cause.Error()
	if v.scoped {
		md[MetadataScope] = v.scope.String()
		if v.scope != controlstore.ScopeOp && v.opID != "" {
			msg += " (call of op " + strconv.Quote(v.opID) + ")"
		}
	}
	st := status.New(v.code, msg)
	if withInfo, err := st.WithDetails(&errdetails.ErrorInfo{Reason: v.reason, Domain: ErrorDomain, Metadata: md}); err == nil {
		st = withInfo
	}
	return &Error{v: v, cause: cause, st: st}
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
func (e *Error) OpID() string { return e.v.opID }
