package gatewaytest

import (
	"google.golang.org/protobuf/proto"

	"github.com/opcontrol/opcontrol/controlstore"
	wirev1 "github.com/opcontrol/opcontrol/proto/opcontrol/wire/v1"
)

// Route says which subscriptions an envelope reaches.
type Route struct {
	// Agent is the subscription triple the envelope is for. It must equal
	// the subscription's byte for byte. Ignored when Global.
	Agent controlstore.Agent
	// Global envelopes reach every subscription.
	Global bool
}

// ToAgent routes to the subscriptions of exactly agent's triple.
func ToAgent(agent controlstore.Agent) Route { return Route{Agent: agent} }

// ToAll routes to every subscription.
func ToAll() Route { return Route{Global: true} }

// Publish sends sig for opID to the subscriptions of agent's triple, with
// the next sequence number, which it returns. Like the real gateway, it
// succeeds with nobody listening (the message is lost) and never blocks.
func (g *Gateway) Publish(agent controlstore.Agent, opID string, sig controlstore.Signal) uint64 {
	return g.publish(ToAgent(agent), opID, sig)
}

// HaltAgent sends sig for "agent:{agent_id}" to the subscriptions of
// agent's triple (what the operator's halt-agent does) and returns its
// sequence number.
func (g *Gateway) HaltAgent(agent controlstore.Agent, sig controlstore.Signal) uint64 {
	return g.publish(ToAgent(agent), controlstore.AgentOpIDPrefix+agent.AgentID, sig)
}

// HaltAll sends sig for "*" to every subscription (the operator's global
// halt) and returns its sequence number.
func (g *Gateway) HaltAll(sig controlstore.Signal) uint64 {
	return g.publish(ToAll(), controlstore.GlobalOpID, sig)
}

// PublishMessage sends msg exactly as given, sequence included (the
// gateway's counter is left alone): any op id, any enum value. For
// malformed-input tests.
func (g *Gateway) PublishMessage(r Route, msg *wirev1.OpControlMessage) {
	frame, err := proto.Marshal(msg)
	if err != nil {
		panic("gatewaytest: PublishMessage: " + err.Error())
	}
	g.PublishRaw(r, frame)
}

// PublishRaw sends frame as one message's bytes, whatever they are: a
// client sees them as an OpControlMessage frame. For malformed-input tests.
func (g *Gateway) PublishRaw(r Route, frame []byte) {
	frame = append([]byte(nil), frame...)
	g.currentRing().publish(r, false, func(uint64) []byte { return frame })
	g.countPublish()
}

func (g *Gateway) publish(r Route, opID string, sig controlstore.Signal) uint64 {
	seq := g.currentRing().publish(r, true, func(seq uint64) []byte {
		b, err := proto.Marshal(&wirev1.OpControlMessage{OpId: opID, Signal: wirev1.OpControlSignal(sig), Sequence: seq})
		if err != nil {
			panic("gatewaytest: Publish: " + err.Error()) // only invalid UTF-8 in opID
		}
		return b
	})
	g.countPublish()
	return seq
}

func (g *Gateway) currentRing() *ring {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.ring
}

func (g *Gateway) countPublish() {
	g.mu.Lock()
	g.stats.Published++
	g.mu.Unlock()
}
