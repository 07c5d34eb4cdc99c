package jetstreamtest

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	jsapi "github.com/nats-io/nats.go/jetstream"

	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/jetstream"
	"github.com/opcontrol/opcontrol/stream/gatewaytest"
)

// BridgeState is the bridge's health, named as the gateway names it.
type BridgeState int

// Bridge states.
const (
	BridgeConnecting BridgeState = iota
	BridgeSubscribed
	BridgeReconnecting
	// BridgeStreamUnavailable: the stream could not be created or updated
	// (for example it exists with Memory storage); halts published on it
	// are accepted and never delivered. The gateway's fail-loud state.
	BridgeStreamUnavailable
	BridgeClosed
)

// String returns the state's name.
func (st BridgeState) String() string {
	switch st {
	case BridgeConnecting:
		return "connecting"
	case BridgeSubscribed:
		return "subscribed"
	case BridgeReconnecting:
		return "reconnecting"
	case BridgeStreamUnavailable:
		return "stream_unavailable"
	case BridgeClosed:
		return "closed"
	}
	return "state(" + strconv.Itoa(int(st)) + ")"
}

// BridgeStats are the bridge's counters (the gateway's
// aa_op_control_bridge_* metrics).
type BridgeStats struct {
	State BridgeState
	// Subscribes counts consumers created; every one replays the whole
	// retained window.
	Subscribes uint64
	// Forwarded counts envelopes forwarded to the gateway; Rejected those
	// dropped, and Dropped the same by reason.
	Forwarded, Rejected uint64
	Dropped             map[jetstream.DropReason]uint64
	LastError           error
}

// Default bridge backoff: the gateway's, 1 s doubling to 32 s, no jitter.
const (
	DefaultBridgeInitialWait = time.Second
	DefaultBridgeMaxWait     = 32 * time.Second
)

// BridgeOption configures a Bridge.
type BridgeOption func(*bridgeConfig)

type bridgeConfig struct {
	initial, max time.Duration
}

// WithBridgeBackOff sets the waits between failed attempts (default
// DefaultBridgeInitialWait doubling to DefaultBridgeMaxWait). Values <= 0
// are ignored.
func WithBridgeBackOff(initial, maxWait time.Duration) BridgeOption {
	return func(c *bridgeConfig) {
		if initial > 0 {
			c.initial = initial
		}
		if maxWait > 0 {
			c.max = maxWait
		}
	}
}

// Bridge does what each gateway replica does with the bus: at every
// (re)connect it creates or updates the stream, then creates an ephemeral
// consumer (DeliverPolicy All, explicit ack, filter assembly.opcontrol.>),
// validates each envelope as the gateway does (jetstream.Validate with no
// agent: decode, subject binding, signal 1..3), forwards it to the
// gateway's subscribers (a global envelope as "*" to everyone, an agent
// envelope with its op_id verbatim to exactly its triple's
// subscriptions) and acks it, valid or not.
//
// Like the real gateway, every reconnect replays the whole retained
// window: the gateway's subscribers see duplicates, and halts published
// before they subscribed.
type Bridge struct {
	nc   *nats.Conn
	js   jsapi.JetStream
	gw   *gatewaytest.Gateway
	cfg  bridgeConfig
	stop context.CancelFunc
	done chan struct{}

	mu    sync.Mutex
	stats BridgeStats
	subCh chan struct{} // closed and replaced at each subscription
}

