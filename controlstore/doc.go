// Package controlstore is the local record of op control: which of this
// agent's operations ("ops") the gateway's operator has paused or
// terminated. It is the centre of opcontrol and imports no gRPC: sources
// (package stream, the jetstream module) write it, package interceptor
// reads it.
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
// This table is the one source of the store's semantics; other documents
// summarise it.
//
//	signal \ state   running       paused        terminated
//	PAUSE            paused        paused        terminated
//	RESUME           running       running       terminated
//	TERMINATE        terminated    terminated    terminated
//
// Terminate is sticky for every scope, "*" included: only a new process
// clears it. Running is never stored; RESUME removes an op's entry. Signals
// that are unspecified or unknown, empty, longer than MaxOpIDLen (the
// agent's own halt excepted, whatever its length), or that halt another
// agent, are rejected with a *RejectedError and change nothing. Repeated
// signals are harmless.
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
// # Sources
//
// Each feed of signals registers a Source (AddSource) and applies through
// it, reporting whether it is live. The store reconciles several feeds in
// one place: a terminate from any source applies at once; while a bus
// source (SourceBus, durable and ordered) runs, the agent and global
// scopes follow it, and a gateway stream only bridges its outages (its
// pause at once, its resume waiting for the bus, what the bus, back, does
// not confirm undone); past WithBusGrace, or with no bus, the gateway's
// word stands, its resumes settling for WithResumeSettle so that a
// replayed PAUSE, RESUME, PAUSE does not release held calls in between.
// See Source for the rules and why.
//
// Failing closed is decided here too, per kind of source: with
// FailClosedAfter(d), once no source of that kind has been live for d,
// every gated call fails with ErrUnavailable (a terminate still wins) until
// one is live again; a second source of a kind that is down does not count
// while another is live. A source may also hold the store failing closed
// (HoldFailClosed), for example a bus that knows it lost halts. SyncStatus
// reports every source.
//
// # Concurrency
//
// One writer at a time (under a mutex) and any number of readers. Readers
// take no lock and allocate nothing: an atomic flag says whether anything
// is signalled at all (the common case costs one load); otherwise the
// reserved scopes are atomics and per-op entries sit in an open-addressing
// table of atomic pointers, with a sequence counter so that a reader sees
// the three scopes of one moment. Ids in OpenTelemetry form are parsed
// once, when the signal arrives, and looked up by the raw trace and span id
// arrays. Reads never insert entries.
//
// A held call waits on one channel: its op's entry's (made when the first
// call waits on it), or, when its op has no entry yet, one kept for that op
// id until a signal for it arrives. A signal for op X closes X's channel
// only, so it wakes the calls held on X and never those held on Y; a change
// of the agent or global scope, which concerns every call, closes them all.
// Woken calls re-check without taking the writer's lock.
//
// # Bounded memory, and a terminate is never lost to it
//
// At most WithMaxEntries per-op entries (DefaultMaxEntries; about 10.8 MiB
// with the longest ids, 3.8 MiB with OpenTelemetry ones); the table grows
// with its entries. When the store is full, the oldest terminated entry is
// compacted: the op is kept as a 64-bit fingerprint and stays terminated.
// Fingerprints are forgotten only after at least WithTerminatedHistory
// further compactions (DefaultTerminatedHistory; at most 16 MiB, about
// 14 bytes per remembered terminate). Only when every entry is paused is
// the oldest paused entry evicted: its held calls fail closed with an
// *EvictedError, and a later call of that op runs. Agent and global scopes
// are never evicted. Everything is counted in Stats and in metrics.
package controlstore
