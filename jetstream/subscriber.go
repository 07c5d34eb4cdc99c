package jetstream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	jsapi "github.com/nats-io/nats.go/jetstream"

	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/internal/ratelog"
	"github.com/opcontrol/opcontrol/internal/retry"
)

// SourceName is the name of the subscriber's controlstore.Source.
const SourceName = "jetstream"

// ErrRunning is returned by Run when the subscriber is already running.
var ErrRunning = errors.New("jetstream: Run called while the subscriber is already running")

// ErrConnClosed is returned by Run when the NATS connection is closed: it
// can never reconnect, so Run cannot keep its promise.
var ErrConnClosed = errors.New("jetstream: the NATS connection is closed")

// Subject indexes.
const (
	subjAgent = iota
	subjGlobal
	numSubjects
)

// Subscriber keeps a controlstore.Store in step with the bus: it reads this
// agent's subject and the global one from StreamName, one ordered consumer
// each, applies every valid halt through its controlstore.Source (kind
// SourceBus), resumes from where it left off after any interruption, and
// says truthfully when halts may have been lost. Create it with
// NewSubscriber and call Run.
type Subscriber struct {
	nc       *nats.Conn
	js       jsapi.JetStream
	store    *controlstore.Store
	agent    controlstore.Agent
	src      *controlstore.Source
	opts     options
	log      *slog.Logger
	metrics  *metrics
	subjects [numSubjects]string

	running   atomic.Bool
	ready     chan struct{}
	readyOnce sync.Once
	applied   atomic.Uint64

	// mu guards what follows. Lock order: mu, then the store's own lock
	// (through src); the store never calls back.
	mu      sync.Mutex
	status  Status // State, Since, Attempts, LastError*, NextAttempt
	logKey  State
	pos     [numSubjects]position
	dropped map[string]uint64
	limits  ratelog.Limiter // drop logs by reason, under mu
	loss    *Loss
	losses  uint64
	live    bool
	// The stream instance positions refer to, and what is known of it.
	streamCreated time.Time
	streamKnown   bool
	lastInfoAt    time.Time // server time of the last stream info
	endedLive     bool      // the last session of consumers ended while live

	onApply func(subject string, seq uint64, h Halt) // test hook, set before Run
}

// position is what the subscriber knows of one subject. Under mu.
type position struct {
	// known: seq is meaningful. Every message of the subject with a stream
	// sequence <= seq that the subscriber means to apply has been consumed.
	known bool
	seq   uint64
	last  uint64 // stream sequence of the last message consumed
	// caughtUp: the current consumer has delivered what was pending for
	// it at creation.
	caughtUp bool
}

// NewSubscriber returns a subscriber that keeps store up to date from the
// bus reached through nc (use Connect to build it with the right
// settings), for the agent store.Agent(). It registers its source with the
// store at once. It panics when nc or store is nil, and returns an error
// when an option is out of range.
func NewSubscriber(nc *nats.Conn, store *controlstore.Store, opts ...Option) (*Subscriber, error) {
	if nc == nil {
		panic("jetstream: NewSubscriber needs a non-nil *nats.Conn")
	}
	if store == nil {
		panic("jetstream: NewSubscriber needs a non-nil *controlstore.Store")
	}
	o := defaultOptions()
	for _, opt := range opts {
		if opt != nil {
			opt(&o)
		}
	}
	if err := o.err(); err != nil {
		return nil, err
	}
	js, err := jsapi.New(nc)
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	var srcOpts []controlstore.SourceOption
	if o.failClosed {
		srcOpts = append(srcOpts, controlstore.FailClosedAfter(o.failClosedAfter))
	}
	a := store.Agent()
	s := &Subscriber{
		nc:      nc,
		js:      js,
		store:   store,
		agent:   a,
		src:     store.AddSource(SourceName, controlstore.SourceBus, srcOpts...),
		opts:    o,
		log:     o.logger.With(slog.String("component", "opcontrol/jetstream"), slog.String("agent_id", a.AgentID)),
		metrics: newMetrics(o.meterProvider),
		ready:   make(chan struct{}),
		dropped: make(map[string]uint64),
	}
	s.subjects[subjAgent] = Subject(a)
	s.subjects[subjGlobal] = GlobalSubject
	s.status.State = Idle
	return s, nil
}

// Subjects returns the two subjects the subscriber reads: this agent's and
// GlobalSubject.
func (s *Subscriber) Subjects() (agent, global string) {
	return s.subjects[subjAgent], s.subjects[subjGlobal]
}

