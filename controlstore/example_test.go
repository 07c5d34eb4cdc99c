package controlstore_test

import (
	"context"
	"errors"
	"fmt"

	"go.opentelemetry.io/otel/trace"

	"github.com/opcontrol/opcontrol/controlstore"
)

// The subscriber applies signals; every outbound call checks its op. This
// example plays both parts by hand.
func Example() {
	store, err := controlstore.New(controlstore.Agent{OrgID: "acme", TeamID: "platform", AgentID: "agent-7"})
	if err != nil {
		panic(err)
	}

	// The op of a call is its OpenTelemetry span: "{trace_id}:{span_id}".
	traceID, _ := trace.TraceIDFromHex("4bf92f3577b34da6a3ce929d0e0e4736")
	spanID, _ := trace.SpanIDFromHex("00f067aa0ba902b7")
	op := controlstore.OpFromIDs(traceID, spanID)

	fmt.Println("before any signal:", store.Check(op))

	// The operator pauses the op; a call is held until the resume.
	_ = store.Apply(op.String(), controlstore.SignalPause)
	go func() { _ = store.Apply(op.String(), controlstore.SignalResume) }()
	fmt.Println("held, then:", store.Wait(context.Background(), op))

	// The operator halts every op of this agent: terminate is sticky.
	_ = store.Apply("agent:agent-7", controlstore.SignalTerminate)
	_ = store.Apply("agent:agent-7", controlstore.SignalResume)
	err = store.Check(op)
	var te *controlstore.TerminatedError
	fmt.Println(errors.Is(err, controlstore.ErrTerminated), errors.As(err, &te) && te.Scope == controlstore.ScopeAgent)
	fmt.Println(err)

	// Bad input is refused and changes nothing.
	fmt.Println(store.Apply("agent:someone-else", controlstore.SignalTerminate))
	// Output:
	// before any signal: <nil>
	// held, then: <nil>
	// true true
	// opcontrol: every op of this agent ("agent:agent-7") terminated
	// opcontrol: signal terminate for op "agent:someone-else" rejected: foreign_agent
}
