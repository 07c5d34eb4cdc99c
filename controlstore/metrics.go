package controlstore

import (
	"context"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/opcontrol/opcontrol/internal/telemetry"
)

// meterName is the instrumentation scope of the store's metrics.
const meterName = "github.com/opcontrol/opcontrol/controlstore"

// metrics holds the store's instruments and their precomputed attribute
// sets, so that recording allocates nothing. Op ids never become attributes:
// they are unbounded.
type metrics struct {
	entries   metric.Int64UpDownCounter
	evictions metric.Int64Counter
	applied   metric.Int64Counter
	rejected  metric.Int64Counter

	bySignal [SignalTerminate + 1]metric.MeasurementOption
	byState  [Terminated + 1]metric.MeasurementOption
	byReason map[RejectReason]metric.MeasurementOption
}

func newMetrics(mp metric.MeterProvider) metrics {
	meter := telemetry.NewMeter(mp, meterName)
	defer func() { _ = meter.Done() }()
	m := metrics{
		entries: meter.Int64UpDownCounter("opcontrol.store.entries",
			metric.WithDescription("Per-op entries held by the op-control store."),
			metric.WithUnit("{entry}")),
		evictions: meter.Int64Counter("opcontrol.store.evictions",
			metric.WithDescription("Entries evicted to stay within the entry cap, by the evicted entry's state."),
			metric.WithUnit("{entry}")),
		applied: meter.Int64Counter("opcontrol.store.signals.applied",
			metric.WithDescription("Signals applied to the op-control store, by signal."),
			metric.WithUnit("{signal}")),
		rejected: meter.Int64Counter("opcontrol.store.signals.rejected",
			metric.WithDescription("Signals the op-control store refused, by reason."),
			metric.WithUnit("{signal}")),
	}
	for _, sig := range []Signal{SignalPause, SignalResume, SignalTerminate} {
		m.bySignal[sig] = metric.WithAttributeSet(attribute.NewSet(attribute.String("signal", sig.String())))
	}
	for _, st := range []State{Paused, Terminated} {
		m.byState[st] = metric.WithAttributeSet(attribute.NewSet(attribute.String("state", st.String())))
	}
	m.byReason = make(map[RejectReason]metric.MeasurementOption)
	for _, r := range []RejectReason{ReasonUnspecifiedSignal, ReasonUnknownSignal, ReasonEmptyOpID, ReasonOpIDTooLong, ReasonForeignAgent} {
		m.byReason[r] = metric.WithAttributeSet(attribute.NewSet(attribute.String("reason", string(r))))
	}
	return m
}

func (m *metrics) apply(sig Signal) {
	m.applied.Add(context.Background(), 1, m.bySignal[sig])
}

func (m *metrics) reject(r RejectReason) {
	m.rejected.Add(context.Background(), 1, m.byReason[r])
}

func (m *metrics) evict(st State) {
	m.evictions.Add(context.Background(), 1, m.byState[st])
}
