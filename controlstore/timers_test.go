package controlstore_test

import (
	"sync"
	"testing"
	"time"

	"github.com/opcontrol/opcontrol/controlstore"
)

// fakeTimers stands in for time.AfterFunc: nothing fires until the test
// says that time has passed.
type fakeTimers struct {
	mu      sync.Mutex
	pending []*fakeTimer
}

type fakeTimer struct {
	f       func()
	stopped bool
}

func newFakeTimers() *fakeTimers { return &fakeTimers{} }

func (ft *fakeTimers) AfterFunc(_ time.Duration, f func()) func() bool {
	t := &fakeTimer{f: f}
	ft.mu.Lock()
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

// FireAll runs every timer that is pending and not stopped, as if their
// time had come, and returns how many ran.
func (ft *fakeTimers) FireAll() int {
	ft.mu.Lock()
	due := ft.pending
	ft.pending = nil
	ft.mu.Unlock()
	n := 0
	for _, t := range due {
		ft.mu.Lock()
		run := !t.stopped
		t.stopped = true
		ft.mu.Unlock()
		if run {
			t.f()
			n++
		}
	}
	return n
}

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
