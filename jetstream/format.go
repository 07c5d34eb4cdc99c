package jetstream

import (
	"errors"
	"strconv"
	"strings"

	"github.com/opcontrol/opcontrol/controlstore"
)

// The bus, as the gateway and the operator API define it. See the package
// documentation for the full account.
const (
	// StreamName is the JetStream stream that carries agent and fleet-wide
	// halts. The gateway creates it; a subscriber never creates or changes it.
	StreamName = "AA_OPCONTROL"
	// SubjectPrefix starts every subject of the stream.
	SubjectPrefix = "assembly.opcontrol."
	// StreamSubjects is the stream's subject filter.
	StreamSubjects = SubjectPrefix + ">"
	// GlobalSubject carries halts of every agent.
	GlobalSubject = SubjectPrefix + "global"
	// DefaultTenant is the tenant token of an agent with neither org nor team.
	DefaultTenant = "default"
	// UnknownAgent is the agent token of an empty agent id.
	UnknownAgent = "unknown"
)

// Subject returns the subject on which the operator API publishes halts of
// agent: assembly.opcontrol.<tenant>.<agent>, where tenant is the escaped
// org id, else the escaped team id, else "default", and agent is the
// escaped agent id, or "unknown" when it is empty. Because the team is left
// out when the org is set, and the two literals can collide with real
// names, the subject alone does not identify an agent: the envelope's
// triple is checked too.
func Subject(agent controlstore.Agent) string {
	var b strings.Builder
	b.Grow(len(SubjectPrefix) + 3*(len(agent.OrgID)+len(agent.TeamID)+len(agent.AgentID)) + len(DefaultTenant) + len(UnknownAgent) + 1)
	b.WriteString(SubjectPrefix)
	switch {
	case agent.OrgID != "":
		escape(&b, agent.OrgID)
	case agent.TeamID != "":
		escape(&b, agent.TeamID)
	default:
		b.WriteString(DefaultTenant)
	}
	b.WriteByte('.')
	if agent.AgentID == "" {
		b.WriteString(UnknownAgent)
	} else {
		escape(&b, agent.AgentID)
	}
	return b.String()
}

// EscapeToken returns s as one subject token, escaped as the gateway does:
// each byte in [A-Za-z0-9-] is kept; every other byte, '_' included and
// each byte of a multi-byte character, becomes '_' and two uppercase hex
// digits. The mapping is injective.
func EscapeToken(s string) string {
	var b strings.Builder
	b.Grow(3 * len(s))
	escape(&b, s)
	return b.String()
}

func escape(b *strings.Builder, s string) {
	const hex = "0123456789ABCDEF"
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('_')
		b.WriteByte(hex[c>>4])
		b.WriteByte(hex[c&0xf])
	}
}

// Envelope is one halt on the bus: the JSON payload of a message of
// StreamName, as the operator API publishes it.
type Envelope struct {
	OrgID   string
	TeamID  string
	AgentID string
	// OpID is "agent:{agent_id}" for an agent halt and "*" for a global one.
	OpID string
	// Signal is 1 PAUSE, 2 RESUME or 3 TERMINATE; anything else is dropped.
	// Decoding accepts any integer in int32 range.
	Signal int32
	// Global marks a halt of every agent; the triple is then empty.
	Global bool
}

// AgentHalt returns the envelope the operator API publishes to halt every
// op of agent.
func AgentHalt(agent controlstore.Agent, sig controlstore.Signal) Envelope {
	return Envelope{
		OrgID: agent.OrgID, TeamID: agent.TeamID, AgentID: agent.AgentID,
		OpID: controlstore.AgentOpIDPrefix + agent.AgentID, Signal: int32(sig),
	}
}

// GlobalHalt returns the envelope the operator API publishes to halt every
// op of every agent.
func GlobalHalt(sig controlstore.Signal) Envelope {
	return Envelope{OpID: controlstore.GlobalOpID, Signal: int32(sig), Global: true}
}

// Subject returns the subject the envelope must arrive on: GlobalSubject
// for a global envelope, else the subject of its triple.
func (e Envelope) Subject() string {
	if e.Global {
		return GlobalSubject
	}
	return Subject(controlstore.Agent{OrgID: e.OrgID, TeamID: e.TeamID, AgentID: e.AgentID})
}

// Target returns the op id the gateway forwards the envelope to: "*" for a
// global envelope whatever its OpID, else OpID verbatim.
func (e Envelope) Target() string {
	if e.Global {
		return controlstore.GlobalOpID
	}
	return e.OpID
}

