package jetstream

import (
	"context"
	"errors"
	"log/slog"
	"sync"

	"github.com/nats-io/nats.go"
	jsapi "github.com/nats-io/nats.go/jetstream"

	"github.com/opcontrol/opcontrol"
	"github.com/opcontrol/opcontrol/controlstore"
)

// BusSource plugs a Subscriber into the one-call kill switch
// (opcontrol.New, opcontrol.FromEnv), beside its gateway stream:
//
//	cfg, err := jetstream.FromEnv()
//	switch {
//	case err == nil:
//		bus = jetstream.NewBusSource(cfg, jetstream.WithFailClosedOnLoss())
//		opts = append(opts, opcontrol.WithSource(bus.Factory))
//	case !errors.Is(err, jetstream.ErrNotConfigured):
//		return err
//	}
//	k, err := opcontrol.FromEnv(ctx, opts...)
//	...
//	bus.Subscriber().AcknowledgeLoss() // an operator's recovery after a loss
//
// Its methods are safe for concurrent use.
type BusSource struct {
	cfg  Config
	opts []Option

	mu  sync.Mutex
	sub *Subscriber
}

// NewBusSource returns a source that, when the kill switch is built,
// connects to the bus with cfg (see Connect; logging to the kill switch's
// logger unless cfg.Logger is set) and runs a Subscriber with opts on the
// kill switch's store. The connection belongs to the source and is closed
// when its Run returns. Options given here win over the kill switch's
// logger.
func NewBusSource(cfg Config, opts ...Option) *BusSource {
	return &BusSource{cfg: cfg, opts: opts}
}

// Factory is an opcontrol.SourceFactory: pass b.Factory to
// opcontrol.WithSource. It builds one subscriber; a second call is an
// error (one BusSource per kill switch).
func (b *BusSource) Factory(store *controlstore.Store, log *slog.Logger) (opcontrol.Source, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.sub != nil {
		return nil, errors.New("jetstream: BusSource.Factory called twice; make one BusSource per kill switch")
	}
	cfg := b.cfg
	if cfg.Logger == nil {
		cfg.Logger = log
	}
	nc, err := Connect(cfg)
	if err != nil {
		return nil, err
	}
	sub, err := NewSubscriber(nc, store, append([]Option{WithLogger(log)}, b.opts...)...)
	if err != nil {
		nc.Close()
		return nil, err
	}
	b.sub = sub
	return &ownedSource{Subscriber: sub, nc: nc}, nil
}

// SourceFromEnv returns the bus source configured from the environment,
// for the one-call kill switch:
//
//	k, err := opcontrol.FromEnv(ctx, opcontrol.WithSource(jetstream.SourceFromEnv()))
//
// It reads FromEnv's variables when the kill switch is built. With
// AA_OPCONTROL_NATS_URL unset it adds nothing; a malformed variable is an
// error from opcontrol.FromEnv that names it. To reach AcknowledgeLoss
// later, build the source with NewBusSource instead and keep it.
func SourceFromEnv(opts ...Option) opcontrol.SourceFactory {
	return func(store *controlstore.Store, log *slog.Logger) (opcontrol.Source, error) {
		cfg, err := FromEnv()
		if errors.Is(err, ErrNotConfigured) {
			return nil, nil //nolint:nilnil // no bus configured: the documented "add nothing"
		}
		if err != nil {
			return nil, err
		}
		return NewBusSource(cfg, opts...).Factory(store, log)
	}
}

// Subscriber returns the subscriber Factory built (for Status,
// AcknowledgeLoss, Ready), or nil before the kill switch was built.
func (b *BusSource) Subscriber() *Subscriber {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.sub
}

// ownedSource is a Subscriber that owns its connection.
type ownedSource struct {
	*Subscriber
	nc *nats.Conn
}

// Run runs the subscriber, then closes the connection.
func (o *ownedSource) Run(ctx context.Context) error {
	defer o.nc.Close()
	return o.Subscriber.Run(ctx)
}

// Health reports the subscriber for the kill switch's readiness probes
// (opcontrol.Source): Live while both consumers are caught up (also in
// state Lost: what is published now is delivered; the loss is reported by
// State "lost" and, with WithFailClosedOnLoss, by the store failing
// closed), and while not live the class of the last failure, never its
// message.
func (s *Subscriber) Health() opcontrol.SourceHealth {
	st := s.Status()
	h := opcontrol.SourceHealth{Name: SourceName, State: st.State.String(), Live: st.State == Live || st.State == Lost, Since: st.Since}
	if !h.Live && st.LastError != nil {
		h.LastError = errorClass(st.LastError)
	}
	return h
}

// errorClass names the kind of a failure in one word.
func errorClass(err error) string {
	switch {
	case errors.Is(err, errNoHeartbeat):
		return "heartbeat"
	case errors.Is(err, errGap):
		return "gap"
	case errors.Is(err, errConsumerGone):
		return "consumer_gone"
	case errors.Is(err, errStreamReplaced):
		return "stream_replaced"
	case errors.Is(err, errDisconnected):
		return "disconnected"
	case errors.Is(err, jsapi.ErrStreamNotFound):
		return "stream_not_found"
	case errors.Is(err, nats.ErrPermissionViolation):
		return "permission_denied"
	case isAuthError(err):
		return "unauthorized"
	case errors.Is(err, jsapi.ErrJetStreamNotEnabled), errors.Is(err, jsapi.ErrJetStreamNotEnabledForAccount),
		errors.Is(err, nats.ErrNoResponders), errors.Is(err, jsapi.ErrNoStreamResponse):
		return "jetstream_unavailable"
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout):
		return "timeout"
	}
	return "error"
}
