package stream

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/internal/contract"
	"github.com/opcontrol/opcontrol/internal/ratelog"
	"github.com/opcontrol/opcontrol/internal/retry"
	wirev1 "github.com/opcontrol/opcontrol/proto/opcontrol/wire/v1"
	"github.com/opcontrol/opcontrol/stream/internal/wirecodec"
)

// FullMethod is the gateway method the subscriber calls.
const FullMethod = contract.OpControlStreamMethod

// ErrRunning is returned by Run when the subscriber is already running.
var ErrRunning = errors.New("stream: Run called while the subscriber is already running")

// errWindow is the cause with which an attempt is cancelled when the
// connection was not ready, or the gateway did not answer, in time.
var errWindow = errors.New("stream: connect window elapsed")

// Subscriber keeps a controlstore.Store in step with the gateway's
// op-control stream: it subscribes with the store's agent triple, applies
// every signal it receives, reconnects for ever, and reports its health.
// Create it with NewSubscriber and call Run.
type Subscriber struct {
	cc       grpc.ClientConnInterface
	store    *controlstore.Store
	opts     options
	cfgErr   error // a configuration that cannot work: Run never dials
	log      *slog.Logger
	metrics  *metrics
	req      wirecodec.Raw
	callOpts []grpc.CallOption
	guard    guard

	running   atomic.Bool
	connected atomic.Bool
	ready     chan struct{}
	readyOnce sync.Once

	received, dropped, tooLarge, lastSeq atomic.Uint64

	mu     sync.Mutex
	status Status // counters and LastSequence live in the atomics above
	logKey failureKey

	// Owned by the goroutine in Run.
	msg     wirecodec.Message
	haveSeq bool
	limits  ratelog.Limiter // drop logs, by reason
}

// failureKey identifies a failure for "log once per change".
type failureKey struct {
	state State
	code  codes.Code
}

// NewSubscriber returns a subscriber that keeps store up to date from the
// gateway reached through cc, subscribing with store.Agent(). cc should be
// a *grpc.ClientConn dialled with GatewayDialOptions. It panics when cc or
// store is nil (programmer errors); nil options are ignored. A
// configuration that cannot work, such as a bad credential token, does not
// panic: the subscriber reports it as state Misconfigured once it runs.
func NewSubscriber(cc grpc.ClientConnInterface, store *controlstore.Store, opts ...Option) *Subscriber {
	if cc == nil {
		panic("stream: NewSubscriber needs a non-nil grpc.ClientConnInterface")
	}
	if store == nil {
		panic("stream: NewSubscriber needs a non-nil *controlstore.Store")
	}
	o := defaultOptions()
	for _, opt := range opts {
		if opt != nil {
			opt(&o)
		}
	}
	a := store.Agent()
	s := &Subscriber{
		cc:      cc,
		store:   store,
		opts:    o,
		cfgErr:  o.tokenErr,
		log:     o.logger.With(slog.String("component", "opcontrol/stream"), slog.String("agent_id", a.AgentID)),
		metrics: newMetrics(o.meterProvider),
		ready:   make(chan struct{}),
	}
	req, err := proto.Marshal(&wirev1.OpControlSubscribeRequest{
		AgentId: &wirev1.AgentId{OrgId: a.OrgID, TeamId: a.TeamID, AgentId: a.AgentID},
	})
	if err != nil && s.cfgErr == nil {
		// Only invalid UTF-8 in the agent triple gets here, which
		// controlstore.New refuses; the gateway could never match it.
		s.cfgErr = &configError{"the store's agent triple does not encode: " + err.Error()}
	}
	s.req = req
	for _, n := range o.notes {
		s.log.LogAttrs(context.Background(), slog.LevelWarn, "op-control subscriber option adjusted", slog.String("note", n))
	}
	s.callOpts = append(append([]grpc.CallOption(nil), o.callOpts...),
		grpc.WaitForReady(true),
		grpc.ForceCodecV2(wirecodec.Codec{}),
		grpc.MaxCallRecvMsgSize(maxFrameSize),
		grpc.StaticMethod(),
	)
	s.guard = newGuard(store, o.failClosed, o.failClosedAfter)
	return s
}

