package main

import (
	"errors"
	"fmt"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/interceptor"
)

// decision is what op control did with a call.
type decision int

const (
	allowed   decision = iota // ran at once (or after a hold: see outcome.held)
	denied                    // refused before it ran
	cancelled                 // cancelled while running
	failed                    // an error op control did not produce
)

var decisionNames = [...]string{"allowed", "denied", "cancelled in flight", "failed"}

func (d decision) String() string { return decisionNames[d] }

// outcome is how one call ended and what op control decided.
type outcome struct {
	err        error
	begin, end time.Time
	decision   decision
	held       bool
	hold       time.Duration // how long it was held, when held
	holdResult string        // "resumed", "terminated", ...
}

// classify works out the decision from the events the interceptor recorded
// on the caller's span during the call (evs) and from the error. Calls with no
// span have no events; their error says enough.
func classify(err error, evs []sdktrace.Event, begin, end time.Time) outcome {
	o := outcome{err: err, begin: begin, end: end}
	sawDecision := false
	for _, ev := range evs {
		switch ev.Name {
		case "opcontrol.held":
			o.held = true
			for _, kv := range ev.Attributes {
				switch kv.Key {
				case "opcontrol.hold.duration":
					o.hold = time.Duration(kv.Value.AsFloat64() * float64(time.Second))
				case "opcontrol.hold.result":
					o.holdResult = kv.Value.AsString()
				}
			}
		case "opcontrol.denied":
			o.decision, sawDecision = denied, true
		case "opcontrol.cancelled":
			o.decision, sawDecision = cancelled, true
		}
	}
	switch {
	case sawDecision:
	case err == nil:
		o.decision = allowed
	case reasonOf(err) == interceptor.ReasonTerminated || reasonOf(err) == interceptor.ReasonUnavailable:
		o.decision = denied
	default:
		o.decision = failed
	}
	return o
}

// decisionText is the timeline's decision column.
func (o outcome) decisionText() string {
	if !o.held {
		return o.decision.String()
	}
	s := "held " + ms(o.hold)
	if o.decision != allowed {
		s += ", " + o.decision.String()
	}
	return s
}

// codeText is the timeline's gRPC status column: the code, and for errors
// from op control the ErrorInfo reason and the scope that decided.
func (o outcome) codeText() string {
	if o.err == nil {
		return "OK"
	}
	code := status.Code(o.err).String()
	ei := errorInfo(o.err)
	if ei == nil {
		return code + " (" + status.Convert(o.err).Message() + ")"
	}
	if scope := ei.GetMetadata()[interceptor.MetadataScope]; scope != "" {
		return fmt.Sprintf("%s (%s, scope %s)", code, ei.GetReason(), scope)
	}
	return fmt.Sprintf("%s (%s)", code, ei.GetReason())
}

func errorInfo(err error) *errdetails.ErrorInfo {
	for _, d := range status.Convert(err).Details() {
		if ei, ok := d.(*errdetails.ErrorInfo); ok {
			return ei
		}
	}
	return nil
}

func reasonOf(err error) string {
	return errorInfo(err).GetReason()
}

// expectation is what a step requires of a call.
type expectation struct {
	decision decision
	held     bool
	scope    controlstore.Scope // of a denial or cancellation
	target   string             // the id the terminate was addressed to
}

func expectAllowed() expectation { return expectation{decision: allowed} }
func expectHeld() expectation    { return expectation{decision: allowed, held: true} }

func expectDenied(scope controlstore.Scope, target string) expectation {
	return expectation{decision: denied, scope: scope, target: target}
}

func expectCancelled(scope controlstore.Scope, target string) expectation {
	return expectation{decision: cancelled, scope: scope, target: target}
}

func (e expectation) String() string {
	switch {
	case e.held:
		return "held, then allowed, OK"
	case e.decision == allowed:
		return "allowed, OK"
	}
	return fmt.Sprintf("%v, FailedPrecondition (OP_TERMINATED, scope %v, terminated_id %q)", e.decision, e.scope, e.target)
}

// check returns an error unless the outcome of a call of c matches e: the
// decision the interceptor recorded, and for a terminated call the whole
// error contract (code, ErrorInfo, errors.Is and errors.As).
func (o outcome) check(c *op, name string, e expectation) error {
	got := fmt.Sprintf("%s, %s", o.decisionText(), o.codeText())
	mismatch := func(why string) error {
		return fmt.Errorf("%s %s: got %s; want %s (%s)", c.label, name, got, e, why)
	}
	if o.decision != e.decision {
		return mismatch("wrong decision")
	}
	if e.held && (!o.held || o.holdResult != "resumed") {
		return mismatch("it was not held until resumed")
	}
	if !e.held && o.held {
		return mismatch("it was held")
	}
	if e.decision == allowed {
		if o.err != nil {
			return mismatch("the call failed")
		}
		return nil
	}
	if status.Code(o.err) != codes.FailedPrecondition {
		return mismatch("wrong code: a terminated call must fail with FailedPrecondition, not a bare Canceled")
	}
	if !errors.Is(o.err, controlstore.ErrTerminated) {
		return mismatch("errors.Is(err, controlstore.ErrTerminated) is false")
	}
	var te *controlstore.TerminatedError
	if !errors.As(o.err, &te) || te.Scope != e.scope || te.OpID != e.target {
		return mismatch(fmt.Sprintf("the wrapped *controlstore.TerminatedError is %+v", te))
	}
	ei := errorInfo(o.err)
	md := ei.GetMetadata()
	if ei.GetDomain() != interceptor.ErrorDomain || ei.GetReason() != interceptor.ReasonTerminated ||
		md[interceptor.MetadataScope] != e.scope.String() || md[interceptor.MetadataTerminatedID] != e.target ||
		md[interceptor.MetadataOpID] != c.id {
		return mismatch(fmt.Sprintf("ErrorInfo is %v", ei))
	}
	return nil
}

// ms formats a duration for the timeline.
func ms(d time.Duration) string {
	f := float64(d) / float64(time.Millisecond)
	if f < 10 {
		return fmt.Sprintf("%.2f ms", f)
	}
	return fmt.Sprintf("%.0f ms", f)
}
