package controlstore_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"testing"

	"go.opentelemetry.io/otel/trace"

	"github.com/opcontrol/opcontrol/controlstore"
)

// The attack: a store full of paused entries, one terminate among them.
// Under the old rule the very next new entry evicted the terminate and the
// op ran again. A terminated entry is now compacted to a fingerprint, and
// the op stays terminated for every reader.
func TestTerminateSurvivesAStoreFullOfPauses(t *testing.T) {
	const capacity = 8
	s := newStore(t, controlstore.WithMaxEntries(capacity))
	killed, killedID := op(1000)
	mustApply(t, s, killedID, controlstore.SignalTerminate)
	for i := range capacity - 1 {
		_, id := op(i)
		mustApply(t, s, id, controlstore.SignalPause)
	}
	_, newID := op(999)
	mustApply(t, s, newID, controlstore.SignalPause) // full: the terminated entry goes

	if st := s.Stats(); st.EvictedTerminated != 1 || st.Fingerprints != 1 || st.EvictedPaused != 0 {
		t.Fatalf("Stats = %+v, want the terminated entry compacted, no pause evicted", st)
	}
	err := s.Check(killed)
	var te *controlstore.TerminatedError
	if !errors.As(err, &te) || te.OpID != killedID || te.Scope != controlstore.ScopeOp {
		t.Fatalf("Check(compacted op) = %v, want a TerminatedError naming %s", err, killedID)
	}
	if got := s.State(killedID); got != controlstore.Terminated {
		t.Fatalf("State = %v, want terminated", got)
	}
	if err := s.Wait(context.Background(), killed); !errors.Is(err, controlstore.ErrTerminated) {
		t.Fatalf("Wait = %v, want ErrTerminated", err)
	}
	// Sticky: later signals for it create nothing and change nothing.
	mustApply(t, s, killedID, controlstore.SignalPause)
	mustApply(t, s, killedID, controlstore.SignalResume)
	if !errors.Is(s.Check(killed), controlstore.ErrTerminated) || s.Stats().EvictedPaused != 0 {
		t.Fatalf("after PAUSE/RESUME of the compacted op: Check = %v, Stats = %+v", s.Check(killed), s.Stats())
	}
	// An in-flight registration of it is cancelled at once.
	cctx, cancel := context.WithCancelCause(context.Background())
	call := s.Track(killed, cancel)
	defer call.Release()
	if !errors.Is(context.Cause(cctx), controlstore.ErrTerminated) {
		t.Fatalf("Track of a compacted op: cause %v, want ErrTerminated", context.Cause(cctx))
	}
}

// uniqueOp returns the op of n for any n (op covers 65,536 only).
func uniqueOp(n int) (controlstore.Op, string) {
	var tid trace.TraceID
	var sid trace.SpanID
	binary.BigEndian.PutUint64(tid[8:], uint64(n)+1)
	tid[0] = 0xee
	binary.BigEndian.PutUint64(sid[:], uint64(n)|1<<63)
	return controlstore.OpFromIDs(tid, sid), tid.String() + ":" + sid.String()
}

