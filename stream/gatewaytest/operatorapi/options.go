package operatorapi

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/opcontrol/opcontrol/controlstore"
)

// Limits and timing.
const (
	// DefaultMaxOps is the registry's cap when WithMaxOps is not given.
	DefaultMaxOps = 1 << 16
	// MaxOpsLimit is the largest cap WithMaxOps accepts.
	MaxOpsLimit = 1 << 24
	// MaxBodyBytes bounds a request body; a longer one answers 413.
	MaxBodyBytes = 64 << 10
	// DefaultPublishTimeout bounds one call of a Publisher when
	// WithPublishTimeout is not given: the real operator API waits this
	// long for the bus's acknowledgement.
	DefaultPublishTimeout = 5 * time.Second
	// SweepInterval and SweepRetention are the upstream registry's sweep:
	// Completing and Terminated ops are removed once their last change is
	// SweepRetention old, looked for at most every SweepInterval.
	SweepInterval  = 10 * time.Second
	SweepRetention = 60 * time.Second
)

// Publisher carries agent and global halts to agents by another channel than
// the in-process gateway, for example the deployment's JetStream bus. Its
// methods must honour ctx (bounded by WithPublishTimeout) and return nil
// only once the channel has accepted the halt; an error answers 503.
// They are never called concurrently with each other by one Handler.
type Publisher interface {
	// PublishAgentHalt publishes sig for "agent:{agent.AgentID}", routed
	// to agent's triple.
	PublishAgentHalt(ctx context.Context, agent controlstore.Agent, sig controlstore.Signal) error
	// PublishGlobalHalt publishes sig for "*", to every agent.
	PublishGlobalHalt(ctx context.Context, sig controlstore.Signal) error
}

// Option configures a Handler. A nil Option is ignored.
type Option func(*options)

type options struct {
	publisher      Publisher
	bridged        bool
	publishTimeout time.Duration
	maxOps         int
	now            func() time.Time
	logger         *slog.Logger
}

func defaultOptions() options {
	return options{
		publishTimeout: DefaultPublishTimeout,
		maxOps:         DefaultMaxOps,
		now:            time.Now,
		logger:         slog.Default(),
	}
}

func (o *options) validate() error {
	if o.maxOps < 1 || o.maxOps > MaxOpsLimit {
		return fmt.Errorf("operatorapi: WithMaxOps(%d) outside [1, %d]", o.maxOps, MaxOpsLimit)
	}
	if o.publishTimeout <= 0 {
		return fmt.Errorf("operatorapi: WithPublishTimeout(%v) must be positive", o.publishTimeout)
	}
	return nil
}

// WithPublisher sends agent and global halts to p instead of the in-process
// gateway, as the real operator API does when its bus is configured. Per-op
// signals still go to the gateway. A nil p is ignored. The last of
// WithPublisher and WithBridgedPublisher wins.
func WithPublisher(p Publisher) Option {
	return func(o *options) {
		if p != nil {
			o.publisher, o.bridged = p, false
		}
	}
}

// WithBridgedPublisher sends agent and global halts to p and, once p has
// accepted one, to the in-process gateway as well, as the real gateway's
// bridge would deliver a halt from the bus on its streams. If p fails, the
// gateway gets nothing. A nil p is ignored.
func WithBridgedPublisher(p Publisher) Option {
	return func(o *options) {
		if p != nil {
			o.publisher, o.bridged = p, true
		}
	}
}

// WithPublishTimeout bounds each call of the Publisher (default
// DefaultPublishTimeout). New refuses d <= 0.
func WithPublishTimeout(d time.Duration) Option {
	return func(o *options) { o.publishTimeout = d }
}

// WithMaxOps caps the number of ops the registry holds (default
// DefaultMaxOps). When it is full, registering a new op first sweeps every
// expired op, then answers 503 registry_full. New refuses n outside
// [1, MaxOpsLimit].
func WithMaxOps(n int) Option {
	return func(o *options) { o.maxOps = n }
}

// WithClock sets the clock for timestamps and the sweep (default time.Now).
// A nil now is ignored.
func WithClock(now func() time.Time) Option {
	return func(o *options) {
		if now != nil {
			o.now = now
		}
	}
}

// WithLogger sets where the handler logs (default slog.Default()): every
// accepted action at info, a transition that reached no agent and a failed
// publish at warn. A nil logger discards everything.
func WithLogger(l *slog.Logger) Option {
	return func(o *options) {
		if l == nil {
			l = slog.New(slog.DiscardHandler)
		}
		o.logger = l
	}
}
