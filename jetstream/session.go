package jetstream

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	jsapi "github.com/nats-io/nats.go/jetstream"

	"github.com/opcontrol/opcontrol/controlstore"
)

// Errors that end a session of consumers (wrapped with details).
var (
	errNoHeartbeat    = errors.New("jetstream: a consumer sent neither a message nor a heartbeat in time")
	errGap            = errors.New("jetstream: a consumer skipped a delivery")
	errConsumerGone   = errors.New("jetstream: a consumer was deleted")
	errStreamReplaced = errors.New("jetstream: the stream was deleted and created again")
	errDisconnected   = errors.New("jetstream: the connection to the bus was lost")
)

// outcome is how one session ended.
type outcome struct {
	err          error
	liveFor      time.Duration // 0: never live
	disconnected bool          // the link dropped: wait for it, no backoff
}

// end is what a consumer goroutine reports when it stops on its own.
type end struct {
	reason string
	err    error
}

// consumer is one ordered consumer: a push consumer with no acks, one
// filter subject, delivering to an inbox the subscriber reads in order.
type consumer struct {
	s       *Subscriber
	i       int
	subject string
	name    string
	cons    jsapi.PushConsumer
	sub     *nats.Subscription
	pending uint64 // messages pending for it at creation
	created uint64 // the stream's last sequence just before creation
	done    chan struct{}
	started bool // loop runs (set by session before the goroutine starts)

	// Under s.mu.
	dseq       uint64      // consumer sequence of the last message consumed
	checkpoint *checkpoint // confirmed position waiting for dseq to reach it
}

// checkpoint: once the consumer has consumed delivery dseq, every message
// of its subject up to stream sequence seq has been consumed.
type checkpoint struct{ dseq, seq uint64 }

// session creates both consumers from the positions and runs them until
// the link, a consumer or the stream is lost, or ctx ends.
func (s *Subscriber) session(ctx context.Context, r *run) (out outcome) {
	s.beginAttempt()
	reconnects := s.nc.Stats().Reconnects
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()

	info, err := s.streamInfo(sctx, r)
	if err != nil {
		return outcome{err: err}
	}
	cfgs := s.plan(info, r)

	var cs []*consumer
	ends := make(chan end, numSubjects)
	caught := make(chan int, numSubjects)
	var liveAt time.Time
	defer func() {
		if !liveAt.IsZero() {
			out.liveFor = max(time.Since(liveAt), 1)
		}
		s.stopSession(cs, !liveAt.IsZero(), ctx.Err() != nil, out)
	}()
	for i := range numSubjects {
		c, err := s.startConsumer(sctx, i, cfgs[i], info.State.LastSeq)
		if err != nil {
			return outcome{err: err}
		}
		cs = append(cs, c)
	}
	for _, c := range cs {
		c.started = true
		go c.loop(ends, caught)
	}

	check := time.NewTicker(s.opts.checkpoint)
	defer check.Stop()
	nCaught := 0
	for {
		select {
		case <-ctx.Done():
			return outcome{}
		case <-r.events:
			if !s.nc.IsConnected() || s.nc.Stats().Reconnects != reconnects {
				s.metrics.reset(resetDisconnect)
				return outcome{err: errDisconnected, disconnected: true}
			}
		case e := <-ends:
			s.metrics.reset(e.reason)
			return outcome{err: e.err}
		case <-caught:
			if nCaught++; nCaught == numSubjects {
				liveAt = s.goLive()
			}
		case <-check.C:
			if liveAt.IsZero() {
				continue
			}
			if reason, err := s.checkpoint(sctx, r, cs); err != nil {
				s.metrics.reset(reason)
				return outcome{err: err}
			}
		}
	}
}