// The stated bound: a compacted terminate outlives at least
// TerminatedHistory further compactions; after enough more it is
// forgotten, counted, and memory stops growing.
func TestCompactedTerminateHistoryBound(t *testing.T) {
	const history = 300
	s := newStore(t, controlstore.WithMaxEntries(2), controlstore.WithTerminatedHistory(history))
	h := s.Stats().TerminatedHistory
	if h < history {
		t.Fatalf("TerminatedHistory = %d, want at least the %d asked for", h, history)
	}
	first, firstID := uniqueOp(0)
	mustApply(t, s, firstID, controlstore.SignalTerminate)
	// Two entries fit; the first is compacted by the third terminate. Then
	// h more compactions.
	n := 1
	for ; s.Stats().EvictedTerminated < uint64(1+h); n++ {
		_, id := uniqueOp(n)
		mustApply(t, s, id, controlstore.SignalTerminate)
		if s.Len() > 2 {
			t.Fatalf("Len = %d over the cap", s.Len())
		}
	}
	if !errors.Is(s.Check(first), controlstore.ErrTerminated) {
		t.Fatalf("forgotten after %d further compactions, promised at least %d", h, h)
	}
	if st := s.Stats(); st.ForgottenTerminated != 0 {
		t.Fatalf("Stats = %+v: forgot something within the history", st)
	}
	// Keep going: it must be forgotten within (G+1)·perGen, and the
	// fingerprints held never exceed what the memory bound allows.
	for ; errors.Is(s.Check(first), controlstore.ErrTerminated); n++ {
		_, id := uniqueOp(n)
		mustApply(t, s, id, controlstore.SignalTerminate)
		if n > 10*h {
			t.Fatalf("still remembered after %d terminates: the history is not bounded", n)
		}
	}
	st := s.Stats()
	if st.ForgottenTerminated == 0 || st.Fingerprints > h*4/3+1 {
		t.Fatalf("Stats = %+v after the first was forgotten", st)
	}
	// A forgotten op can be signalled afresh.
	mustApply(t, s, firstID, controlstore.SignalPause)
	if s.State(firstID) != controlstore.Paused {
		t.Fatalf("State = %v, want paused anew", s.State(firstID))
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
// store at its cap and its heap flat once the fingerprint history is full.
func TestTerminateFloodStaysBounded(t *testing.T) {
	const capacity = 1024
	flood := 1_000_000
	if testing.Short() || raceEnabled {
		flood = 100_000 // still 100 times the cap
	}
	// A small history, so that it fills early in the flood; its memory
	// (under 1 MiB here) is part of the 8 MiB allowed.
	s := newStore(t, controlstore.WithMaxEntries(capacity), controlstore.WithTerminatedHistory(20_000))
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
	st := s.Stats()
	if st.EvictedTerminated < uint64(flood-capacity) || st.ForgottenTerminated == 0 {
		t.Fatalf("Stats = %+v, want every overflow counted as an eviction, the oldest forgotten", st)
	}
	if st.Fingerprints > st.TerminatedHistory*4/3+1 {
		t.Fatalf("Stats = %+v: more fingerprints than the history bound", st)
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

func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// A large cap must not cost its memory before entries arrive: the table
// grows with them. (A 4 M cap used to allocate 64 MiB at New.)
func TestLargeCapCostsLittleUpFront(t *testing.T) {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	s, err := controlstore.New(controlstore.Agent{AgentID: "a"}, controlstore.WithMaxEntries(4<<20))
	runtime.ReadMemStats(&after)
	if err != nil {
		t.Fatal(err)
	}
	if got := after.TotalAlloc - before.TotalAlloc; got > 256<<10 {
		t.Fatalf("New with a 4 M cap allocated %d bytes, want under 256 KiB", got)
	}
	// And it grows to hold what arrives, every entry reachable.
	const n = 100_000
	for i := range n {
		_, id := uniqueOp(i)
		mustApply(t, s, id, controlstore.SignalPause)
	}
	for i := 0; i < n; i += 997 {
		o, _ := uniqueOp(i)
		if !errors.Is(s.Check(o), controlstore.ErrPaused) {
			t.Fatalf("entry %d of %d lost while the table grew", i, n)
		}
	}
	if s.Len() != n || s.Stats().EvictedPaused != 0 {
		t.Fatalf("Len = %d, Stats = %+v", s.Len(), s.Stats())
	}
}

// The documented memory bound: the default cap full of 512-byte ids, the
// largest the store accepts, costs about 10.8 MiB.
func TestMemoryAtTheDefaultCap(t *testing.T) {
	if testing.Short() {
		t.Skip("fills 16,384 entries")
	}
	s := newStore(t)
	base := heapInUse()
	for i := range controlstore.DefaultMaxEntries {
		id := fmt.Sprintf("%0*d", controlstore.MaxOpIDLen, i)
		mustApply(t, s, id, controlstore.SignalPause)
	}
	used := heapInUse() - base
	t.Logf("%d entries of %d-byte ids: %.1f MiB", s.Len(), controlstore.MaxOpIDLen, float64(used)/(1<<20))
	if used > 12<<20 {
		t.Fatalf("%d bytes at the default cap, documented about 10.8 MiB", used)
	}
	runtime.KeepAlive(s)
}
