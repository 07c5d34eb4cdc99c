package controlstore_test

import (
	"context"
	"sync"
	"testing"

	"github.com/opcontrol/opcontrol/controlstore"
)

// Run with: go test -run '^$' -bench . -benchmem -cpu 1,2 -count 6 ./controlstore/

// BenchmarkCheckNoControls is the common case: nothing signalled.
func BenchmarkCheckNoControls(b *testing.B) {
	s := newStore(b)
	o, _ := op(1)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if s.Check(o) != nil {
				b.Fatal("denied")
			}
		}
	})
}

// activeStore holds 4,096 entries, half paused and half terminated, plus a
// paused agent... no: scopes stay running so the checked op is allowed and
// every scope must be consulted.
func activeStore(b *testing.B) *controlstore.Store {
	s := newStore(b)
	for i := 0; i < 4096; i++ {
		_, id := op(i + 10)
		sig := controlstore.SignalPause
		if i%2 == 0 {
			sig = controlstore.SignalTerminate
		}
		mustApply(b, s, id, sig)
	}
	return s
}

// BenchmarkCheckActive checks an op that is not signalled against a store
// with 4,096 active entries: global, agent and op are all consulted.
func BenchmarkCheckActive(b *testing.B) {
	s := activeStore(b)
	o, _ := op(1)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if s.Check(o) != nil {
				b.Fatal("denied")
			}
		}
	})
}

// BenchmarkCheckActiveHit checks a terminated op among 4,096 active entries:
// the deny path allocates nothing either.
func BenchmarkCheckActiveHit(b *testing.B) {
	s := activeStore(b)
	o, _ := op(10) // terminated
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if s.Check(o) == nil {
				b.Fatal("allowed")
			}
		}
	})
}

// mutexStore is the baseline: what a plain mutex-guarded map costs.
type mutexStore struct {
	mu     sync.Mutex
	states map[controlstore.Op]controlstore.State
	global controlstore.State
	agent  controlstore.State
}

func (m *mutexStore) check(o controlstore.Op) controlstore.State {
	m.mu.Lock()
	defer m.mu.Unlock()
	return max(m.global, m.agent, m.states[o])
}

func BenchmarkBaselineMutexMapActive(b *testing.B) {
	m := &mutexStore{states: map[controlstore.Op]controlstore.State{}}
	for i := 0; i < 4096; i++ {
		o, _ := op(i + 10)
		m.states[o] = controlstore.Paused
	}
	o, _ := op(1)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if m.check(o) != controlstore.Running {
				b.Fatal("denied")
			}
		}
	})
}

// BenchmarkApply measures one pause and one resume of a fresh op id; the
// ids are prepared outside the timer.
func BenchmarkApply(b *testing.B) {
	s := newStore(b)
	ids := make([]string, 4096)
	for i := range ids {
		_, ids[i] = op(i)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		id := ids[i%len(ids)]
		_ = s.Apply(id, controlstore.SignalPause)
		_ = s.Apply(id, controlstore.SignalResume)
	}
}

// BenchmarkApplyTerminateFull measures a terminate of a new op into a full
// store, which evicts the oldest terminated entry.
func BenchmarkApplyTerminateFull(b *testing.B) {
	s := newStore(b, controlstore.WithMaxEntries(1024))
	ids := make([]string, 8192)
	for i := range ids {
		_, ids[i] = op(i)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		_ = s.Apply(ids[i%len(ids)], controlstore.SignalTerminate)
	}
}

// BenchmarkRelease10000Waiters: time from the RESUME to the last of 10,000
// held calls returning.
func BenchmarkRelease10000Waiters(b *testing.B) {
	const n = 10000
	o, id := op(1)
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		s := newStore(b)
		mustApply(b, s, id, controlstore.SignalPause)
		var wg sync.WaitGroup
		wg.Add(n)
		for j := 0; j < n; j++ {
			go func() {
				defer wg.Done()
				_ = s.Wait(context.Background(), o)
			}()
		}
		waitFor(b, func() bool { return s.Stats().Held == n })
		b.StartTimer()
		mustApply(b, s, id, controlstore.SignalResume)
		wg.Wait()
	}
}

// BenchmarkTrackRelease is the in-flight registration every gated call pays
// when cancellation on terminate is on (the cancel func is made outside).
func BenchmarkTrackRelease(b *testing.B) {
	s := newStore(b)
	_, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		o, _ := op(1)
		for pb.Next() {
			s.Track(o, cancel).Release()
		}
	})
}

// BenchmarkRelease10000Floor is the Go runtime's own floor for the above:
// 10,000 goroutines blocked in a select, one close, a WaitGroup. Compare
// in the same run.
func BenchmarkRelease10000Floor(b *testing.B) {
	const n = 10000
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		ch, other := make(chan struct{}), make(chan struct{})
		var parked, done sync.WaitGroup
		parked.Add(n)
		done.Add(n)
		for j := 0; j < n; j++ {
			go func() {
				defer done.Done()
				parked.Done()
				select {
				case <-ch:
				case <-other:
				}
			}()
		}
		parked.Wait()
		b.StartTimer()
		close(ch)
		done.Wait()
	}
}
