// Package controlstore is the local record of op control: which of this
// agent's operations ("ops") the gateway's operator has paused or
// terminated. It is the centre of opcontrol and imports no gRPC: package
// stream writes it, package interceptor reads it.
//
// # Ids and scopes
//
// The gateway addresses signals to an op id:
//
//	"{trace_id}:{span_id}"  one op (ScopeOp), matched as an exact string
//	"agent:{agent_id}"      every op of this agent (ScopeAgent)
//	"*"                     every op of every agent (ScopeGlobal)
//
// A call's effective state is the most severe of its op, its agent and the
// global scope; a call with no op (no valid span) is still subject to the
// last two.
//
// # Semantics
//
//	signal \ state   running       paused        terminated
//	PAUSE            paused        paused        terminated
//	RESUME           running       running       terminated
//	TERMINATE        terminated    terminated    terminated
//
// Terminate is sticky for every scope, "*" included: only a new process
// clears it. Running is never stored; RESUME removes an op's entry. Signals
// that are unspecified or unknown, empty or longer than MaxOpIDLen, or that
// halt another agent, are rejected with a *RejectedError and change nothing.
//
// # Gate
//
// Check answers without blocking; Wait holds a paused call until every scope
// is running, a scope is terminated, or its context ends, and re-checks after
// every wakeup. Errors: *TerminatedError (errors.Is ErrTerminated),
// *PausedError (ErrPaused, wrapping the context error), ErrUnavailable while
// failing closed, *EvictedError when a held op's entry is evicted. Track
// registers an in-flight call so that a later terminate cancels it with the
// *TerminatedError as cause.
//
// # Concurrency
//
// One writer (Apply, under a mutex) and any number of readers. Readers take
// no lock and allocate nothing: an atomic flag says whether anything is
// signalled at all (the common case costs one load); otherwise the reserved
// scopes are atomics and per-op entries sit in a fixed-capacity
// open-addressing table of atomic pointers, with a sequence counter so that a
// reader sees the three scopes of one moment. Ids in OpenTelemetry form are
// parsed once, when the signal arrives, and looked up by the raw trace and
// span id arrays. Reads never insert entries.
//
// A held call waits on one channel: its op's entry's (made when the first
// call waits on it), or, when its op has no entry yet, one kept for that op
// id until a signal for it arrives. A signal for op X closes X's channel
// only, so it wakes the calls held on X and never those held on Y; a change
// of the agent or global scope, which concerns every call, closes them all.
// Woken calls re-check without taking the writer's lock.
//
// # Bounded memory
//
// At most WithMaxEntries per-op entries (DefaultMaxEntries). When full, the
// oldest terminated entry is evicted first; only if every entry is paused is
// the oldest paused one evicted, and its held calls fail closed with an
// *EvictedError. Evictions are counted in Stats and in metrics.
package controlstore
