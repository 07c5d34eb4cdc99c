package controlstore_test

import (
	"sync"
	"time"
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
