package controlstore

import "strconv"

// Signal is an operator's instruction for an op. The numbers are those of
// the wire enum assembly.policy.v1.OpControlSignal, so a received value can
// be converted with Signal(v) and checked by Apply.
type Signal int32

// Signals, numbered as on the wire.
const (
	SignalUnspecified Signal = 0
	SignalPause       Signal = 1
	SignalResume      Signal = 2
	SignalTerminate   Signal = 3
)

// String returns the lowercase signal name ("pause", "resume", "terminate"),
// "unspecified", or "unknown(N)" for values outside the enum.
func (sig Signal) String() string {
	switch sig {
	case SignalUnspecified:
		return "unspecified"
	case SignalPause:
		return "pause"
	case SignalResume:
		return "resume"
	case SignalTerminate:
		return "terminate"
	}
	return "unknown(" + strconv.Itoa(int(sig)) + ")"
}

// State is what the store records for an op id. The zero value, Running,
// is never stored: an id with no entry is running.
type State uint8

// States, ordered by severity: the effective state of a call is the most
// severe of its op, its agent and the global scope.
const (
	Running State = iota
	Paused
	Terminated
)

// String returns "running", "paused" or "terminated".
func (st State) String() string {
	switch st {
	case Running:
		return "running"
	case Paused:
		return "paused"
	case Terminated:
		return "terminated"
	}
	return "state(" + strconv.Itoa(int(st)) + ")"
}

// Scope says which of a call's three controls decided its fate.
type Scope uint8

// Scopes. ScopeOp is one op ("{trace_id}:{span_id}"), ScopeAgent is every op
// of this agent ("agent:{agent_id}"), ScopeGlobal is every op of every agent
// ("*").
const (
	ScopeOp Scope = iota
	ScopeAgent
	ScopeGlobal
)

// String returns "op", "agent" or "global".
func (sc Scope) String() string {
	switch sc {
	case ScopeOp:
		return "op"
	case ScopeAgent:
		return "agent"
	case ScopeGlobal:
		return "global"
	}
	return "scope(" + strconv.Itoa(int(sc)) + ")"
}
