package jetstream

import (
	"context"
	"sync"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/internal/telemetry"
)

// meterName is the instrumentation scope of the subscriber's metrics.
const meterName = "github.com/opcontrol/opcontrol/jetstream"

// Reasons a session of consumers ended, the "reason" of
// opcontrol.jetstream.resets.
const (
	resetDisconnect    = "disconnect"
	resetHeartbeat     = "heartbeat"
	resetGap           = "gap"
	resetConsumerGone  = "consumer_gone"
	resetStreamChanged = "stream_changed"
	resetError         = "error"
)

// metrics holds the instruments and precomputed attribute sets, so that
// recording a message allocates nothing. No attribute carries an op id.
type metrics struct {
	up      metric.Int64UpDownCounter
	resets  metric.Int64Counter
	applied metric.Int64Counter
	dropped metric.Int64Counter
	losses  metric.Int64Counter

	bySignal [4]metric.MeasurementOption // unspecified (unused), pause, resume, terminate

	mu       sync.Mutex
	byReason map[string]metric.MeasurementOption
}

func newMetrics(mp metric.MeterProvider) *metrics {
	m := telemetry.NewMeter(mp, meterName)
	defer func() { _ = m.Done() }()
	ms := &metrics{
		up: m.Int64UpDownCounter("opcontrol.jetstream.up",
			metric.WithDescription("Bus subscribers currently live (both consumers caught up)."),
			metric.WithUnit("{subscriber}")),
		resets: m.Int64Counter("opcontrol.jetstream.resets",
			metric.WithDescription("Consumer sessions ended, by reason; a new one resumes from the last position."),
			metric.WithUnit("{session}")),
		applied: m.Int64Counter("opcontrol.jetstream.signals.applied",
			metric.WithDescription("Bus halts handed to the store, by signal."),
			metric.WithUnit("{signal}")),
		dropped: m.Int64Counter("opcontrol.jetstream.signals.dropped",
			metric.WithDescription("Bus messages not applied, by reason."),
			metric.WithUnit("{message}")),
		losses: m.Int64Counter("opcontrol.jetstream.losses",
			metric.WithDescription("Times the stream had expired messages the subscriber had not read."),
			metric.WithUnit("{loss}")),
		byReason: make(map[string]metric.MeasurementOption),
	}
	for i, name := range [...]string{"unspecified", "pause", "resume", "terminate"} {
		ms.bySignal[i] = metric.WithAttributeSet(attribute.NewSet(attribute.String("signal", name)))
	}
	return ms
}

func (m *metrics) setUp(up bool) {
	d := int64(-1)
	if up {
		d = 1
	}
	m.up.Add(context.Background(), d)
}

func (m *metrics) reset(reason string) { m.resets.Add(context.Background(), 1, m.reason(reason)) }

func (m *metrics) apply(sig controlstore.Signal) {
	if sig >= controlstore.SignalPause && sig <= controlstore.SignalTerminate {
		m.applied.Add(context.Background(), 1, m.bySignal[sig])
	}
}

func (m *metrics) drop(reason string) { m.dropped.Add(context.Background(), 1, m.reason(reason)) }

func (m *metrics) loss() { m.losses.Add(context.Background(), 1) }

// reason returns the attribute set of a reason, made once. Reasons are a
// small fixed set (this package's and controlstore's), so the map stays
// small.
func (m *metrics) reason(r string) metric.MeasurementOption {
	m.mu.Lock()
	defer m.mu.Unlock()
	opt, ok := m.byReason[r]
	if !ok {
		opt = metric.WithAttributeSet(attribute.NewSet(attribute.String("reason", r)))
		m.byReason[r] = opt
	}
	return opt
}
