package controlstore_test

import (
	"context"
	"errors"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/opcontrol/opcontrol/controlstore"
)

const agentID = "did:key:z6Mkm5rByiqq5UNbvPFPfXtGJwdg2kD1T"

func newStore(t testing.TB, opts ...controlstore.Option) *controlstore.Store {
	t.Helper()
	s, err := controlstore.New(controlstore.Agent{OrgID: "acme", TeamID: "platform", AgentID: agentID}, append([]controlstore.Option{controlstore.WithLogger(nil)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// op returns a distinct OpenTelemetry op and its gateway id.
func op(n int) (controlstore.Op, string) {
	var tid trace.TraceID
	var sid trace.SpanID
	tid[0], tid[15] = 0xab, byte(n)
	tid[14] = byte(n >> 8)
	sid[0], sid[7] = 0xcd, byte(n)
	return controlstore.OpFromIDs(tid, sid), tid.String() + ":" + sid.String()
}

func mustApply(t testing.TB, s *controlstore.Store, id string, sig controlstore.Signal) {
	t.Helper()
	if err := s.Apply(id, sig); err != nil {
		t.Fatalf("Apply(%q, %v): %v", id, sig, err)
	}
}

func TestNewRefusesConfigurationsThatCannotWork(t *testing.T) {
	good := controlstore.Agent{OrgID: "o", TeamID: "t", AgentID: agentID}
	tests := []struct {
		name  string
		agent controlstore.Agent
		opts  []controlstore.Option
		want  string // in the error
	}{
		{"no agent id", controlstore.Agent{OrgID: "o"}, nil, "AgentID is empty"},
		{"org not UTF-8", controlstore.Agent{OrgID: "\xff", AgentID: "a"}, nil, "OrgID is not valid UTF-8"},
		{"agent not UTF-8", controlstore.Agent{AgentID: "a\xc0"}, nil, "AgentID is not valid UTF-8"},
		{"max entries 0", good, []controlstore.Option{controlstore.WithMaxEntries(0)}, "WithMaxEntries(0) is out of range"},
		{"max entries negative", good, []controlstore.Option{controlstore.WithMaxEntries(-1)}, "out of range"},
		{"max entries over the limit", good, []controlstore.Option{controlstore.WithMaxEntries(controlstore.MaxEntriesLimit + 1)}, "out of range"},
		{"max entries MaxInt", good, []controlstore.Option{controlstore.WithMaxEntries(math.MaxInt)}, "out of range"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := controlstore.New(tc.agent, tc.opts...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New = %v, %v; want an error containing %q", s, err, tc.want)
			}
			if s != nil {
				t.Fatalf("New returned a store with its error")
			}
		})
	}
}

func TestNewIgnoresNilOption(t *testing.T) {
	s, err := controlstore.New(controlstore.Agent{AgentID: "a"}, nil, controlstore.WithMaxEntries(1), nil)
	if err != nil {
		t.Fatal(err)
	}
	mustApply(t, s, "x", controlstore.SignalPause)
	mustApply(t, s, "y", controlstore.SignalPause)
	if s.Len() != 1 {
		t.Fatalf("Len = %d, want 1: the option between the nils was not applied", s.Len())
	}
}

// The agent's own halt must match whatever the length of its id: a store
// whose agent halt is refused as too long would ignore every halt of its
// agent.
func TestLongAgentIDHaltIsAccepted(t *testing.T) {
	long := "did:key:z" + strings.Repeat("6Mk", controlstore.MaxOpIDLen)
	s, err := controlstore.New(controlstore.Agent{AgentID: long})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Apply(controlstore.AgentOpIDPrefix+long, controlstore.SignalTerminate); err != nil {
		t.Fatalf("Apply(agent halt of a %d-byte id) = %v, want nil", len(long), err)
	}
	o, _ := op(1)
	if err := s.Check(o); !errors.Is(err, controlstore.ErrTerminated) {
		t.Fatalf("Check after the agent's terminate = %v, want ErrTerminated", err)
	}
	// Other ids of that length are still refused.
	var re *controlstore.RejectedError
	if err := s.Apply(strings.Repeat("x", controlstore.MaxOpIDLen+1), controlstore.SignalPause); !errors.As(err, &re) || re.Reason != controlstore.ReasonOpIDTooLong {
		t.Fatalf("Apply(oversized op id) = %v, want op_id_too_long", err)
	}
}

func TestStateMachine(t *testing.T) {
	P, R, T := controlstore.SignalPause, controlstore.SignalResume, controlstore.SignalTerminate
	tests := []struct {
		name    string
		signals []controlstore.Signal
		want    controlstore.State
	}{
		{"nothing", nil, controlstore.Running},
		{"pause", []controlstore.Signal{P}, controlstore.Paused},
		{"pause twice", []controlstore.Signal{P, P}, controlstore.Paused},
		{"pause resume", []controlstore.Signal{P, R}, controlstore.Running},
		{"resume unknown", []controlstore.Signal{R}, controlstore.Running},
		{"resume pause", []controlstore.Signal{P, R, P}, controlstore.Paused},
		{"terminate", []controlstore.Signal{T}, controlstore.Terminated},
		{"pause terminate", []controlstore.Signal{P, T}, controlstore.Terminated},
		{"terminate resume", []controlstore.Signal{T, R}, controlstore.Terminated},
		{"terminate pause", []controlstore.Signal{T, P}, controlstore.Terminated},
		{"terminate twice", []controlstore.Signal{T, T}, controlstore.Terminated},
		{"terminate pause resume", []controlstore.Signal{T, P, R}, controlstore.Terminated},
	}
	_, opID := op(1)
	for _, tt := range tests {
		for _, id := range []string{opID, "trace-001:span-001", controlstore.GlobalOpID, controlstore.AgentOpIDPrefix + agentID} {
			t.Run(tt.name+"/"+id, func(t *testing.T) {
				s := newStore(t)
				for _, sig := range tt.signals {
					mustApply(t, s, id, sig)
				}
				if got := s.State(id); got != tt.want {
					t.Fatalf("State(%q) = %v, want %v", id, got, tt.want)
				}
			})
		}
	}
}

func TestResumeRemovesEntry(t *testing.T) {
	s := newStore(t)
	_, id := op(1)
	mustApply(t, s, id, controlstore.SignalPause)
	if s.Len() != 1 {
		t.Fatalf("Len = %d after pause, want 1", s.Len())
	}
	mustApply(t, s, id, controlstore.SignalResume)
	if s.Len() != 0 {
		t.Fatalf("Len = %d after resume, want 0", s.Len())
	}
}

func TestReservedScopesDoNotCountAsEntries(t *testing.T) {
	s := newStore(t)
	mustApply(t, s, "*", controlstore.SignalTerminate)
	mustApply(t, s, "agent:"+agentID, controlstore.SignalPause)
	if s.Len() != 0 {
		t.Fatalf("Len = %d, want 0: reserved scopes are not entries", s.Len())
	}
}

func TestApplyRejects(t *testing.T) {
	s := newStore(t)
	_, id := op(1)
	tests := []struct {
		id     string
		sig    controlstore.Signal
		reason controlstore.RejectReason
	}{
		{id, controlstore.SignalUnspecified, controlstore.ReasonUnspecifiedSignal},
		{id, controlstore.Signal(4), controlstore.ReasonUnknownSignal},
		{id, controlstore.Signal(-1), controlstore.ReasonUnknownSignal},
		{"", controlstore.SignalTerminate, controlstore.ReasonEmptyOpID},
		{strings.Repeat("a", controlstore.MaxOpIDLen+1), controlstore.SignalTerminate, controlstore.ReasonOpIDTooLong},
		{"agent:someone-else", controlstore.SignalTerminate, controlstore.ReasonForeignAgent},
		{"agent:", controlstore.SignalTerminate, controlstore.ReasonForeignAgent},
		{"agent:" + strings.ToUpper(agentID), controlstore.SignalTerminate, controlstore.ReasonForeignAgent},
	}
	for _, tt := range tests {
		err := s.Apply(tt.id, tt.sig)
		var re *controlstore.RejectedError
		if !errors.As(err, &re) || !errors.Is(err, controlstore.ErrRejected) {
			t.Fatalf("Apply(%.20q, %v) = %v, want a *RejectedError", tt.id, tt.sig, err)
		}
		if re.Reason != tt.reason {
			t.Errorf("Apply(%.20q, %v) reason = %q, want %q", tt.id, tt.sig, re.Reason, tt.reason)
		}
		if len(re.OpID) > 70 {
			t.Errorf("RejectedError.OpID is %d bytes; want it cut for logging", len(re.OpID))
		}
	}
	if s.Len() != 0 || s.State("agent:"+agentID) != controlstore.Running || s.Check(controlstore.Op{}) != nil {
		t.Fatal("a rejected signal changed the store")
	}
	if st := s.Stats(); st.Rejected != uint64(len(tests)) || st.Applied != 0 {
		t.Fatalf("Stats = %+v, want %d rejected and 0 applied", st, len(tests))
	}
	// An id exactly at the cap is accepted.
	mustApply(t, s, strings.Repeat("a", controlstore.MaxOpIDLen), controlstore.SignalTerminate)
}

func TestExactStringMatching(t *testing.T) {
	s := newStore(t)
	o, id := op(1)
	upper := strings.ToUpper(id)
	mustApply(t, s, upper, controlstore.SignalTerminate)
	if err := s.Check(o); err != nil {
		t.Fatalf("Check after terminating the uppercase id = %v; the gateway matches exact strings, so it must not match", err)
	}
	if s.State(upper) != controlstore.Terminated || s.State(id) != controlstore.Running {
		t.Fatalf("State(upper)=%v State(lower)=%v, want terminated/running", s.State(upper), s.State(id))
	}
	mustApply(t, s, id, controlstore.SignalTerminate)
	if err := s.Check(o); !errors.Is(err, controlstore.ErrTerminated) {
		t.Fatalf("Check after terminating the exact id = %v, want ErrTerminated", err)
	}
	// An explicit id in OpenTelemetry form is the same op as the span's.
	if err := s.Check(controlstore.OpFromID(id)); !errors.Is(err, controlstore.ErrTerminated) {
		t.Fatalf("Check(OpFromID) = %v, want ErrTerminated", err)
	}
	// Non-OTel ids match verbatim, trailing colon and all.
	mustApply(t, s, "abc:", controlstore.SignalPause)
	if !errors.Is(s.Check(controlstore.OpFromID("abc:")), controlstore.ErrPaused) || s.Check(controlstore.OpFromID("abc")) != nil {
		t.Fatal("non-OTel ids must match exactly")
	}
}

func TestOpString(t *testing.T) {
	o, id := op(7)
	if o.String() != id {
		t.Fatalf("Op.String() = %q, want %q", o.String(), id)
	}
	if got := controlstore.OpFromID("x:y").String(); got != "x:y" {
		t.Fatalf("OpFromID(x:y).String() = %q", got)
	}
	if !(controlstore.Op{}).IsZero() || !controlstore.OpFromID("").IsZero() || !controlstore.OpFromSpanContext(trace.SpanContext{}).IsZero() {
		t.Fatal("empty ops must be zero")
	}
	if !controlstore.OpFromIDs(trace.TraceID{1}, trace.SpanID{}).IsZero() {
		t.Fatal("an invalid span id must give the zero Op")
	}
}

func TestEffectiveStateCombinesScopes(t *testing.T) {
	agentHalt := controlstore.AgentOpIDPrefix + agentID
	P, T := controlstore.SignalPause, controlstore.SignalTerminate
	tests := []struct {
		name      string
		apply     map[string]controlstore.Signal // "op" stands for the call's own id
		wantErr   error
		wantScope controlstore.Scope
		noOp      bool
	}{
		{"nothing", nil, nil, 0, false},
		{"op paused", map[string]controlstore.Signal{"op": P}, controlstore.ErrPaused, controlstore.ScopeOp, false},
		{"agent paused", map[string]controlstore.Signal{agentHalt: P}, controlstore.ErrPaused, controlstore.ScopeAgent, false},
		{"global paused", map[string]controlstore.Signal{"*": P}, controlstore.ErrPaused, controlstore.ScopeGlobal, false},
		{"op terminated, global paused", map[string]controlstore.Signal{"op": T, "*": P}, controlstore.ErrTerminated, controlstore.ScopeOp, false},
		{"op paused, agent terminated", map[string]controlstore.Signal{"op": P, agentHalt: T}, controlstore.ErrTerminated, controlstore.ScopeAgent, false},
		{"global terminated", map[string]controlstore.Signal{"*": T, agentHalt: T, "op": T}, controlstore.ErrTerminated, controlstore.ScopeGlobal, false},
		{"no op, agent paused", map[string]controlstore.Signal{agentHalt: P}, controlstore.ErrPaused, controlstore.ScopeAgent, true},
		{"no op, global terminated", map[string]controlstore.Signal{"*": T}, controlstore.ErrTerminated, controlstore.ScopeGlobal, true},
		{"no op, other op terminated", map[string]controlstore.Signal{"op": T}, nil, 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newStore(t)
			o, id := op(1)
			for k, sig := range tt.apply {
				if k == "op" {
					k = id
				}
				mustApply(t, s, k, sig)
			}
			if tt.noOp {
				o = controlstore.Op{}
			}
			err := s.Check(o)
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil) != (err == nil) {
				t.Fatalf("Check = %v, want %v", err, tt.wantErr)
			}
			var te *controlstore.TerminatedError
			var pe *controlstore.PausedError
			switch {
			case errors.As(err, &te):
				if te.Scope != tt.wantScope {
					t.Fatalf("scope = %v, want %v", te.Scope, tt.wantScope)
				}
			case errors.As(err, &pe):
				if pe.Scope != tt.wantScope {
					t.Fatalf("scope = %v, want %v", pe.Scope, tt.wantScope)
				}
			}
		})
	}
}

func TestTerminatedErrorNamesOpAndScope(t *testing.T) {
	s := newStore(t)
	o, id := op(1)
	mustApply(t, s, id, controlstore.SignalTerminate)
	err := s.Check(o)
	var te *controlstore.TerminatedError
	if !errors.As(err, &te) || te.OpID != id || te.Scope != controlstore.ScopeOp {
		t.Fatalf("Check = %#v, want TerminatedError for %s, scope op", err, id)
	}
	if !strings.Contains(err.Error(), id) {
		t.Fatalf("message %q does not name the op", err)
	}
	mustApply(t, s, "*", controlstore.SignalTerminate)
	if err := s.Check(o); !errors.As(err, &te) || te.Scope != controlstore.ScopeGlobal || te.OpID != "*" {
		t.Fatalf("Check = %v, want the global terminate to win", err)
	}
}

func TestWaitReturnsAtOnceWhenRunning(t *testing.T) {
	s := newStore(t)
	o, _ := op(1)
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // a running op must not even look at ctx
	if err := s.Wait(ctx, o); err != nil {
		t.Fatalf("Wait = %v, want nil", err)
	}
}

func TestWaitHeldUntilResume(t *testing.T) {
	for _, id := range []string{"op", "*", controlstore.AgentOpIDPrefix + agentID} {
		t.Run(id, func(t *testing.T) {
			s := newStore(t)
			o, opID := op(1)
			if id == "op" {
				id = opID
			}
			mustApply(t, s, id, controlstore.SignalPause)
			done := make(chan error, 1)
			go func() { done <- s.Wait(context.Background(), o) }()
			waitFor(t, func() bool { return s.Stats().Held == 1 })
			mustApply(t, s, id, controlstore.SignalResume)
			if err := <-done; err != nil {
				t.Fatalf("Wait after resume = %v, want nil", err)
			}
		})
	}
}

func TestWaitTerminatedWhileHeld(t *testing.T) {
	s := newStore(t)
	o, id := op(1)
	mustApply(t, s, id, controlstore.SignalPause)
	done := make(chan error, 1)
	go func() { done <- s.Wait(context.Background(), o) }()
	mustApply(t, s, id, controlstore.SignalTerminate)
	if err := <-done; !errors.Is(err, controlstore.ErrTerminated) {
		t.Fatalf("Wait = %v, want ErrTerminated", err)
	}
}

func TestWaitContextEnds(t *testing.T) {
	s := newStore(t)
	o, id := op(1)
	mustApply(t, s, id, controlstore.SignalPause)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	err := s.Wait(ctx, o)
	var pe *controlstore.PausedError
	if !errors.Is(err, context.DeadlineExceeded) || !errors.As(err, &pe) || pe.OpID != id {
		t.Fatalf("Wait = %v, want a PausedError for %s wrapping DeadlineExceeded", err, id)
	}
	if !strings.Contains(err.Error(), id) {
		t.Fatalf("message %q does not name the paused op", err)
	}
}

func TestFailClosed(t *testing.T) {
	s := newStore(t)
	o, id := op(1)
	mustApply(t, s, id, controlstore.SignalPause)
	held := make(chan error, 1)
	go func() { held <- s.Wait(context.Background(), o) }()
	s.SetFailClosed(true)
	if err := <-held; !errors.Is(err, controlstore.ErrUnavailable) {
		t.Fatalf("held call after SetFailClosed(true) = %v, want ErrUnavailable", err)
	}
	other, _ := op(2)
	if err := s.Check(other); !errors.Is(err, controlstore.ErrUnavailable) {
		t.Fatalf("Check = %v, want ErrUnavailable", err)
	}
	mustApply(t, s, "*", controlstore.SignalTerminate)
	if err := s.Check(other); !errors.Is(err, controlstore.ErrTerminated) {
		t.Fatalf("Check = %v, want a terminate to win over failing closed", err)
	}
	if !s.SyncStatus().FailClosed {
		t.Fatal("Sync().FailClosed = false")
	}
}

func TestFailClosedOff(t *testing.T) {
	s := newStore(t)
	s.SetFailClosed(true)
	s.SetFailClosed(false)
	if err := s.Check(controlstore.Op{}); err != nil {
		t.Fatalf("Check = %v after fail-closed was turned off", err)
	}
}

func TestSyncStatus(t *testing.T) {
	now := time.Unix(100, 0)
	s := newStore(t, controlstore.WithClock(func() time.Time { return now }))
	if st := s.SyncStatus(); st.Live || !st.Since.Equal(now) {
		t.Fatalf("Sync = %+v, want not live since creation", st)
	}
	now = now.Add(time.Second)
	s.SetLive(true)
	if st := s.SyncStatus(); !st.Live || !st.Since.Equal(now) {
		t.Fatalf("Sync = %+v, want live since %v", st, now)
	}
	later := now.Add(time.Second)
	now = later
	s.SetLive(true) // no transition: Since stays
	if st := s.SyncStatus(); !st.Since.Equal(later.Add(-time.Second)) {
		t.Fatalf("Since moved without a transition: %+v", st)
	}
}

func TestTargetedWakeups(t *testing.T) {
	s := newStore(t)
	x, xid := op(1)
	_, yid := op(2)
	mustApply(t, s, xid, controlstore.SignalPause)
	mustApply(t, s, yid, controlstore.SignalPause)

	const n = 10000
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- s.Wait(context.Background(), x)
		}()
	}
	waitFor(t, func() bool { return s.Stats().Held == n })

	// Signals for another op must wake none of them.
	mustApply(t, s, yid, controlstore.SignalResume)
	mustApply(t, s, yid, controlstore.SignalTerminate)
	mustApply(t, s, yid, controlstore.SignalPause)
	if w := s.Stats().Wakeups; w != 0 {
		t.Fatalf("signals for op y woke %d waiters of op x", w)
	}
	mustApply(t, s, xid, controlstore.SignalResume)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("waiter returned %v, want nil", err)
		}
	}
	if w := s.Stats().Wakeups; w != n {
		t.Fatalf("resume of x caused %d wakeups, want exactly %d (one per waiter)", w, n)
	}
}