// StartBridge starts a bridge from the bus reached through nc to gw. Close
// it when done (it does not close nc).
func StartBridge(nc *nats.Conn, gw *gatewaytest.Gateway, opts ...BridgeOption) (*Bridge, error) {
	if nc == nil || gw == nil {
		return nil, errors.New("jetstreamtest: StartBridge needs a connection and a gateway")
	}
	js, err := jsapi.New(nc)
	if err != nil {
		return nil, fmt.Errorf("jetstreamtest: %w", err)
	}
	b := &Bridge{
		nc: nc, js: js, gw: gw,
		cfg:   bridgeConfig{initial: DefaultBridgeInitialWait, max: DefaultBridgeMaxWait},
		done:  make(chan struct{}),
		subCh: make(chan struct{}),
	}
	b.stats.Dropped = make(map[jetstream.DropReason]uint64)
	for _, o := range opts {
		if o != nil {
			o(&b.cfg)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	b.stop = cancel
	go b.run(ctx)
	return b, nil
}

// Close stops the bridge and waits for it.
func (b *Bridge) Close() {
	b.stop()
	<-b.done
}

// Stats returns the bridge's counters.
func (b *Bridge) Stats() BridgeStats {
	b.mu.Lock()
	defer b.mu.Unlock()
	st := b.stats
	st.Dropped = make(map[jetstream.DropReason]uint64, len(b.stats.Dropped))
	for k, v := range b.stats.Dropped {
		st.Dropped[k] = v
	}
	return st
}

// WaitSubscribed waits until the bridge has created at least n consumers
// in all and is subscribed, or ctx ends.
func (b *Bridge) WaitSubscribed(ctx context.Context, n uint64) error {
	for {
		b.mu.Lock()
		ok := b.stats.State == BridgeSubscribed && b.stats.Subscribes >= n
		ch := b.subCh
		b.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("jetstreamtest: bridge not subscribed (%d of %d): %w", b.Stats().Subscribes, n, ctx.Err())
		case <-ch:
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (b *Bridge) setState(st BridgeState, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.stats.State = st
	if err != nil {
		b.stats.LastError = err
	}
	if st == BridgeSubscribed {
		b.stats.Subscribes++
		close(b.subCh)
		b.subCh = make(chan struct{})
	}
}

func (b *Bridge) run(ctx context.Context) {
	defer close(b.done)
	defer b.setState(BridgeClosed, nil)
	events := b.nc.StatusChanged(nats.CONNECTED, nats.RECONNECTING, nats.DISCONNECTED, nats.CLOSED)
	defer b.nc.RemoveStatusListener(events)
	wait := b.cfg.initial
	for ctx.Err() == nil {
		if !b.nc.IsConnected() {
			select {
			case <-ctx.Done():
				return
			case <-events:
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		err := b.session(ctx, events)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			wait = b.cfg.initial // a subscription ended by a reconnect: start over
			continue
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		wait = min(2*wait, b.cfg.max)
	}
}

// session creates the stream and a consumer, and forwards until the link
// drops (nil) or the consumer fails (an error).
func (b *Bridge) session(ctx context.Context, events chan nats.Status) error {
	reconnects := b.nc.Stats().Reconnects
	actx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := CreateStream(actx, b.js); err != nil {
		b.setState(BridgeStreamUnavailable, err)
		return err
	}
	cons, err := b.js.CreateConsumer(actx, jetstream.StreamName, jsapi.ConsumerConfig{
		DeliverPolicy:     jsapi.DeliverAllPolicy,
		AckPolicy:         jsapi.AckExplicitPolicy,
		FilterSubject:     jetstream.StreamSubjects,
		InactiveThreshold: 30 * time.Second,
	})
	if err != nil {
		b.setState(BridgeReconnecting, err)
		return err
	}
	failed := make(chan error, 1)
	cc, err := cons.Consume(b.forward, jsapi.ConsumeErrHandler(func(_ jsapi.ConsumeContext, err error) {
		if errors.Is(err, jsapi.ErrConsumerDeleted) || errors.Is(err, jsapi.ErrNoHeartbeat) {
			select {
			case failed <- err:
			default:
			}
		}
	}))
	if err != nil {
		b.setState(BridgeReconnecting, err)
		return err
	}
	defer cc.Stop()
	b.setState(BridgeSubscribed, nil)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-events:
			if !b.nc.IsConnected() || b.nc.Stats().Reconnects != reconnects {
				b.setState(BridgeReconnecting, nil)
				return nil
			}
		case err := <-failed:
			b.setState(BridgeReconnecting, err)
			return err
		}
	}
}

// forward handles one message as the gateway does.
func (b *Bridge) forward(msg jsapi.Msg) {
	defer func() { _ = msg.Ack() }()
	h, err := jetstream.Validate(msg.Subject(), msg.Data(), nil)
	if err != nil {
		reason := jetstream.DropMalformed
		var de *jetstream.DropError
		if errors.As(err, &de) {
			reason = de.Reason
		}
		b.mu.Lock()
		b.stats.Rejected++
		b.stats.Dropped[reason]++
		b.mu.Unlock()
		return
	}
	if h.Envelope.Global {
		b.gw.HaltAll(h.Signal)
	} else {
		e := h.Envelope
		b.gw.Publish(controlstore.Agent{OrgID: e.OrgID, TeamID: e.TeamID, AgentID: e.AgentID}, h.OpID, h.Signal)
	}
	b.mu.Lock()
	b.stats.Forwarded++
	b.mu.Unlock()
}
