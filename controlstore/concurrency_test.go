package controlstore_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opcontrol/opcontrol/controlstore"
)

// TestConcurrentApplyAndGate runs one writer against many readers and
// waiters. Invariant: once Apply(TERMINATE) has returned for an op, every
// later Check and Wait of that op reports it terminated, and every tracked
// call of it is cancelled. The race detector checks the rest.
func TestConcurrentApplyAndGate(t *testing.T) {
	const nOps = 64
	s := newStore(t, controlstore.WithMaxEntries(nOps*2))
	ops := make([]controlstore.Op, nOps)
	ids := make([]string, nOps)
	for i := range ops {
		ops[i], ids[i] = op(i)
	}
	var terminated [nOps]atomic.Bool

	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var violations atomic.Int64
	readers := 8
	if raceEnabled {
		readers = 4
	}
	for r := 0; r < readers; r++ {
		wg.Add(1)
		go func(seed uint64) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, 1))
			for ctx.Err() == nil {
				i := rng.IntN(nOps)
				wasTerminated := terminated[i].Load()
				var err error
				if rng.IntN(4) == 0 {
					wctx, cancel := context.WithTimeout(ctx, time.Millisecond)
					err = s.Wait(wctx, ops[i])
					cancel()
				} else {
					err = s.Check(ops[i])
				}
				if wasTerminated && !errors.Is(err, controlstore.ErrTerminated) {
					violations.Add(1)
				}
				if err != nil && !errors.Is(err, controlstore.ErrTerminated) && !errors.Is(err, controlstore.ErrPaused) {
					violations.Add(1)
				}
				cctx, cancel := context.WithCancelCause(ctx)
				call := s.Track(ops[i], cancel)
				if terminated[i].Load() && cctx.Err() == nil {
					violations.Add(1)
				}
				call.Release()
				cancel(nil)
			}
		}(uint64(r))
	}

	rng := rand.New(rand.NewPCG(42, 42))
	signals := 20000
	if raceEnabled {
		signals = 5000
	}
	for n := 0; n < signals; n++ {
		i := rng.IntN(nOps)
		sig := []controlstore.Signal{controlstore.SignalPause, controlstore.SignalResume, controlstore.SignalPause, controlstore.SignalResume, controlstore.SignalTerminate}[rng.IntN(5)]
		if n >= signals-nOps { // end with every op terminated
			i, sig = n-(signals-nOps), controlstore.SignalTerminate
		}
		mustApply(t, s, ids[i], sig)
		if sig == controlstore.SignalTerminate {
			terminated[i].Store(true)
		}
	}
	stop()
	wg.Wait()
	if v := violations.Load(); v != 0 {
		t.Fatalf("%d invariant violations", v)
	}
	for i := range ops {
		if !errors.Is(s.Check(ops[i]), controlstore.ErrTerminated) {
			t.Fatalf("op %d not terminated at the end", i)
		}
	}
	if s.InFlight() != 0 || s.Stats().Held != 0 {
		t.Fatalf("InFlight=%d Held=%d after all calls ended", s.InFlight(), s.Stats().Held)
	}
}

// Whatever State shows is already enforced by Check: a reader that sees an
// op paused through State must never pass Check while it is still paused.
// Each round pauses and resumes a new op, starting from an unarmed store, so
// "paused, then allowed, then paused" can only mean Check ran behind State.
func TestStateNeverRunsAheadOfCheck(t *testing.T) {
	s := newStore(t)
	rounds := 20000
	if raceEnabled {
		rounds = 2000
	}
	ops := make([]controlstore.Op, rounds)
	ids := make([]string, rounds)
	for i := range ops {
		ops[i], ids[i] = op(i)
	}
	var current atomic.Int64
	stop := make(chan struct{})
	var violations atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			j := current.Load()
			if s.State(ids[j]) == controlstore.Paused && s.Check(ops[j]) == nil && s.State(ids[j]) == controlstore.Paused {
				violations.Add(1)
			}
		}
	}()
	for i := range ids {
		current.Store(int64(i))
		mustApply(t, s, ids[i], controlstore.SignalPause)
		mustApply(t, s, ids[i], controlstore.SignalResume)
	}
	close(stop)
	wg.Wait()
	if v := violations.Load(); v != 0 {
		t.Fatalf("%d times State said paused while Check let the call through", v)
	}
}
