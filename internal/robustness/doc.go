// Package robustness proves opcontrol's kill switch under faults, the way
// etcd's tests/robustness does: scenarios drive a real subscriber, store and
// gated tool client through injected faults, record a History of everything
// that happened, and Check it against named guarantees.
//
// The package's code is the history and its checker, which depend only on
// controlstore and the standard library; the scenarios, the fault-injection
// harness, the soak and the fuzz target are its tests:
//
//	go test -race ./robustness                        short mode (CI)
//	go test -race ./robustness -run TestSoak -v -args -robustness.long
//	                                                  long mode (scripts/soak.sh)
//	go test ./robustness -run '^$' -fuzz FuzzDecodeApply -fuzztime 10s
//
// # Guarantees
//
//   - TerminateEnforced: once the store has applied a terminate of an op, of
//     the agent or of every agent, no call of that op (or scope) that starts
//     afterwards reaches the invoker, and calls in flight or held end with
//     the terminated error.
//   - TerminateAbsorbing: nothing undoes a terminate: no later observation of
//     the store, and no later call, finds a terminated id running or paused
//     (except an op entry the store was entitled to evict, having received
//     at least its entry cap of newer entries).
//   - NoSpuriousResume: a held call proceeds only after a RESUME of the id
//     that held it was published, and a paused id is only ever observed
//     running again after a RESUME: never because of a disconnect, an
//     eviction or a timeout.
//   - LiveDelivery: every signal published while the subscriber was live on
//     one stream, not lagging, and before a later marker signal was seen
//     applied on that same stream, is applied (an agent or global RESUME
//     a settle window later: the store lets it settle); and the store never
//     holds a state that no published signal explains.
//   - Bounded: goroutines and heap return to their baseline after the run.
//
// See RELIABILITY.md at the repository root for the fault model and figures.
package robustness