// Encode returns the envelope as the operator API publishes it: compact
// JSON, keys in the order org_id, team_id, agent_id, op_id, signal,
// global, strings escaped as serde_json does (quote, backslash and control
// characters only).
func (e Envelope) Encode() []byte {
	b := make([]byte, 0, 96+len(e.OrgID)+len(e.TeamID)+len(e.AgentID)+len(e.OpID))
	b = append(b, `{"org_id":`...)
	b = appendString(b, e.OrgID)
	b = append(b, `,"team_id":`...)
	b = appendString(b, e.TeamID)
	b = append(b, `,"agent_id":`...)
	b = appendString(b, e.AgentID)
	b = append(b, `,"op_id":`...)
	b = appendString(b, e.OpID)
	b = append(b, `,"signal":`...)
	b = strconv.AppendInt(b, int64(e.Signal), 10)
	b = append(b, `,"global":`...)
	b = strconv.AppendBool(b, e.Global)
	return append(b, '}')
}

// appendString appends s as a JSON string the way serde_json writes one.
func appendString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch c {
		case '"':
			b = append(b, '\\', '"')
		case '\\':
			b = append(b, '\\', '\\')
		case '\b':
			b = append(b, '\\', 'b')
		case '\f':
			b = append(b, '\\', 'f')
		case '\n':
			b = append(b, '\\', 'n')
		case '\r':
			b = append(b, '\\', 'r')
		case '\t':
			b = append(b, '\\', 't')
		default:
			if c < 0x20 {
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			} else {
				b = append(b, c)
			}
		}
	}
	return append(b, '"')
}

// DropReason says why a bus message was not applied. Values are stable and
// safe as metric attribute values. The signal and store reasons are those of
// controlstore.RejectReason.
type DropReason string

// Reasons, in the order the checks run.
const (
	// DropMalformed: the payload does not decode strictly (see
	// DecodeEnvelope).
	DropMalformed DropReason = "malformed"
	// DropSubjectMismatch: the envelope did not arrive on the subject it
	// must (Envelope.Subject): a global envelope off GlobalSubject, or an
	// agent envelope on another agent's subject.
	DropSubjectMismatch DropReason = "subject_mismatch"
	// DropTripleMismatch: an agent envelope whose triple is not exactly the
	// store's agent (the subject leaves the team out when the org is set).
	DropTripleMismatch DropReason = "triple_mismatch"
	// DropUnspecifiedSignal and DropUnknownSignal: signal 0, or outside 1..3.
	DropUnspecifiedSignal = DropReason(controlstore.ReasonUnspecifiedSignal)
	DropUnknownSignal     = DropReason(controlstore.ReasonUnknownSignal)
	// DropDuplicate: a message at or before the subscriber's position,
	// already consumed. Never expected; counted to prove it.
	DropDuplicate DropReason = "duplicate"
)

// DropError reports a bus message that is not applied, and why.
type DropError struct {
	Reason DropReason
	// Err is the decoding error for DropMalformed, else nil.
	Err error
}

func (e *DropError) Error() string {
	if e.Err != nil {
		return "jetstream: message dropped: " + string(e.Reason) + ": " + e.Err.Error()
	}
	return "jetstream: message dropped: " + string(e.Reason)
}

// Unwrap returns the decoding error, if any.
func (e *DropError) Unwrap() error { return e.Err }

// Halt is a validated bus message: what to apply.
type Halt struct {
	Envelope Envelope
	// OpID is Envelope.Target(): "*" for a global envelope, else the
	// envelope's op_id verbatim.
	OpID   string
	Signal controlstore.Signal
}

// Validate checks a message that arrived on subject with payload data, as
// the gateway does and in its order: decode strictly (DecodeEnvelope);
// subject binding (Envelope.Subject must equal subject); for an agent
// envelope, when agent is non-nil, the triple must equal *agent byte for
// byte (the gateway's bridge passes nil and leaves this to each stream
// subscription); the signal must be 1..3. It returns a *DropError with the
// first check that failed.
func Validate(subject string, data []byte, agent *controlstore.Agent) (Halt, error) {
	env, err := DecodeEnvelope(data)
	if err != nil {
		return Halt{}, &DropError{Reason: DropMalformed, Err: err}
	}
	if env.Subject() != subject {
		return Halt{}, &DropError{Reason: DropSubjectMismatch}
	}
	if !env.Global && agent != nil &&
		(env.OrgID != agent.OrgID || env.TeamID != agent.TeamID || env.AgentID != agent.AgentID) {
		return Halt{}, &DropError{Reason: DropTripleMismatch}
	}
	sig := controlstore.Signal(env.Signal)
	switch {
	case sig == controlstore.SignalUnspecified:
		return Halt{}, &DropError{Reason: DropUnspecifiedSignal}
	case sig < controlstore.SignalPause || sig > controlstore.SignalTerminate:
		return Halt{}, &DropError{Reason: DropUnknownSignal}
	}
	return Halt{Envelope: env, OpID: env.Target(), Signal: sig}, nil
}

// errDecode is wrapped by every decoding error.
var errDecode = errors.New("envelope does not decode")
