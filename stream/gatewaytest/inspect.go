package gatewaytest

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/opcontrol/opcontrol/controlstore"
)

// SubscribeEvent describes one subscribe the gateway decided.
type SubscribeEvent struct {
	Time time.Time
	// Agent is the requested triple; HasAgent is false when the request
	// had no agent_id.
	Agent    controlstore.Agent
	HasAgent bool
	// Token is the credential resolved from the metadata, "" if none.
	Token string
	// Code is codes.OK when the subscription was admitted, otherwise the
	// status the stream was rejected with.
	Code codes.Code
}

// SubscriberInfo describes one live subscription.
type SubscriberInfo struct {
	Agent controlstore.Agent
	Since time.Time
	// Sent counts messages sent on this stream; Skipped counts envelopes
	// it missed because it lagged more than the ring's capacity behind.
	Sent, Skipped uint64
}

// Stats counts what the gateway did since Start, across restarts.
type Stats struct {
	Subscribers int    // subscriptions live now
	Accepted    uint64 // subscribes admitted
	Rejected    uint64 // subscribes rejected with a status
	Published   uint64 // envelopes published
	Skipped     uint64 // envelopes skipped by lagging subscriptions (ended ones included)
	Sequence    uint64 // the sequence number the next Publish gets
	Restarts    int
}

// SubscriberCount returns the number of live subscriptions.
func (g *Gateway) SubscriberCount() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.subs)
}

// WaitForSubscribers waits until exactly n subscriptions are live, or ctx
// ends. A subscription counts from the moment it is subscribed to the
// ring, just before its response headers are sent.
func (g *Gateway) WaitForSubscribers(ctx context.Context, n int) error {
	for {
		g.mu.Lock()
		cur, ch := len(g.subs), g.subsChanged
		g.mu.Unlock()
		if cur == n {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("gatewaytest: %d subscribers, waiting for %d: %w", cur, n, ctx.Err())
		}
	}
}

// Subscribers describes the live subscriptions.
func (g *Gateway) Subscribers() []SubscriberInfo {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := make([]SubscriberInfo, 0, len(g.subs))
	for s := range g.subs {
		out = append(out, SubscriberInfo{Agent: s.agent, Since: s.since, Sent: s.sent.Load(), Skipped: s.cur.skipped.Load()})
	}
	return out
}

// Stats returns the gateway's counters.
func (g *Gateway) Stats() Stats {
	g.mu.Lock()
	defer g.mu.Unlock()
	st := g.stats
	st.Subscribers = len(g.subs)
	for s := range g.subs {
		st.Skipped += s.cur.skipped.Load()
	}
	st.Sequence = g.ring.sequence()
	return st
}
