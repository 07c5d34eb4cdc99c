package stream

import (
	"context"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/internal/contract"
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
	log      *slog.Logger
	metrics  *metrics
	req      wirecodec.Raw
	callOpts []grpc.CallOption
	guard    guard

	running   atomic.Bool
	connected atomic.Bool
	ready     chan struct{}
	readyOnce sync.Once

	received, dropped, lastSeq atomic.Uint64

	mu     sync.Mutex
	status Status // counters and LastSequence live in the atomics above
	logKey failureKey

	// Owned by the goroutine in Run.
	msg     wirecodec.Message
	haveSeq bool
	limits  map[string]*logLimit
}

// failureKey identifies a failure for "log once per change".
type failureKey struct {
	state State
	code  codes.Code
}

// NewSubscriber returns a subscriber that keeps store up to date from the
// gateway reached through cc, subscribing with store.Agent(). cc should be
// a *grpc.ClientConn dialled with DialOptions. It panics when cc or store
// is nil.
func NewSubscriber(cc grpc.ClientConnInterface, store *controlstore.Store, opts ...Option) *Subscriber {
	if cc == nil {
		panic("stream: NewSubscriber needs a non-nil grpc.ClientConnInterface")
	}
	if store == nil {
		panic("stream: NewSubscriber needs a non-nil *controlstore.Store")
	}
	o := defaultOptions()
	for _, opt := range opts {
		opt(&o)
	}
	a := store.Agent()
	req, err := proto.Marshal(&wirev1.OpControlSubscribeRequest{
		AgentId: &wirev1.AgentId{OrgId: a.OrgID, TeamId: a.TeamID, AgentId: a.AgentID},
	})
	if err != nil {
		// Only invalid UTF-8 in the agent triple gets here; the gateway
		// could never match such a triple.
		panic("stream: NewSubscriber: the store's agent triple does not encode: " + err.Error())
	}
	s := &Subscriber{
		cc:      cc,
		store:   store,
		opts:    o,
		log:     o.logger.With(slog.String("component", "opcontrol/stream"), slog.String("agent_id", a.AgentID)),
		metrics: newMetrics(o.meterProvider),
		req:     req,
		ready:   make(chan struct{}),
		limits:  make(map[string]*logLimit),
	}
	s.callOpts = append(append([]grpc.CallOption(nil), o.callOpts...),
		grpc.WaitForReady(true),
		grpc.ForceCodecV2(wirecodec.Codec{}),
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
	return st
}

// Run subscribes and keeps the stream up until ctx ends, then returns nil
// within moments, leaving no goroutine behind. It returns ErrRunning at
// once if Run is already running; after it returns it may be called again.
//
// Each attempt resets the connection's own reconnect backoff (when cc has
// ResetConnectBackoff, as *grpc.ClientConn does) and waits for the
// connection to become ready for the next backoff interval (at least
// MinConnectWindow). So the connection is dialled at least once per backoff
// interval however long the gateway was away, and the stream is live again
// within about DefaultMaxInterval × 1.5 of the gateway's return.
func (s *Subscriber) Run(ctx context.Context) error {
	if !s.running.CompareAndSwap(false, true) {
		return ErrRunning
	}
	defer s.running.Store(false)

	b := s.opts.newBackOff()
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
	// MinConnectWindow), so the waits follow the backoff's own schedule.
	window := MinConnectWindow
	for first := true; ; first = false {
		if !first {
			s.metrics.reconnect(s.Status().LastCode)
		}
		out := s.attempt(ctx, window)
		if ctx.Err() != nil {
			return nil
		}
		if out.liveFor >= s.opts.stableAfter {
			b.Reset()
		}
		interval := nextBackOff(b, s.opts.misconfigWait)
		window = max(interval, MinConnectWindow)
		if out.notReady {
			// The attempt already waited its whole window.
			s.failed(Connecting, codes.Unavailable, out.err, 0, 0)
			continue
		}
		state, code := classify(out.err)
		wait := interval
		if state != Backoff {
			wait = max(wait, slowWait(s.opts.misconfigWait))
		}
		s.failed(state, code, out.err, wait, out.liveFor)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

// outcome is how one attempt ended.
type outcome struct {
	err      error         // nil or io.EOF: clean end
	notReady bool          // no answer within the connect window
	liveFor  time.Duration // how long the stream was live (0: never)
}

// attempt opens one stream and, once live, receives until it ends.
func (s *Subscriber) attempt(ctx context.Context, window time.Duration) outcome {
	s.beginAttempt()
	if r, ok := s.cc.(interface{ ResetConnectBackoff() }); ok {
		r.ResetConnectBackoff()
	}
	actx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	if s.opts.token != "" {
		actx = metadata.AppendToOutgoingContext(actx, contract.CredentialTokenKey, s.opts.token)
	}
	timer := time.AfterFunc(window, func() { cancel(errWindow) })

	// The rejections of the real gateway come as a trailers-only response
	// (Header returns nil, RecvMsg the status); a ClientConnInterface
	// wrapped by interceptors may return them from NewStream. Both end
	// here as err and are classified alike.
	cs, err := s.cc.NewStream(actx, &grpc.StreamDesc{StreamName: contract.OpControlStreamName, ServerStreams: true}, FullMethod, s.callOpts...)
	var md metadata.MD
	pending := false
	if err == nil {
		// SendMsg reports io.EOF when the call has already ended; its
		// status comes from Header and RecvMsg.
		if err = cs.SendMsg(&s.req); err == nil || errors.Is(err, io.EOF) {
			_ = cs.CloseSend()
			md, err = cs.Header()
		}
		if err == nil && md == nil {
			// No headers: a trailers-only response (or a ClientStream
			// that does not report headers). RecvMsg says which.
			err = cs.RecvMsg(&s.msg)
			pending = err == nil
		}
	}
	if !timer.Stop() && ctx.Err() == nil {
		cause := "no answer"
		if err != nil {
			cause = status.Convert(err).Message()
		}
		return outcome{notReady: true, err: status.Errorf(codes.Unavailable, "stream: gateway not ready within %v: %s", window, cause)}
	}
	if err != nil {
		return outcome{err: err}
	}

	// Headers arrived: the gateway subscribed us to its broadcast before
	// sending them, so from here on nothing published is missed.
	liveAt := s.goLive()
	if pending {
		s.handle(&s.msg)
	}
	for {
		if err = cs.RecvMsg(&s.msg); err != nil {
			break
		}
		s.handle(&s.msg)
	}
	s.goDown()
	return outcome{err: err, liveFor: max(time.Since(liveAt), 1)}
}

// classify maps the error that ended an attempt or a stream to the state
// to wait in and its status code.
func classify(err error) (State, codes.Code) {
	if err == nil || errors.Is(err, io.EOF) {
		return Backoff, codes.OK
	}
	code := status.Code(err)
	switch code {
	case codes.Unauthenticated, codes.PermissionDenied:
		return Unauthorized, code
	case codes.InvalidArgument, codes.Unimplemented:
		return Misconfigured, code
	}
	return Backoff, code
}

// hint says what to fix for a misconfiguration code.
func hint(code codes.Code) string {
	switch code {
	case codes.Unauthenticated:
		return "the gateway needs a valid credential token: check WithCredentialToken"
	case codes.PermissionDenied:
		return "the store's org/team/agent triple must equal the token's registered identity byte for byte"
	case codes.InvalidArgument:
		return "the gateway refused the subscribe request"
	case codes.Unimplemented:
		return "no op-control service at this address (is it aa-api rather than aa-gateway?)"
	}
	return ""
}

func (s *Subscriber) beginAttempt() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.status.Attempts++
	s.status.NextAttempt = time.Time{}
	if st := s.status.State; st != Unauthorized && st != Misconfigured {
		s.setStateLocked(Connecting, time.Now())
	}
}

func (s *Subscriber) setStateLocked(st State, now time.Time) {
	if s.status.State != st {
		s.status.State, s.status.Since = st, now
	}
}

// failed records a failed attempt or a lost stream (liveFor > 0) and logs
// it: a lost stream always, a failed attempt once per change of state and
// code (repeats at debug level).
func (s *Subscriber) failed(state State, code codes.Code, err error, wait, liveFor time.Duration) {
	now := time.Now()
	s.mu.Lock()
	s.setStateLocked(state, now)
	s.status.LastError, s.status.LastCode, s.status.LastErrorAt = err, code, now
	if wait > 0 {
		s.status.NextAttempt = now.Add(wait)
	}
	key := failureKey{state, code}
	changed := key != s.logKey
	s.logKey = key
	attempts := s.status.Attempts
	s.mu.Unlock()

	level, msg := slog.LevelDebug, "op-control stream not live"
	switch {
	case state == Unauthorized || state == Misconfigured:
		if changed {
			level = slog.LevelError
		}
	case liveFor > 0:
		level, msg = slog.LevelWarn, "op-control stream lost: signals published until it is live again are missed"
	case changed:
		level = slog.LevelWarn
	}
	attrs := []slog.Attr{
		slog.String("state", state.String()),
		slog.String("code", code.String()),
		slog.Int("attempts", attempts),
		slog.Duration("retry_in", wait),
	}
	if liveFor > 0 {
		attrs = append(attrs, slog.Duration("live_for", liveFor))
	}
	if err != nil && !errors.Is(err, io.EOF) {
		attrs = append(attrs, slog.String("error", err.Error()))
	}
	if h := hint(code); h != "" {
		attrs = append(attrs, slog.String("hint", h))
	}
	s.log.LogAttrs(context.Background(), level, msg, attrs...)
}

// goLive marks the stream live and returns when.
func (s *Subscriber) goLive() time.Time {
	now := time.Now()
	s.mu.Lock()
	attempts, downFor := s.status.Attempts, now.Sub(s.status.DownSince)
	s.setStateLocked(Live, now)
	s.status.Attempts, s.status.DownSince, s.status.NextAttempt = 0, time.Time{}, time.Time{}
	s.logKey = failureKey{state: Live}
	s.mu.Unlock()

	s.connected.Store(true)
	s.guard.setLive(true)
	s.metrics.setUp(true)
	s.readyOnce.Do(func() { close(s.ready) })
	s.log.LogAttrs(context.Background(), slog.LevelInfo, "op-control stream live",
		slog.Int("attempts", attempts), slog.Duration("down_for", downFor))
	return now
}

// goDown marks the stream no longer live.
func (s *Subscriber) goDown() {
	s.connected.Store(false)
	s.metrics.setUp(false)
	s.guard.setLive(false)
	s.mu.Lock()
	s.status.DownSince = time.Now()
	s.mu.Unlock()
}

// handle applies one received frame. It never blocks: Apply is O(1) and
// waits for no reader.
func (s *Subscriber) handle(m *wirecodec.Message) {
	s.received.Add(1)
	if m.Err != nil {
		s.drop(reasonMalformed, "dropped an op-control frame that does not decode",
			slog.Int("len", m.Len), slog.String("prefix_hex", hex.EncodeToString(m.Prefix)), slog.String("error", m.Err.Error()))
		return
	}
	sig := controlstore.Signal(m.Msg.GetSignal())
	s.metrics.signal(sig)
	seq := m.Msg.GetSequence()
	if prev := s.lastSeq.Load(); s.haveSeq && seq < prev {
		if s.limit("sequence").allow(time.Now()) {
			s.log.LogAttrs(context.Background(), slog.LevelInfo,
				"op-control sequence went backwards: the gateway restarted, or this is another replica",
				slog.Uint64("previous", prev), slog.Uint64("sequence", seq))
		}
	}
	s.lastSeq.Store(seq)
	s.haveSeq = true
	if err := s.guard.apply(m.Msg.GetOpId(), sig); err != nil {
		reason := "other"
		opID := ""
		var re *controlstore.RejectedError
		if errors.As(err, &re) {
			reason, opID = string(re.Reason), re.OpID
		}
		s.drop(reason, "dropped an op-control signal the store refused",
			slog.String("reason", reason), slog.String("signal", sig.String()), slog.String("op_id", opID),
			slog.Uint64("sequence", seq))
	}
}

// drop counts and, at a bounded rate, logs dropped input.
func (s *Subscriber) drop(reason, msg string, attrs ...slog.Attr) {
	s.dropped.Add(1)
	s.metrics.reject(reason)
	l := s.limit(reason)
	if !l.allow(time.Now()) {
		return
	}
	if n := l.takeSuppressed(); n > 0 {
		attrs = append(attrs, slog.Uint64("suppressed_since_last", n))
	}
	s.log.LogAttrs(context.Background(), slog.LevelWarn, msg, attrs...)
}

func (s *Subscriber) limit(key string) *logLimit {
	l, ok := s.limits[key]
	if !ok {
		l = &logLimit{}
		s.limits[key] = l
	}
	return l
}

// logLimit lets one line through per LogInterval and counts the rest.
type logLimit struct {
	last       time.Time
	suppressed uint64
}

func (l *logLimit) allow(now time.Time) bool {
	if !l.last.IsZero() && now.Sub(l.last) < LogInterval {
		l.suppressed++
		return false
	}
	l.last = now
	return true
}

func (l *logLimit) takeSuppressed() uint64 {
	n := l.suppressed
	l.suppressed = 0
	return n
}
