package controlstore_test

import (
	"testing"

	"github.com/opcontrol/opcontrol/controlstore"
)

// compactedStore is a store full of entries whose history of compacted
// terminates is full too: the most a long-lived agent's store can hold, so
// a miss probes the entry table and every fingerprint generation.
func compactedStore(b *testing.B) *controlstore.Store {
	const entries, history = 4096, 1 << 20
	s := newStore(b, controlstore.WithMaxEntries(entries), controlstore.WithTerminatedHistory(history))
	for i := 0; s.Stats().Fingerprints < history && i < 4*history; i++ {
		_, id := uniqueOp(i)
		mustApply(b, s, id, controlstore.SignalTerminate)
	}
	return s
}

// BenchmarkCheckCompactedMiss checks an op that was never signalled
// against a full store and a full fingerprint history: what every gated
// call of an ordinary op costs in the worst steady state.
func BenchmarkCheckCompactedMiss(b *testing.B) {
	s := compactedStore(b)
	o, _ := op(1)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if s.Check(o) != nil {
				b.Fatal("denied")
			}
		}
	})
}

// BenchmarkCheckCompactedHit checks an op whose terminate was compacted:
// refused, with its error made on this path (1 allocation plus the id).
func BenchmarkCheckCompactedHit(b *testing.B) {
	s := compactedStore(b)
	o, _ := uniqueOp(5000) // compacted, within the history
	if s.Check(o) == nil {
		b.Fatal("the compacted op is allowed")
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if s.Check(o) == nil {
				b.Fatal("allowed")
			}
		}
	})
}
