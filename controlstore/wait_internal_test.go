package controlstore

import (
	"context"
	"errors"
	"testing"
	"time"
)

// A RESUME followed at once by a PAUSE must keep a held call held: the
// waiter is woken by the RESUME but must re-check, and by then the op is
// paused again. Applying both signals under one hold of the writer lock
// makes "at once" exact, so the test cannot pass by luck of scheduling.
func TestWaitRechecksAfterWakeup(t *testing.T) {
	s := mustNew(t, Agent{AgentID: "a"})
	op := OpFromID("trace-1:span-1")
	if err := s.Apply("trace-1:span-1", SignalPause); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Wait(context.Background(), op) }()
	waitUntil(t, func() bool { return s.held.Load() == 1 })

	for _, id := range []string{"trace-1:span-1", AgentOpIDPrefix + "a", GlobalOpID} {
		wakeups := s.wakeups.Load()
		s.mu.Lock()
		s.version.Add(1)
		if id == "trace-1:span-1" {
			s.applyOp(id, SignalResume)
			s.applyOp(id, SignalPause)
		} else {
			// Pause another scope, lift it at once.
			sc := &s.global
			if id != GlobalOpID {
				sc = &s.agentScope
			}
			s.applyScope(sc, SignalPause)
			s.applyScope(sc, SignalResume)
		}
		s.rearm()
		s.version.Add(1)
		s.mu.Unlock()

		// The waiter was woken and parked again without returning.
		waitUntil(t, func() bool { return s.wakeups.Load() > wakeups && s.held.Load() == 1 })
		select {
		case err := <-done:
			t.Fatalf("after resume+pause of %s, Wait returned %v; want it held", id, err)
		default:
		}
	}
	if err := s.Apply("trace-1:span-1", SignalResume); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Wait = %v after the final resume, want nil", err)
	}
}

func waitUntil(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 20s")
		}
		time.Sleep(time.Millisecond) // polling interval, not synchronisation
	}
}

// Calls held by a scope on an op with no entry leave no bookkeeping behind,
// whether they leave by cancellation or are released.
func TestAbsentWaitersCleanUp(t *testing.T) {
	s := mustNew(t, Agent{AgentID: "a"})
	op := OpFromID("trace-1:span-1")
	if err := s.Apply(GlobalOpID, SignalPause); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errs := make(chan error, 3)
	for i := 0; i < 2; i++ {
		go func() { errs <- s.Wait(ctx, op) }()
	}
	go func() { errs <- s.Wait(context.Background(), op) }()
	waitUntil(t, func() bool { return s.Held() == 3 })
	s.mu.Lock()
	if w := s.absent[op.key]; w == nil || w.waiters != 3 {
		t.Errorf("absent wait = %+v, want 3 waiters", w)
	}
	s.mu.Unlock()
	cancel()
	for i := 0; i < 2; i++ {
		if err := <-errs; !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled Wait = %v", err)
		}
	}
	if err := s.Apply(GlobalOpID, SignalResume); err != nil {
		t.Fatal(err)
	}
	if err := <-errs; err != nil {
		t.Fatalf("Wait = %v after the resume", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.absent) != 0 {
		t.Fatalf("absent holds %d entries after every waiter left", len(s.absent))
	}
}

func mustNew(tb testing.TB, a Agent, opts ...Option) *Store {
	tb.Helper()
	s, err := New(a, opts...)
	if err != nil {
		tb.Fatal(err)
	}
	return s
}