// waitFor polls cond until it holds or a generous deadline passes.
func waitFor(t testing.TB, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 20s")
		}
		time.Sleep(time.Millisecond) // polling interval, not synchronisation
	}
}

// A call held by its agent's or the global pause, whose op has no entry yet,
// must still be released by a TERMINATE of the op itself.
func TestWaitHeldByScopeThenOpTerminated(t *testing.T) {
	for _, scope := range []string{"*", controlstore.AgentOpIDPrefix + agentID} {
		t.Run(scope, func(t *testing.T) {
			s := newStore(t)
			o, id := op(1)
			_, other := op(2)
			mustApply(t, s, scope, controlstore.SignalPause)
			done := make(chan error, 1)
			go func() { done <- s.Wait(context.Background(), o) }()
			waitFor(t, func() bool { return s.Held() == 1 })
			// Another op's entry appearing does not wake it.
			mustApply(t, s, other, controlstore.SignalTerminate)
			if w := s.Stats().Wakeups; w != 0 {
				t.Fatalf("terminate of another op woke the held call (%d wakeups)", w)
			}
			mustApply(t, s, id, controlstore.SignalTerminate)
			var te *controlstore.TerminatedError
			if err := <-done; !errors.As(err, &te) || te.Scope != controlstore.ScopeOp {
				t.Fatalf("Wait = %v, want the op's TerminatedError", err)
			}
		})
	}
}
