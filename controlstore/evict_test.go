package controlstore_test

import (
	"context"
	"errors"
	"runtime"
	"testing"

	"github.com/opcontrol/opcontrol/controlstore"
)

func TestEvictsOldestTerminatedFirst(t *testing.T) {
	s := newStore(t, controlstore.WithMaxEntries(3))
	_, p1 := op(1)
	_, t1 := op(2)
	_, t2 := op(3)
	_, n := op(4)
	mustApply(t, s, p1, controlstore.SignalPause)
	mustApply(t, s, t1, controlstore.SignalTerminate)
	mustApply(t, s, t2, controlstore.SignalTerminate)
	mustApply(t, s, n, controlstore.SignalPause) // full: evicts t1

	if s.Len() != 3 {
		t.Fatalf("Len = %d, want 3", s.Len())
	}
	if s.State(t1) != controlstore.Running || s.State(t2) != controlstore.Terminated || s.State(p1) != controlstore.Paused {
		t.Fatalf("states t1=%v t2=%v p1=%v, want the oldest terminated entry evicted", s.State(t1), s.State(t2), s.State(p1))
	}
	if st := s.Stats(); st.EvictedTerminated != 1 || st.EvictedPaused != 0 {
		t.Fatalf("Stats = %+v, want one terminated eviction", st)
	}
}

func TestEvictsOldestPausedOnlyWhenAllPaused(t *testing.T) {
	s := newStore(t, controlstore.WithMaxEntries(2))
	o1, p1 := op(1)
	_, p2 := op(2)
	_, n := op(3)
	mustApply(t, s, p1, controlstore.SignalPause)
	mustApply(t, s, p2, controlstore.SignalPause)

	held := make(chan error, 1)
	go func() { held <- s.Wait(context.Background(), o1) }()
	waitFor(t, func() bool { return s.Stats().Held == 1 })

	mustApply(t, s, n, controlstore.SignalTerminate) // full, all paused: evicts p1
	err := <-held
	var ee *controlstore.EvictedError
	if !errors.As(err, &ee) || ee.OpID != p1 || !errors.Is(err, controlstore.ErrUnavailable) {
		t.Fatalf("held call = %v, want an EvictedError for %s that fails closed", err, p1)
	}
	if s.State(p1) != controlstore.Running || s.State(n) != controlstore.Terminated {
		t.Fatal("wrong entry evicted")
	}
	if st := s.Stats(); st.EvictedPaused != 1 {
		t.Fatalf("Stats = %+v, want one paused eviction", st)
	}
}

// A flood of unique terminates, the worst a gateway can send, keeps the
// store at its cap and its heap flat.
func TestTerminateFloodStaysBounded(t *testing.T) {
	const capacity = 1024
	flood := 1_000_000
	if testing.Short() || raceEnabled {
		flood = 100_000 // still 100 times the cap
	}
	s := newStore(t, controlstore.WithMaxEntries(capacity))
	var ids [4096]string
	for i := range ids {
		_, ids[i] = op(i)
	}
	heap := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	// Warm up to the cap so the baseline includes a full store.
	for i := 0; i < 2*capacity; i++ {
		mustApply(t, s, ids[i%len(ids)]+"x", controlstore.SignalTerminate)
	}
	before := heap()
	for i := 0; i < flood; i++ {
		// Unique ids without keeping them alive here.
		id := ids[i%len(ids)] + string(rune('a'+i/len(ids)%26)) + string(rune('a'+i/len(ids)/26%26))
		if err := s.Apply(id, controlstore.SignalTerminate); err != nil {
			t.Fatal(err)
		}
		if s.Len() > capacity {
			t.Fatalf("Len = %d exceeds the cap %d", s.Len(), capacity)
		}
	}
	after := heap()
	if after > before+8<<20 {
		t.Fatalf("heap grew from %d to %d bytes over %d terminates", before, after, flood)
	}
	if st := s.Stats(); st.EvictedTerminated < uint64(flood-capacity) {
		t.Fatalf("Stats = %+v, want every overflow counted as an eviction", st)
	}
}

// Resume churn leaves tombstones in the table; the table must rebuild and
// keep every remaining entry reachable.
func TestChurnKeepsEntriesReachable(t *testing.T) {
	s := newStore(t, controlstore.WithMaxEntries(64))
	keep, keepID := op(100000)
	mustApply(t, s, keepID, controlstore.SignalTerminate)
	for i := 0; i < 20000; i++ {
		_, id := op(i)
		mustApply(t, s, id, controlstore.SignalPause)
		mustApply(t, s, id, controlstore.SignalResume)
		if i%1000 == 0 && !errors.Is(s.Check(keep), controlstore.ErrTerminated) {
			t.Fatalf("after %d churn cycles the terminated op is no longer found", i)
		}
	}
	if s.Len() != 1 || !errors.Is(s.Check(keep), controlstore.ErrTerminated) {
		t.Fatalf("Len = %d, Check = %v; want only the terminated op left", s.Len(), s.Check(keep))
	}
}
