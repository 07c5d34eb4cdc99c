package controlstore_test

import (
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/opcontrol/opcontrol/controlstore"
)

// fakeTimers stands in for time.AfterFunc: time passes only when the test
// says so (Pass), and then every timer that has come due fires, in the
// order of its due time.
type fakeTimers struct {
	mu      sync.Mutex
	now     time.Duration
	pending []*fakeTimer
}

type fakeTimer struct {
	due     time.Duration
	f       func()
	stopped bool
}

func newFakeTimers() *fakeTimers { return &fakeTimers{} }

func (ft *fakeTimers) AfterFunc(d time.Duration, f func()) func() bool {
	ft.mu.Lock()
	t := &fakeTimer{due: ft.now + max(d, 0), f: f}
	ft.pending = append(ft.pending, t)
	ft.mu.Unlock()
	return func() bool {
		ft.mu.Lock()
		defer ft.mu.Unlock()
		was := !t.stopped
		t.stopped = true
		return was
	}
}

// Pass moves time on by d and fires every timer due by then, including
// timers that fired timers arm, and returns how many fired.
func (ft *fakeTimers) Pass(d time.Duration) int {
	ft.mu.Lock()
	ft.now += d
	ft.mu.Unlock()
	n := 0
	for {
		ft.mu.Lock()
		ft.pending = slices.DeleteFunc(ft.pending, func(t *fakeTimer) bool { return t.stopped })
		slices.SortStableFunc(ft.pending, func(a, b *fakeTimer) int { return int(a.due - b.due) })
		if len(ft.pending) == 0 || ft.pending[0].due > ft.now {
			ft.mu.Unlock()
			return n
		}
		t := ft.pending[0]
		ft.pending = ft.pending[1:]
		t.stopped = true
		ft.mu.Unlock()
		t.f()
		n++
	}
}

// PassSettle lets one default settle window pass: well short of the bus
// grace.
func (ft *fakeTimers) PassSettle() int { return ft.Pass(controlstore.DefaultResumeSettle) }

// rig is a store on fake timers fed by a gateway source, running and
// live, and a bus source, running but not yet live (catching up).
type rig struct {
	s       *controlstore.Store
	timers  *fakeTimers
	gw, bus *controlstore.Source
}

func newRig(t *testing.T) *rig {
	r := &rig{timers: newFakeTimers()}
	r.s = newStore(t, controlstore.WithAfterFunc(r.timers.AfterFunc))
	r.bus = r.s.AddSource("bus", controlstore.SourceBus)
	r.gw = r.s.AddSource("gateway", controlstore.SourceGateway)
	r.gw.Start()
	r.gw.SetLive(true)
	r.bus.Start()
	return r
}

// apply applies sigs to opID through src, in order.
func apply(t *testing.T, src *controlstore.Source, opID string, sigs ...controlstore.Signal) {
	t.Helper()
	for _, sig := range sigs {
		if err := src.Apply(opID, sig); err != nil {
			t.Fatalf("%s.Apply(%s, %v): %v", src.Name(), opID, sig, err)
		}
	}
}

// wantState fails unless opID is in state want.
func wantState(t *testing.T, s *controlstore.Store, opID string, want controlstore.State, when string) {
	t.Helper()
	if got := s.State(opID); got != want {
		t.Fatalf("%s: %s is %v, want %v", when, opID, got, want)
	}
}
