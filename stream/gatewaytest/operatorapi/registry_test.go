package operatorapi

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opcontrol/opcontrol/controlstore"
)

// The state machine, written out independently of transition from the
// operator API's contract: every (state, action) pair.
func TestTransitionTable(t *testing.T) {
	type want struct {
		to       opState
		publish  bool
		accepted bool
	}
	refused := func(s opState) want { return want{to: s} }
	table := map[opState]map[action]want{
		statePending: {
			actionPause:     refused(statePending),
			actionResume:    refused(statePending),
			actionTerminate: {stateTerminated, true, true},
		},
		stateRunning: {
			actionPause:     {statePaused, true, true},
			actionResume:    refused(stateRunning),
			actionTerminate: {stateTerminated, true, true},
		},
		statePaused: {
			actionPause:     refused(statePaused),
			actionResume:    {stateRunning, true, true},
			actionTerminate: {stateTerminated, true, true},
		},
		stateCompleting: {
			actionPause:     refused(stateCompleting),
			actionResume:    refused(stateCompleting),
			actionTerminate: {stateCompleting, false, true},
		},
		stateTerminated: {
			actionPause:     refused(stateTerminated),
			actionResume:    refused(stateTerminated),
			actionTerminate: {stateTerminated, false, true},
		},
	}
	for from, row := range table {
		for a, w := range row {
			to, publish, ok := transition(from, a)
			if to != w.to || publish != w.publish || ok != w.accepted {
				t.Errorf("transition(%v, %v) = (%v, publish %v, ok %v), want (%v, %v, %v)",
					from, a, to, publish, ok, w.to, w.publish, w.accepted)
			}
		}
	}
	if _, _, ok := transition(stateRunning, action(0)); ok {
		t.Error("the zero action was accepted")
	}
}

type delivery struct {
	owner controlstore.Agent
	opID  string
	sig   controlstore.Signal
}

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func newTestRegistry(maxOps int) (*registry, *fakeClock, *[]delivery) {
	clock := &fakeClock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
	var got []delivery
	r := newRegistry(clock.now, maxOps, func(owner controlstore.Agent, opID string, sig controlstore.Signal) {
		got = append(got, delivery{owner, opID, sig}) // called under r.mu
	})
	return r, clock, &got
}

var owner = controlstore.Agent{OrgID: "org", TeamID: "team", AgentID: "did:key:z6MkOwner"}

// States the REST API cannot reach (Pending comes from the gateway's
// policy check, Completing from its complete) still follow the machine.
func TestRegistryUnreachableStates(t *testing.T) {
	r, _, got := newTestRegistry(8)
	for _, id := range []string{"pending", "completing"} {
		if _, err := r.register(id, owner, true); err != nil {
			t.Fatal(err)
		}
	}
	r.ops["pending"].state = statePending
	r.ops["completing"].state = stateCompleting

	if _, err := r.act("pending", actionPause); !isTransitionError(err) {
		t.Fatalf("pause of a pending op: %v, want a transition error", err)
	}
	out, err := r.act("pending", actionTerminate)
	if err != nil || !out.delivered || out.to != stateTerminated {
		t.Fatalf("terminate of a pending op = %+v, %v; want delivered, terminated", out, err)
	}
	out, err = r.act("completing", actionTerminate)
	if err != nil || out.publishes || out.delivered || out.to != stateCompleting {
		t.Fatalf("terminate of a completing op = %+v, %v; want accepted, nothing published, still completing", out, err)
	}
	want := []delivery{{owner, "pending", controlstore.SignalTerminate}}
	if fmt.Sprint(*got) != fmt.Sprint(want) {
		t.Fatalf("delivered %v, want %v", *got, want)
	}
}

func isTransitionError(err error) bool {
	_, ok := errors.AsType[*transitionError](err)
	return ok
}

func TestRegistrySweep(t *testing.T) {
	r, clock, _ := newTestRegistry(8)
	for _, id := range []string{"done", "running", "paused"} {
		if _, err := r.register(id, owner, true); err != nil {
			t.Fatal(err)
		}
	}
	mustAct := func(id string, a action) {
		t.Helper()
		if _, err := r.act(id, a); err != nil {
			t.Fatal(err)
		}
	}
	mustAct("done", actionTerminate)
	mustAct("paused", actionPause)

	// Retention counts from the last change; the sweep runs at most
	// every SweepInterval.
	clock.advance(SweepRetention - time.Nanosecond)
	if ids := snapshotIDs(r); ids != "done,paused,running" {
		t.Fatalf("before retention: %s", ids)
	}
	clock.advance(time.Nanosecond)
	if ids := snapshotIDs(r); ids != "done,paused,running" {
		t.Fatalf("retention reached but the last sweep was under SweepInterval ago: %s", ids)
	}
	clock.advance(SweepInterval)
	if ids := snapshotIDs(r); ids != "paused,running" {
		t.Fatalf("after retention and an interval: %s, want the terminated op gone", ids)
	}
	if _, err := r.act("done", actionTerminate); !errors.Is(err, errUnknownOp) {
		t.Fatalf("terminate of a swept op: %v, want errUnknownOp", err)
	}
	// A swept op registers afresh.
	rec, err := r.register("done", owner, true)
	if err != nil || rec.State != "running" {
		t.Fatalf("re-register after sweep = %+v, %v", rec, err)
	}
}