// stopSession stops the consumers and waits for their goroutines, so that
// nothing is consumed after it returns and the positions are final.
func (s *Subscriber) stopSession(cs []*consumer, wasLive, stopping bool, out outcome) {
	if wasLive {
		s.goDown(out.err, stopping)
	}
	for _, c := range cs {
		_ = c.sub.Unsubscribe()
	}
	for _, c := range cs {
		if c.started {
			<-c.done
		}
	}
	s.mu.Lock()
	for i := range s.pos {
		s.pos[i].caughtUp = false
	}
	if len(cs) == numSubjects {
		s.endedLive = wasLive
	}
	s.mu.Unlock()
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

// streamInfo reads the stream's state (never creating it), and on the
// first success of a Run learns where Run's start falls on the server's
// clock.
func (s *Subscriber) streamInfo(ctx context.Context, r *run) (*jsapi.StreamInfo, error) {
	actx, cancel := context.WithTimeout(ctx, s.opts.apiTimeout)
	defer cancel()
	st, err := s.js.Stream(actx, StreamName)
	if err != nil {
		return nil, permissionError(s.nc, fmt.Errorf("jetstream: stream info: %w", err),
			"$JS.API.STREAM.INFO."+StreamName, replyInbox(s.nc))
	}
	received := time.Now()
	info := st.CachedInfo()
	if r.serverStart.IsZero() {
		if info.TimeStamp.IsZero() {
			// A server too old to stamp its answers: fall back on the
			// local clock.
			r.serverStart = r.start
			s.log.LogAttrs(context.Background(), slog.LevelWarn,
				"op-control bus: the server does not report its time; halts published after Run began are found by the local clock, which must then agree with the server's")
		} else {
			// The server stamped the answer somewhere between sending and
			// receiving; taking the latest moment puts Run's start at most
			// one round trip early, never late: a halt published just
			// before Run may be applied, none after it is missed.
			r.serverStart = info.TimeStamp.Add(-received.Sub(r.start))
		}
	}
	return info, nil
}

// plan checks the stream against the positions, reports a loss if
// messages the subscriber had not read are gone, and returns the two
// consumers' start positions.
func (s *Subscriber) plan(info *jsapi.StreamInfo, r *run) [numSubjects]jsapi.ConsumerConfig {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	first, last := info.State.FirstSeq, info.State.LastSeq
	replaced := s.streamKnown && !info.Created.Equal(s.streamCreated)
	for i := range s.pos {
		if s.pos[i].known && last < s.pos[i].seq {
			replaced = true // sequences went backwards: not the same stream
		}
	}
	var since time.Time // start by time from here, when no position is known
	if replaced {
		since = s.lastInfoAt
		s.log.LogAttrs(context.Background(), slog.LevelError,
			"op-control bus: stream "+StreamName+" was deleted and created again; positions start over from the time it was last seen",
			slog.Time("last_seen", s.lastInfoAt), slog.Time("created", info.Created))
		for i := range s.pos {
			s.pos[i] = position{}
		}
		if !s.endedLive {
			s.reportLossLocked(Loss{Subjects: []string{StreamSubjects}, Reason: "stream replaced", DetectedAt: now})
		}
	}
	s.streamCreated, s.streamKnown, s.lastInfoAt = info.Created, true, info.TimeStamp

	var cfgs [numSubjects]jsapi.ConsumerConfig
	var lost *Loss
	for i := range cfgs {
		c := &cfgs[i]
		p := s.pos[i]
		switch {
		case p.known:
			if first > p.seq+1 {
				if lost == nil {
					lost = &Loss{After: p.seq, FirstSequence: first, Reason: "retention expired", DetectedAt: now}
				}
				lost.Subjects = append(lost.Subjects, s.subjects[i])
				lost.After = min(lost.After, p.seq)
			}
			c.DeliverPolicy, c.OptStartSeq = jsapi.DeliverByStartSequencePolicy, p.seq+1
		case replaced:
			if since.IsZero() {
				c.DeliverPolicy = jsapi.DeliverAllPolicy
			} else {
				c.DeliverPolicy, c.OptStartTime = jsapi.DeliverByStartTimePolicy, &since
			}
		case s.opts.replay:
			c.DeliverPolicy = jsapi.DeliverAllPolicy
		default:
			start := r.serverStart
			c.DeliverPolicy, c.OptStartTime = jsapi.DeliverByStartTimePolicy, &start
		}
	}
	if lost != nil {
		s.reportLossLocked(*lost)
	}
	return cfgs
}

// reportLossLocked records a loss: counted, logged at error level once per
// loss, reported in Status until acknowledged, and with
// WithFailClosedOnLoss the store is held failing closed. Under mu.
func (s *Subscriber) reportLossLocked(l Loss) {
	s.losses++
	s.metrics.loss()
	if s.loss == nil {
		s.loss = &l
	}
	if s.live {
		s.setStateLocked(Lost, l.DetectedAt)
	}
	attrs := []slog.Attr{
		slog.Any("subjects", l.Subjects), slog.String("reason", l.Reason),
		slog.Uint64("position", l.After), slog.Uint64("stream_first_sequence", l.FirstSequence),
		slog.Bool("fail_closed", s.opts.holdOnLoss),
		slog.String("hint", "halts published while this agent was away may not have been applied; check the operator's recent halts, then call AcknowledgeLoss"),
	}
	s.log.LogAttrs(context.Background(), slog.LevelError,
		"op-control bus: messages expired before this agent read them; halts may have been lost", attrs...)
	if s.opts.holdOnLoss {
		s.src.HoldFailClosed("jetstream: halts may have been lost (" + l.Reason + "); waiting for AcknowledgeLoss")
	}
}

// startConsumer subscribes to a fresh inbox, then creates the consumer
// delivering to it (so that nothing is delivered before anyone listens).
func (s *Subscriber) startConsumer(ctx context.Context, i int, cfg jsapi.ConsumerConfig, lastSeq uint64) (*consumer, error) {
	inbox := s.nc.NewInbox()
	sub, err := s.nc.SubscribeSync(inbox)
	if err != nil {
		return nil, fmt.Errorf("jetstream: subscribe: %w", err)
	}
	name, err := consumerName()
	if err != nil {
		_ = sub.Unsubscribe()
		return nil, err
	}
	cfg.Name = name
	cfg.DeliverSubject = inbox
	cfg.FilterSubject = s.subjects[i]
	cfg.AckPolicy = jsapi.AckNonePolicy
	cfg.IdleHeartbeat = s.opts.heartbeat
	cfg.InactiveThreshold = s.opts.inactive
	cfg.MemoryStorage = true
	cfg.Replicas = 1
	actx, cancel := context.WithTimeout(ctx, s.opts.apiTimeout)
	defer cancel()
	pc, err := s.js.CreatePushConsumer(actx, StreamName, cfg)
	// The server handled the subscription before the request: a refusal
	// of either has been reported by now.
	if perr := permissionError(s.nc, nil, `"`+inbox+`"`); perr != nil {
		_ = sub.Unsubscribe()
		return nil, fmt.Errorf("jetstream: subscribe to the delivery inbox: %w", perr)
	}
	if err != nil {
		_ = sub.Unsubscribe()
		return nil, permissionError(s.nc, fmt.Errorf("jetstream: create consumer on %s: %w", s.subjects[i], err),
			"$JS.API.CONSUMER.CREATE."+StreamName, replyInbox(s.nc))
	}
	ci := pc.CachedInfo()
	return &consumer{
		s: s, i: i, subject: s.subjects[i], name: name, cons: pc, sub: sub,
		pending: ci.NumPending, created: lastSeq, done: make(chan struct{}),
	}, nil
}

func consumerName() (string, error) {
	var b [10]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("jetstream: consumer name: %w", err)
	}
	return "opcontrol-" + hex.EncodeToString(b[:]), nil
}