// Ready returns a channel closed the first time the subscriber is live:
// both consumers caught up, so every halt published from then on reaches
// the store as it arrives.
func (s *Subscriber) Ready() <-chan struct{} { return s.ready }

// Status returns a snapshot of the subscriber's health.
func (s *Subscriber) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.status
	st.Applied = s.applied.Load()
	st.Dropped = make(map[string]uint64, len(s.dropped))
	for k, v := range s.dropped {
		st.Dropped[k] = v
	}
	if s.loss != nil {
		l := *s.loss
		l.Subjects = append([]string(nil), l.Subjects...)
		st.Loss = &l
	}
	st.Losses = s.losses
	st.Agent = s.subjectStatusLocked(subjAgent)
	st.Global = s.subjectStatusLocked(subjGlobal)
	return st
}

func (s *Subscriber) subjectStatusLocked(i int) SubjectStatus {
	p := s.pos[i]
	return SubjectStatus{Subject: s.subjects[i], LastSequence: p.last, Position: p.seq, PositionKnown: p.known, CaughtUp: p.caughtUp}
}

// AcknowledgeLoss records that an operator has seen the reported loss: it
// clears Status.Loss, ends the Lost state, and releases the store if
// WithFailClosedOnLoss held it. It reports whether there was a loss to
// acknowledge. A loss detected later is reported afresh.
func (s *Subscriber) AcknowledgeLoss() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.loss == nil {
		return false
	}
	l := s.loss
	s.loss = nil
	if s.status.State == Lost {
		s.setStateLocked(Live, time.Now())
	}
	if s.opts.holdOnLoss {
		s.src.ReleaseFailClosed()
	}
	s.log.LogAttrs(context.Background(), slog.LevelInfo, "op-control bus loss acknowledged",
		slog.Any("subjects", l.Subjects), slog.Time("detected_at", l.DetectedAt))
	return true
}

// run is the state of one call of Run.
type run struct {
	start       time.Time // local, with its monotonic reading
	serverStart time.Time // Run's start on the server's clock; zero until known
	events      chan nats.Status
}