func TestRegistryFull(t *testing.T) {
	r, clock, _ := newTestRegistry(2)
	for _, id := range []string{"a", "b"} {
		if _, err := r.register(id, owner, true); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := r.register("c", owner, true); !errors.Is(err, errRegistryFull) {
		t.Fatalf("third op in a registry of 2: %v, want errRegistryFull", err)
	}
	// Known ops still register (idempotently) when full.
	if _, err := r.register("a", owner, true); err != nil {
		t.Fatalf("re-register when full: %v", err)
	}
	if _, err := r.act("a", actionTerminate); err != nil {
		t.Fatal(err)
	}
	// Full registration forces a sweep, whatever the interval: once "a" is
	// past retention there is room, before that there is not.
	clock.advance(SweepRetention - time.Second)
	if _, err := r.register("c", owner, true); !errors.Is(err, errRegistryFull) {
		t.Fatalf("before retention: %v, want errRegistryFull", err)
	}
	clock.advance(time.Second)
	if _, err := r.register("c", owner, true); err != nil {
		t.Fatalf("after retention: %v, want room", err)
	}
	if ids := snapshotIDs(r); ids != "b,c" {
		t.Fatalf("ops %s, want b,c", ids)
	}
}

func snapshotIDs(r *registry) string {
	var ids []string
	for _, rec := range r.snapshot() {
		ids = append(ids, rec.OpID)
	}
	return strings.Join(ids, ",")
}

func TestDecodeObject(t *testing.T) {
	allowed := []string{"op_id", "agent_id"}
	for _, tc := range []struct {
		body string
		want string // fmt of the map, or "" for an error
	}{
		{`{"op_id":"x"}`, "map[op_id:x]"},
		{` {"op_id":"x","agent_id":""} ` + "\n", "map[agent_id: op_id:x]"},
		{`{}`, "map[]"},
		{``, ""},
		{`   `, ""},
		{`null`, ""},
		{`[]`, ""},
		{`"x"`, ""},
		{`{"op_id":"x"`, ""},
		{`{"op_id":"x"}{}`, ""},
		{`{"op_id":"x"} x`, ""},
		{`{"op_id":"x","op_id":"y"}`, ""},
		{`{"OP_ID":"x"}`, ""},
		{`{"other":"x"}`, ""},
		{`{"op_id":null}`, ""},
		{`{"op_id":1}`, ""},
		{`{"op_id":true}`, ""},
		{`{"op_id":{"a":"b"}}`, ""},
		{`{"op_id":["x"]}`, ""},
		{`{"op_id":"x",}`, ""},
	} {
		m, err := decodeObject([]byte(tc.body), allowed)
		switch {
		case tc.want == "" && err == nil:
			t.Errorf("decodeObject(%q) = %v, want an error", tc.body, m)
		case tc.want != "" && (err != nil || fmt.Sprint(m) != tc.want):
			t.Errorf("decodeObject(%q) = %v, %v; want %s", tc.body, m, err, tc.want)
		case err != nil:
			re, ok := errors.AsType[*requestError](err)
			if !ok || re.code != CodeInvalidBody || re.msg == "" {
				t.Errorf("decodeObject(%q) error %#v, want an invalid_body requestError", tc.body, err)
			}
		}
	}
}

// Concurrent registrations, transitions and snapshots leave a registry whose
// deliveries, replayed in order, give each op its registry state.
func TestRegistryConcurrent(t *testing.T) {
	r, _, got := newTestRegistry(64)
	const workers, rounds = 8, 200
	ids := []string{"a", "b", "c"}
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range rounds {
				id := ids[(w+i)%len(ids)]
				switch i % 5 {
				case 0:
					_, _ = r.register(id, owner, true)
				case 1, 3:
					_, _ = r.act(id, actionPause)
				case 2:
					_, _ = r.act(id, actionResume)
				case 4:
					if w == 0 && i > rounds-10 {
						_, _ = r.act(id, actionTerminate)
					}
					_ = r.snapshot()
				}
			}
		})
	}
	wg.Wait()
	replayed := map[string]string{}
	for _, d := range *got {
		replayed[d.opID] = map[controlstore.Signal]string{
			controlstore.SignalPause: "paused", controlstore.SignalResume: "running", controlstore.SignalTerminate: "terminated",
		}[d.sig]
	}
	for _, rec := range r.snapshot() {
		want := rec.State
		if replayed[rec.OpID] == "" {
			replayed[rec.OpID] = "running" // registered, never signalled
		}
		if replayed[rec.OpID] != want {
			t.Errorf("op %s: registry says %s, its signals in delivery order give %s", rec.OpID, want, replayed[rec.OpID])
		}
	}
}