// loop consumes deliveries in order until the subscription ends or the
// consumer is found lost; then it reports why on ends (unless the session
// is stopping) and closes c.done.
func (c *consumer) loop(ends chan<- end, caught chan<- int) {
	defer close(c.done)
	s := c.s
	if c.pending == 0 {
		c.caughtUp(caught)
	}
	timeout := 2 * s.opts.heartbeat
	for {
		msg, err := c.sub.NextMsg(timeout)
		if err != nil {
			if errors.Is(err, nats.ErrTimeout) {
				ends <- end{resetHeartbeat, fmt.Errorf("%w: %s, none for %v", errNoHeartbeat, c.subject, timeout)}
			} else if c.sub.IsValid() {
				ends <- end{resetError, fmt.Errorf("jetstream: %s: %w", c.subject, err)}
			}
			return
		}
		if status := msg.Header.Get("Status"); status != "" {
			if e, stop := c.control(msg, status); stop {
				ends <- e
				return
			}
			continue
		}
		meta, err := msg.Metadata()
		if err != nil {
			ends <- end{resetError, fmt.Errorf("jetstream: %s: a delivery without JetStream metadata: %w", c.subject, err)}
			return
		}
		s.mu.Lock()
		want := c.dseq + 1
		s.mu.Unlock()
		if meta.Sequence.Consumer != want || meta.Consumer != c.name {
			ends <- end{resetGap, fmt.Errorf("%w: %s: delivery %d, want %d", errGap, c.subject, meta.Sequence.Consumer, want)}
			return
		}
		s.consume(c, msg, meta)
		if meta.Sequence.Consumer == c.pending {
			c.caughtUp(caught)
		}
	}
}