// Run reads the bus until ctx ends, then returns nil within moments,
// leaving no goroutine behind. It returns ErrRunning at once if Run is
// already running, and ErrConnClosed if the connection is closed (it can
// never reconnect). After it returns it may be called again: the
// positions are kept, so a later Run resumes where this one stopped.
//
// Run waits for the connection (nats.go reconnects it), creates the two
// consumers from the subscriber's positions, reports live once both have
// caught up, and starts over, from the positions, whenever the link, a
// consumer or the stream is lost. Between failed attempts it backs off.
func (s *Subscriber) Run(ctx context.Context) error {
	if !s.running.CompareAndSwap(false, true) {
		return ErrRunning
	}
	defer s.running.Store(false)

	r := &run{start: time.Now()}
	r.events = s.nc.StatusChanged(nats.CONNECTED, nats.RECONNECTING, nats.DISCONNECTED, nats.CLOSED)
	defer s.nc.RemoveStatusListener(r.events)

	s.mu.Lock()
	s.status.Attempts, s.status.NextAttempt = 0, time.Time{}
	s.setStateLocked(Connecting, r.start)
	s.logKey = Idle
	s.mu.Unlock()
	s.src.Start()
	defer func() {
		s.src.Stop()
		s.mu.Lock()
		s.setStateLocked(Idle, time.Now())
		s.status.NextAttempt = time.Time{}
		s.mu.Unlock()
	}()

	b := s.opts.newBackOff()
	b.Reset()
	poll := time.NewTicker(time.Second)
	defer poll.Stop()
	for {
		if ctx.Err() != nil {
			return nil
		}
		if s.nc.IsClosed() {
			return ErrConnClosed
		}
		if !s.nc.IsConnected() {
			s.awaitConnection()
			select {
			case <-ctx.Done():
				return nil
			case <-r.events:
			case <-poll.C:
			}
			continue
		}
		out := s.session(ctx, r)
		if ctx.Err() != nil {
			return nil
		}
		if out.liveFor >= s.opts.stableAfter {
			b.Reset()
		}
		if out.disconnected {
			continue // the loop waits for the link; nats.go paces reconnects
		}
		state := classify(s.nc, out.err)
		wait := retry.Next(b, s.opts.slowWait)
		if state == Unauthorized || state == Misconfigured {
			wait = max(wait, retry.Slow(s.opts.slowWait))
		}
		s.failed(state, out.err, wait)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

// awaitConnection records that the link is down, and why if the server
// refused the credentials.
func (s *Subscriber) awaitConnection() {
	state := Connecting
	err := s.nc.LastError()
	if isAuthError(err) {
		state = Unauthorized
	}
	s.mu.Lock()
	changed := s.status.State != state
	s.setStateLocked(state, time.Now())
	if err != nil {
		s.status.LastError, s.status.LastErrorAt = err, time.Now()
	}
	s.mu.Unlock()
	if changed && state == Unauthorized {
		s.log.LogAttrs(context.Background(), slog.LevelError, "op-control bus refused the credentials",
			slog.String("error", err.Error()),
			slog.String("hint", "check the creds file or nkey seed, and the user's account on the server"))
	}
}

func isAuthError(err error) bool {
	return errors.Is(err, nats.ErrAuthorization) || errors.Is(err, nats.ErrAuthExpired) ||
		errors.Is(err, nats.ErrAuthRevoked) || errors.Is(err, nats.ErrAccountAuthExpired)
}

// classify maps the error that ended an attempt to the state to wait in.
func classify(nc *nats.Conn, err error) State {
	switch {
	case err == nil:
		return Backoff
	case errors.Is(err, jsapi.ErrStreamNotFound),
		errors.Is(err, jsapi.ErrJetStreamNotEnabled),
		errors.Is(err, jsapi.ErrJetStreamNotEnabledForAccount),
		errors.Is(err, nats.ErrNoResponders), errors.Is(err, jsapi.ErrNoStreamResponse):
		return Misconfigured
	case errors.Is(err, nats.ErrPermissionViolation), isAuthError(err):
		return Unauthorized
	}
	var apiErr *jsapi.APIError
	if errors.As(err, &apiErr) && apiErr.Code == 403 {
		return Unauthorized
	}
	return Backoff
}

// hint says what to fix for a state.
func hint(state State, err error) string {
	switch state {
	case Unauthorized:
		return "the agent's NATS user needs the permissions listed in the jetstream package documentation"
	case Misconfigured:
		if errors.Is(err, jsapi.ErrStreamNotFound) {
			return "stream " + StreamName + " does not exist: the gateway creates it when its bus is configured; the subscriber never does"
		}
		return "JetStream is not enabled for this account"
	}
	return ""
}

func (s *Subscriber) setStateLocked(st State, now time.Time) {
	if s.status.State != st {
		s.status.State, s.status.Since = st, now
	}
}

// failed records a failed attempt and logs it once per change of state.
func (s *Subscriber) failed(state State, err error, wait time.Duration) {
	now := time.Now()
	s.mu.Lock()
	s.setStateLocked(state, now)
	if err != nil {
		s.status.LastError, s.status.LastErrorAt = err, now
	}
	s.status.NextAttempt = time.Time{}
	if wait > 0 {
		s.status.NextAttempt = now.Add(wait)
	}
	changed := s.logKey != state
	s.logKey = state
	attempts := s.status.Attempts
	s.mu.Unlock()
	if err == nil {
		return
	}
	level := slog.LevelDebug
	if changed {
		level = slog.LevelWarn
		if state == Unauthorized || state == Misconfigured {
			level = slog.LevelError
		}
	}
	attrs := []slog.Attr{
		slog.String("state", state.String()),
		slog.Int("attempts", attempts),
		slog.Duration("retry_in", wait),
		slog.String("error", err.Error()),
	}
	if h := hint(state, err); h != "" {
		attrs = append(attrs, slog.String("hint", h))
	}
	s.log.LogAttrs(context.Background(), level, "op-control bus not live", attrs...)
}

// permissionError returns the connection's last error, joined to err, if
// it is a permission violation whose text holds one of about (subjects):
// the server reports those asynchronously, and a denied request simply
// gets no answer. Otherwise it returns err.
func permissionError(nc *nats.Conn, err error, about ...string) error {
	last := nc.LastError()
	if !errors.Is(last, nats.ErrPermissionViolation) {
		return err
	}
	for _, a := range about {
		if strings.Contains(last.Error(), a) {
			if err == nil {
				return last
			}
			return fmt.Errorf("%w (%w)", last, err)
		}
	}
	return err
}

// replyInbox is what a refused subscription to the connection's reply
// inbox looks like in a permission violation: without it no API request
// is ever answered.
func replyInbox(nc *nats.Conn) string {
	prefix := nc.Opts.InboxPrefix
	if prefix == "" {
		prefix = nats.InboxPrefix[:len(nats.InboxPrefix)-1]
	}
	return `Subscription to "` + prefix + "."
}
