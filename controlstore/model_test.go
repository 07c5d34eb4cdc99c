package controlstore_test

import (
	"context"
	"errors"
	"testing"

	"github.com/opcontrol/opcontrol/controlstore"
)

// model is the reference semantics, written as plainly as possible.
type model struct {
	state map[string]controlstore.State
}

func (m *model) apply(id string, sig controlstore.Signal) (rejected bool) {
	if sig < controlstore.SignalPause || sig > controlstore.SignalTerminate || id == "agent:other" {
		return true
	}
	cur := m.state[id]
	switch {
	case cur == controlstore.Terminated:
	case sig == controlstore.SignalPause:
		m.state[id] = controlstore.Paused
	case sig == controlstore.SignalResume:
		delete(m.state, id)
	case sig == controlstore.SignalTerminate:
		m.state[id] = controlstore.Terminated
	}
	return false
}

// effective is the most severe of the op's, the agent's and the global state.
func (m *model) effective(opID string) controlstore.State {
	st := m.state["*"]
	if a := m.state["agent:"+agentID]; a > st {
		st = a
	}
	if opID != "" {
		if o := m.state[opID]; o > st {
			st = o
		}
	}
	return st
}

func (m *model) entries() int {
	n := 0
	for id := range m.state {
		if id != "*" && id != "agent:"+agentID {
			n++
		}
	}
	return n
}

// FuzzStoreMatchesModel applies random signal sequences over a few ops and
// both reserved scopes, and compares every step with the model: each id's
// state, each op's gate decision, the entry count, and that a tracked
// in-flight call is cancelled exactly when its op becomes terminated.
func FuzzStoreMatchesModel(f *testing.F) {
	f.Add([]byte{0x01, 0x02, 0x11, 0x03})
	f.Add([]byte{0x41, 0x02, 0x03, 0x42, 0x51, 0x52})
	f.Add([]byte{0x13, 0x12, 0x11, 0x23, 0x33, 0x43, 0x53, 0x63, 0x00, 0x07})
	f.Fuzz(func(t *testing.T, program []byte) {
		ops := make([]controlstore.Op, 0, 5)
		ids := make([]string, 0, 7)
		for i := 0; i < 3; i++ {
			o, id := op(i)
			ops, ids = append(ops, o), append(ids, id)
		}
		ids = append(ids, "trace-001:span-001", "*", "agent:"+agentID, "agent:other")
		ops = append(ops, controlstore.OpFromID("trace-001:span-001"), controlstore.Op{})

		s := newStore(t)
		m := &model{state: map[string]controlstore.State{}}
		// One in-flight call per op, each with its own context.
		ctxs := make([]context.Context, len(ops))
		for i := range ops {
			callCtx, cancel := context.WithCancelCause(context.Background())
			defer cancel(nil)
			ctxs[i] = callCtx //nolint:fatcontext // one context per call, not a chain
			defer s.Track(ops[i], cancel).Release()
		}

		for step, b := range program {
			id := ids[int(b>>4)%len(ids)]
			sig := controlstore.Signal(b & 0x0f % 6)
			err := s.Apply(id, sig)
			if rejected := m.apply(id, sig); rejected != (err != nil) {
				t.Fatalf("step %d: Apply(%s, %v) = %v, model rejected=%v", step, id, sig, err, rejected)
			}
			for _, id := range ids {
				want := m.state[id]
				if id == "agent:other" {
					want = controlstore.Running
				}
				if got := s.State(id); got != want {
					t.Fatalf("step %d: State(%s) = %v, want %v", step, id, got, want)
				}
			}
			for i, o := range ops {
				opID := ""
				if i < 4 {
					opID = ids[i]
				}
				want := m.effective(opID)
				err := s.Check(o)
				var got controlstore.State
				switch {
				case err == nil:
					got = controlstore.Running
				case errors.Is(err, controlstore.ErrPaused):
					got = controlstore.Paused
				case errors.Is(err, controlstore.ErrTerminated):
					got = controlstore.Terminated
				default:
					t.Fatalf("step %d: Check(%s) = unexpected %v", step, opID, err)
				}
				if got != want {
					t.Fatalf("step %d: Check(%q) gives %v, want %v", step, opID, got, want)
				}
				if cancelled := ctxs[i].Err() != nil; cancelled != (want == controlstore.Terminated) {
					t.Fatalf("step %d: in-flight call of %q cancelled=%v, effective state %v", step, opID, cancelled, want)
				}
			}
			if s.Len() != m.entries() {
				t.Fatalf("step %d: Len = %d, want %d", step, s.Len(), m.entries())
			}
		}
	})
}