// control handles a status message: an idle heartbeat (which says how
// many deliveries the server made: more than consumed means some were
// lost on the way) or a consumer's end.
func (c *consumer) control(msg *nats.Msg, status string) (end, bool) {
	switch status {
	case "100":
		if v := msg.Header.Get("Nats-Last-Consumer"); v != "" {
			n, err := strconv.ParseUint(v, 10, 64)
			c.s.mu.Lock()
			got := c.dseq
			c.s.mu.Unlock()
			if err == nil && n > got {
				return end{resetGap, fmt.Errorf("%w: %s: the server delivered %d, %d consumed", errGap, c.subject, n, got)}, true
			}
		}
		if msg.Reply != "" {
			// A flow-control request (not enabled, but answering is
			// harmless and keeps delivery going).
			_ = msg.Respond(nil)
		}
		return end{}, false
	case "409":
		return end{resetConsumerGone, fmt.Errorf("%w: %s: %s", errConsumerGone, c.subject, msg.Header.Get("Description"))}, true
	}
	return end{}, false
}

// caughtUp records that the consumer has delivered everything pending at
// its creation: every message of the subject up to the stream's last
// sequence then has been consumed.
func (c *consumer) caughtUp(caught chan<- int) {
	s := c.s
	s.mu.Lock()
	p := &s.pos[c.i]
	p.known, p.seq, p.caughtUp = true, max(p.seq, c.created), true
	s.mu.Unlock()
	caught <- c.i
}

// consume validates one message and hands it to the store, then advances
// the subject's position. It never blocks: Apply is O(1).
func (s *Subscriber) consume(c *consumer, msg *nats.Msg, meta *nats.MsgMetadata) {
	seq := meta.Sequence.Stream
	s.mu.Lock()
	p := s.pos[c.i]
	s.mu.Unlock()
	switch {
	case p.known && seq <= p.seq:
		s.drop(string(DropDuplicate), c.subject, seq, nil)
	default:
		h, err := Validate(msg.Subject, msg.Data, &s.agent)
		if err != nil {
			var de *DropError
			reason := string(DropMalformed)
			if errors.As(err, &de) {
				reason = string(de.Reason)
			}
			s.drop(reason, c.subject, seq, err)
			break
		}
		if err := s.src.Apply(h.OpID, h.Signal); err != nil {
			reason := "rejected"
			var re *controlstore.RejectedError
			if errors.As(err, &re) {
				reason = string(re.Reason)
			}
			s.drop(reason, c.subject, seq, err)
			break
		}
		s.applied.Add(1)
		s.metrics.apply(h.Signal)
		if s.onApply != nil {
			s.onApply(c.subject, seq, h)
		}
	}
	s.mu.Lock()
	c.dseq = meta.Sequence.Consumer
	pp := &s.pos[c.i]
	pp.known, pp.seq, pp.last = true, max(pp.seq, seq), seq
	if cp := c.checkpoint; cp != nil && c.dseq >= cp.dseq {
		pp.seq, c.checkpoint = max(pp.seq, cp.seq), nil
	}
	s.mu.Unlock()
}

// drop counts a message not applied and logs it at a bounded rate.
func (s *Subscriber) drop(reason, subject string, seq uint64, err error) {
	s.metrics.drop(reason)
	s.mu.Lock()
	s.dropped[reason]++
	allow, suppressed := s.limits.Allow(reason, time.Now())
	s.mu.Unlock()
	if !allow {
		return
	}
	attrs := []slog.Attr{slog.String("reason", reason), slog.String("subject", subject), slog.Uint64("stream_sequence", seq)}
	if err != nil {
		attrs = append(attrs, slog.String("error", err.Error()))
	}
	if suppressed > 0 {
		attrs = append(attrs, slog.Uint64("suppressed_since_last", suppressed))
	}
	s.log.LogAttrs(context.Background(), slog.LevelWarn, "dropped an op-control bus message", attrs...)
}

