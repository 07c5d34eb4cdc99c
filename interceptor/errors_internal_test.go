package interceptor

import (
	"context"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/opcontrol/opcontrol/controlstore"
)

// Every error the store can hand the gate maps to a row of the package
// documentation's table, and to no other pair of code and reason.
func TestVerdictsMatchTheTable(t *testing.T) {
	type row struct {
		code   codes.Code
		reason string
		idKey  string
	}
	table := map[row]bool{
		{codes.FailedPrecondition, ReasonTerminated, MetadataTerminatedID}: true,
		{codes.DeadlineExceeded, ReasonPaused, MetadataPausedID}:           true,
		{codes.Canceled, ReasonPaused, MetadataPausedID}:                   true,
		{codes.Unavailable, ReasonUnavailable, ""}:                         true,
		{codes.Unavailable, ReasonUnavailable, MetadataEvictedID}:          true,
	}
	op := controlstore.OpFromID("trace-001:span-001")
	for _, tc := range []struct {
		cause error
		want  row
		out   outcome
		hold  holdResult
	}{
		{&controlstore.TerminatedError{OpID: "*", Scope: controlstore.ScopeGlobal}, row{codes.FailedPrecondition, ReasonTerminated, MetadataTerminatedID}, outcomeDenied, holdTerminated},
		{&controlstore.PausedError{OpID: "x", Err: context.DeadlineExceeded}, row{codes.DeadlineExceeded, ReasonPaused, MetadataPausedID}, outcomeHeld, holdAbandoned},
		{&controlstore.PausedError{OpID: "x", Err: context.Canceled}, row{codes.Canceled, ReasonPaused, MetadataPausedID}, outcomeHeld, holdAbandoned},
		// Wait never returns a *PausedError without the context's error;
		// if one came, it would still be a documented row.
		{&controlstore.PausedError{OpID: "x"}, row{codes.Canceled, ReasonPaused, MetadataPausedID}, outcomeHeld, holdAbandoned},
		{controlstore.ErrUnavailable, row{codes.Unavailable, ReasonUnavailable, ""}, outcomeUnavailable, holdUnavailable},
		{&controlstore.EvictedError{OpID: "x"}, row{codes.Unavailable, ReasonUnavailable, MetadataEvictedID}, outcomeUnavailable, holdUnavailable},
	} {
		t.Run(fmt.Sprintf("%T", tc.cause), func(t *testing.T) {
			e := newError(op, tc.cause)
			got := row{e.st.Code(), e.v.reason, e.v.idKey}
			if got != tc.want || !table[got] {
				t.Fatalf("%v → %+v, want %+v (a row of the table)", tc.cause, got, tc.want)
			}
			if e.v.outcome != tc.out || e.v.hold != tc.hold {
				t.Fatalf("%v → outcome %v hold %v, want %v %v", tc.cause, e.v.outcome, e.v.hold, tc.out, tc.hold)
			}
			if e.OpID() != op.String() || e.Unwrap() != tc.cause { //nolint:errorlint // identity of the wrapped cause
				t.Fatalf("op id %q, cause %v", e.OpID(), e.Unwrap())
			}
		})
	}
}
