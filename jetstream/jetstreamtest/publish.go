package jetstreamtest

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	jsapi "github.com/nats-io/nats.go/jetstream"

	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/jetstream"
)

// AckTimeout is how long the operator API waits for the JetStream
// acknowledgement of a halt before answering 503.
const AckTimeout = 5 * time.Second

// Publisher publishes halts exactly as the operator API does: on the
// agent's subject (or the global one), the compact JSON envelope in key
// order, no headers, waiting up to AckTimeout for the stream's
// acknowledgement. Its methods are safe for concurrent use.
type Publisher struct {
	js jsapi.JetStream
}

// NewPublisher returns a publisher on nc.
func NewPublisher(nc *nats.Conn) (*Publisher, error) {
	js, err := jsapi.New(nc)
	if err != nil {
		return nil, fmt.Errorf("jetstreamtest: %w", err)
	}
	return &Publisher{js: js}, nil
}

// HaltAgent publishes sig for every op of agent (the operator's halt-agent)
// and returns the stream sequence it was stored at.
func (p *Publisher) HaltAgent(ctx context.Context, agent controlstore.Agent, sig controlstore.Signal) (uint64, error) {
	return p.Publish(ctx, jetstream.Subject(agent), jetstream.AgentHalt(agent, sig))
}

// HaltAll publishes sig for every op of every agent (the operator's global
// halt) and returns its stream sequence.
func (p *Publisher) HaltAll(ctx context.Context, sig controlstore.Signal) (uint64, error) {
	return p.Publish(ctx, jetstream.GlobalSubject, jetstream.GlobalHalt(sig))
}

// Publish publishes env on subject, whatever they are: for tests of forged
// or misrouted envelopes.
func (p *Publisher) Publish(ctx context.Context, subject string, env jetstream.Envelope) (uint64, error) {
	return p.PublishRaw(ctx, subject, env.Encode())
}

// PublishRaw publishes payload on subject as it is: for tests of
// malformed payloads.
func (p *Publisher) PublishRaw(ctx context.Context, subject string, payload []byte) (uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, AckTimeout)
	defer cancel()
	ack, err := p.js.Publish(ctx, subject, payload)
	if err != nil {
		return 0, fmt.Errorf("jetstreamtest: publish on %s: %w", subject, err)
	}
	return ack.Sequence, nil
}
