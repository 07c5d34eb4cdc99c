package operatorapi

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/opcontrol/opcontrol/controlstore"
)

// opState is an op's state in the registry.
type opState uint8

const (
	statePending opState = iota
	stateRunning
	statePaused
	stateCompleting
	stateTerminated
)

func (s opState) String() string {
	switch s {
	case statePending:
		return "pending"
	case stateRunning:
		return "running"
	case statePaused:
		return "paused"
	case stateCompleting:
		return "completing"
	case stateTerminated:
		return "terminated"
	}
	return fmt.Sprintf("state(%d)", uint8(s))
}

// terminal states are swept after SweepRetention.
func (s opState) terminal() bool { return s == stateCompleting || s == stateTerminated }

// action is what an operator asks of an op or a scope.
type action uint8

const (
	actionPause action = iota + 1
	actionResume
	actionTerminate
)

// parseAction accepts exactly the lowercase names the operator API uses.
func parseAction(s string) (action, bool) {
	switch s {
	case "pause":
		return actionPause, true
	case "resume":
		return actionResume, true
	case "terminate":
		return actionTerminate, true
	}
	return 0, false
}

func (a action) String() string {
	switch a {
	case actionPause:
		return "pause"
	case actionResume:
		return "resume"
	case actionTerminate:
		return "terminate"
	}
	return fmt.Sprintf("action(%d)", uint8(a))
}

func (a action) signal() controlstore.Signal {
	switch a {
	case actionPause:
		return controlstore.SignalPause
	case actionResume:
		return controlstore.SignalResume
	case actionTerminate:
		return controlstore.SignalTerminate
	}
	return controlstore.SignalUnspecified
}

// transition is the registry's state machine, the one place it is written
// down: the state a takes an op in from to, whether that publishes a's
// signal, and ok=false for a transition the registry refuses.
func transition(from opState, a action) (to opState, publish, ok bool) {
	switch a {
	case actionPause:
		if from == stateRunning {
			return statePaused, true, true
		}
	case actionResume:
		if from == statePaused {
			return stateRunning, true, true
		}
	case actionTerminate:
		switch from {
		case statePending, stateRunning, statePaused:
			return stateTerminated, true, true
		case stateCompleting, stateTerminated:
			return from, false, true // idempotent, publishes nothing
		}
	}
	return from, false, false
}

var (
	errUnknownOp     = errors.New("unknown op")
	errRegistryFull  = errors.New("ops registry full")
	errOwnerConflict = errors.New("op already owned by another agent")
)

// transitionError is a transition the state machine refuses.
type transitionError struct {
	opID   string
	action action
	from   opState
}

func (e *transitionError) Error() string {
	return fmt.Sprintf("cannot %s op %q: it is %s", e.action, e.opID, e.from)
}

type entry struct {
	state   opState
	owner   controlstore.Agent
	owned   bool
	created time.Time
	updated time.Time
}

// registry is the operator's record of ops. All methods are safe for
// concurrent use.
type registry struct {
	now func() time.Time
	max int
	// deliver publishes one per-op signal to the op's owner. It is called
	// with mu held, so that signals leave in the order of the transitions
	// that caused them; it must not block (Gateway.Publish never does).
	deliver func(owner controlstore.Agent, opID string, sig controlstore.Signal)

	mu        sync.Mutex
	ops       map[string]*entry
	lastSweep time.Time
}

func newRegistry(now func() time.Time, maxOps int, deliver func(controlstore.Agent, string, controlstore.Signal)) *registry {
	return &registry{now: now, max: maxOps, deliver: deliver, ops: make(map[string]*entry), lastSweep: now()}
}

// sweepLocked removes Completing and Terminated ops whose last change is
// older than SweepRetention, at most once per SweepInterval unless force.
func (r *registry) sweepLocked(now time.Time, force bool) {
	if !force && now.Sub(r.lastSweep) < SweepInterval {
		return
	}
	r.lastSweep = now
	for id, e := range r.ops {
		if e.state.terminal() && now.Sub(e.updated) >= SweepRetention {
			delete(r.ops, id)
		}
	}
}

// register records opID as Running, or leaves a known op's state alone.
// A known op without an owner learns owner; one with another owner is a
// conflict. It returns the op's record.
func (r *registry) register(opID string, owner controlstore.Agent, owned bool) (OpRecord, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.now()
	r.sweepLocked(now, false)
	e, ok := r.ops[opID]
	if !ok {
		if len(r.ops) >= r.max {
			r.sweepLocked(now, true)
		}
		if len(r.ops) >= r.max {
			return OpRecord{}, errRegistryFull
		}
		e = &entry{state: stateRunning, created: now, updated: now}
		r.ops[opID] = e
	}
	if owned {
		switch {
		case !e.owned:
			e.owner, e.owned = owner, true
		case e.owner != owner:
			return OpRecord{}, errOwnerConflict
		}
	}
	return e.record(opID), nil
}

// outcome is what act did.
type outcome struct {
	from, to opState
	// publishes says the transition publishes a signal; delivered says it
	// reached the gateway, which needs a recorded owner.
	publishes, delivered bool
}

// act applies a to opID and, when the transition publishes and the op has
// an owner, delivers its signal.
func (r *registry) act(opID string, a action) (outcome, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.now()
	r.sweepLocked(now, false)
	e, ok := r.ops[opID]
	if !ok {
		return outcome{}, errUnknownOp
	}
	to, publishes, ok := transition(e.state, a)
	if !ok {
		return outcome{}, &transitionError{opID: opID, action: a, from: e.state}
	}
	out := outcome{from: e.state, to: to, publishes: publishes}
	if to != e.state {
		e.state, e.updated = to, now
	}
	if publishes && e.owned {
		r.deliver(e.owner, opID, a.signal())
		out.delivered = true
	}
	return out, nil
}

// owner returns the agent that owns opID; owned is false when none is
// recorded.
func (r *registry) owner(opID string) (agent controlstore.Agent, owned bool, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sweepLocked(r.now(), false)
	e, ok := r.ops[opID]
	if !ok {
		return controlstore.Agent{}, false, errUnknownOp
	}
	return e.owner, e.owned, nil
}

// snapshot returns every op, ordered by id.
func (r *registry) snapshot() []OpRecord {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sweepLocked(r.now(), false)
	out := make([]OpRecord, 0, len(r.ops))
	for id, e := range r.ops {
		out = append(out, e.record(id))
	}
	slices.SortFunc(out, func(a, b OpRecord) int { return strings.Compare(a.OpID, b.OpID) })
	return out
}

func (e *entry) record(opID string) OpRecord {
	rec := OpRecord{OpID: opID, State: e.state.String(), CreatedAt: e.created, UpdatedAt: e.updated}
	if e.owned {
		rec.OrgID, rec.TeamID, rec.AgentID = e.owner.OrgID, e.owner.TeamID, e.owner.AgentID
	}
	return rec
}