// checkpoint confirms the positions of a live session on a stream that
// has grown past them, so that a quiet subject's position follows the
// stream and a later outage is not mistaken for a loss. It reads the
// stream's last sequence L, then each consumer's state: when nothing is
// pending for it, everything of its subject up to L has been delivered,
// and once the deliveries so far are consumed the position is L. A
// missing consumer or a replaced stream ends the session.
func (s *Subscriber) checkpoint(ctx context.Context, r *run, cs []*consumer) (string, error) {
	info, err := s.streamInfo(ctx, r)
	if err != nil {
		if errors.Is(err, jsapi.ErrStreamNotFound) {
			return resetStreamChanged, err
		}
		s.log.LogAttrs(context.Background(), slog.LevelDebug, "op-control bus checkpoint failed", slog.String("error", err.Error()))
		return "", nil
	}
	s.mu.Lock()
	replaced := !info.Created.Equal(s.streamCreated)
	if !replaced {
		s.lastInfoAt = info.TimeStamp
	}
	s.mu.Unlock()
	if replaced {
		return resetStreamChanged, errStreamReplaced
	}
	last := info.State.LastSeq
	for _, c := range cs {
		s.mu.Lock()
		behind := s.pos[c.i].seq < last
		s.mu.Unlock()
		if !behind {
			continue
		}
		actx, cancel := context.WithTimeout(ctx, s.opts.apiTimeout)
		ci, err := c.cons.Info(actx)
		cancel()
		if errors.Is(err, jsapi.ErrConsumerNotFound) {
			return resetConsumerGone, fmt.Errorf("%w: %s", errConsumerGone, c.subject)
		}
		if err != nil || ci.NumPending != 0 {
			continue
		}
		s.mu.Lock()
		if c.dseq >= ci.Delivered.Consumer {
			s.pos[c.i].seq = max(s.pos[c.i].seq, last)
		} else {
			c.checkpoint = &checkpoint{dseq: ci.Delivered.Consumer, seq: last}
		}
		s.mu.Unlock()
	}
	return "", nil
}

// goLive marks the subscriber live and returns when.
func (s *Subscriber) goLive() time.Time {
	now := time.Now()
	s.mu.Lock()
	attempts := s.status.Attempts
	s.live = true
	st := Live
	if s.loss != nil {
		st = Lost
	}
	s.setStateLocked(st, now)
	s.status.Attempts, s.status.NextAttempt = 0, time.Time{}
	s.logKey = Live
	agent, global := s.pos[subjAgent].seq, s.pos[subjGlobal].seq
	s.mu.Unlock()

	s.src.SetLive(true)
	s.metrics.setUp(true)
	s.readyOnce.Do(func() { close(s.ready) })
	s.log.LogAttrs(context.Background(), slog.LevelInfo, "op-control bus live",
		slog.Int("attempts", attempts), slog.Uint64("agent_position", agent), slog.Uint64("global_position", global))
	return now
}

// goDown marks the subscriber no longer live; stopping: because Run is
// returning, which is not worth a warning.
func (s *Subscriber) goDown(err error, stopping bool) {
	s.src.SetLive(false)
	s.metrics.setUp(false)
	now := time.Now()
	s.mu.Lock()
	s.live = false
	// Connecting until Run decides: Backoff (with NextAttempt) after an
	// error, or waiting for the link after a disconnect.
	s.setStateLocked(Connecting, now)
	if err != nil {
		s.status.LastError, s.status.LastErrorAt = err, now
	}
	s.mu.Unlock()
	if stopping {
		return
	}
	attrs := []slog.Attr{}
	if err != nil {
		attrs = append(attrs, slog.String("error", err.Error()))
	}
	s.log.LogAttrs(context.Background(), slog.LevelWarn,
		"op-control bus consumers lost; resuming from the last position (nothing published meanwhile is missed within the retention)", attrs...)
}