// Connected reports whether the stream is live now.
func (s *Subscriber) Connected() bool { return s.connected.Load() }

// Ready returns a channel closed the first time the stream is live: the
// gateway has subscribed this agent, so every signal published from then
// on reaches the store (unless the gateway's ring overflows).
func (s *Subscriber) Ready() <-chan struct{} { return s.ready }

// Status returns a snapshot of the subscriber's health.
func (s *Subscriber) Status() Status {
	s.mu.Lock()
	st := s.status
	s.mu.Unlock()
	st.LastSequence = s.lastSeq.Load()
	st.Received = s.received.Load()
	st.Dropped = s.dropped.Load()
	st.TooLarge = s.tooLarge.Load()
	return st
}

// Run subscribes and keeps the stream up until ctx ends, then returns nil
// within moments, leaving no goroutine behind. It returns ErrRunning at
// once if Run is already running; after it returns it may be called again.
//
// The first attempt subscribes at once. After a lost stream or a failed
// attempt, Run waits the backoff's next interval, waits until the
// connection is ready again (having it dialled every 250 ms meanwhile),
// and then a random time within the reconnect spread before it
// subscribes; see the package documentation.
func (s *Subscriber) Run(ctx context.Context) error {
	if !s.running.CompareAndSwap(false, true) {
		return ErrRunning
	}
	defer s.running.Store(false)

	b := s.opts.newBackoff()
	b.Reset()
	now := time.Now()
	s.mu.Lock()
	s.status = Status{State: Connecting, Since: now, DownSince: now,
		LastError: s.status.LastError, LastCode: s.status.LastCode, LastErrorAt: s.status.LastErrorAt}
	s.logKey = failureKey{}
	s.mu.Unlock()
	s.guard.start()
	defer func() {
		s.guard.stop()
		s.mu.Lock()
		s.setStateLocked(Idle, time.Now())
		s.status.NextAttempt = time.Time{}
		s.mu.Unlock()
	}()

	// One backoff draw per failed attempt: it is both the wait before the
	// next attempt and that attempt's connect window (at least
	// minConnectWindow), so the waits follow the backoff's own schedule.
	window := minConnectWindow
	spread := false // the first attempt subscribes at once
	for first := true; ; first = false {
		if s.cfgErr != nil {
			// Nothing to dial with: report it, slowly, for health probes.
			s.beginAttempt()
			wait := retry.Slow(s.opts.misconfigWait)
			s.failed(Misconfigured, codes.InvalidArgument, s.cfgErr, wait, 0)
			if !sleep(ctx, wait) {
				return nil
			}
			continue
		}
		if !first {
			s.metrics.reconnect(s.Status().LastCode)
		}
		out := s.attempt(ctx, window, spread)
		if ctx.Err() != nil {
			return nil
		}
		if out.liveFor >= s.opts.stableAfter {
			b.Reset()
		}
		interval := retry.Next(b, s.opts.misconfigWait)
		window = max(interval, minConnectWindow)
		if out.notReady {
			// The attempt already waited its whole window.
			s.failed(Connecting, codes.Unavailable, out.err, 0, 0)
			spread = true
			continue
		}
		state, code := classify(out.err)
		wait := interval
		// A rejection that means misconfiguration already waits 5-7.5 s,
		// jittered; every other failure is spread once the connection is
		// ready again.
		spread = state == Backoff
		if !spread {
			wait = max(wait, retry.Slow(s.opts.misconfigWait))
		}
		s.failed(state, code, out.err, wait, out.liveFor)
		if !sleep(ctx, wait) {
			return nil
		}
	}
}
