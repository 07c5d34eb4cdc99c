package interceptor

import (
	"context"
	"runtime"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"

	"github.com/opcontrol/opcontrol/controlstore"
)

// meterName is the instrumentation scope of the interceptors' metrics.
const meterName = "github.com/opcontrol/opcontrol/interceptor"

// Metric names.
const (
	// MetricDecisions counts gate decisions by "outcome": allowed (ran at
	// once), held (ran after a hold, or the caller gave up while held),
	// denied (refused by a terminate) and unavailable (refused while op
	// control fails closed). One per call when it starts, plus one per
	// stream message that was held or refused.
	MetricDecisions = "opcontrol.interceptor.decisions"
	// MetricHoldDuration records how long calls and stream messages were
	// held, in seconds, by "result": resumed, terminated, unavailable,
	// abandoned (the caller's context ended).
	MetricHoldDuration = "opcontrol.interceptor.hold.duration"
	// MetricInFlightCancelled counts running calls cancelled by a terminate,
	// by "scope" (op, agent, global).
	MetricInFlightCancelled = "opcontrol.interceptor.inflight.cancelled"
)

type outcome uint8

const (
	outcomeAllowed outcome = iota
	outcomeHeld
	outcomeDenied
	outcomeUnavailable
	numOutcomes
)

var outcomeNames = [numOutcomes]string{"allowed", "held", "denied", "unavailable"}

type holdResult uint8

const (
	holdResumed holdResult = iota
	holdTerminated
	holdUnavailable
	holdAbandoned
	numHoldResults
)

var holdResultNames = [numHoldResults]string{"resumed", "terminated", "unavailable", "abandoned"}

// metrics holds the instruments and precomputed options, so that recording
// allocates nothing. Op ids never become attributes: they are unbounded.
//
// Decisions are counted in atomics and reported through an observable
// counter: a synchronous SDK counter costs 100-300 ns per Add, more than the
// rest of the gate, while an atomic add costs a few ns. Holds and
// cancellations are rare and use synchronous instruments.
type metrics struct {
	counts *decisionCounts

	holds     metric.Float64Histogram
	cancelled metric.Int64Counter

	byResult [numHoldResults][]metric.RecordOption
	byScope  [controlstore.ScopeGlobal + 1][]metric.AddOption
}

// decisionCounts holds one counter per outcome, each on its own cache line
// so that allowed calls never contend with the rarer outcomes. (Striping the
// allowed counter further would need a per-CPU index; the runtime's random
// source costs more than the contention it would save at RPC rates.)
type decisionCounts struct {
	n [numOutcomes]struct {
		atomic.Int64
		_ [56]byte
	}
}

func (c *decisionCounts) add(o outcome)       { c.n[o].Add(1) }
func (c *decisionCounts) sum(o outcome) int64 { return c.n[o].Load() }

// newMetrics creates the instruments and registers the callback that reports
// the decision counts. owner is the gate; when it becomes unreachable the
// callback is unregistered, so interceptors built and dropped repeatedly do
// not pile up callbacks in a long-lived meter provider. (Gates sharing a
// provider are summed by the SDK; a dropped gate's counts leave the sum,
// which a backend sees as a counter reset.)
func newMetrics(mp metric.MeterProvider, owner *gate) *metrics {
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	meter := mp.Meter(meterName)
	fallback := noop.Meter{}
	m := &metrics{counts: new(decisionCounts)}
	var err error
	if m.holds, err = meter.Float64Histogram(MetricHoldDuration,
		metric.WithDescription("Time calls were held by a paused op, by how the hold ended."),
		metric.WithUnit("s"),
		metric.WithExplicitBucketBoundaries(0.001, 0.01, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600)); err != nil {
		m.holds, _ = fallback.Float64Histogram("")
	}
	if m.cancelled, err = meter.Int64Counter(MetricInFlightCancelled,
		metric.WithDescription("Running calls cancelled because their op, agent or every agent was terminated, by scope."),
		metric.WithUnit("{call}")); err != nil {
		m.cancelled, _ = fallback.Int64Counter("")
	}
	for r := range numHoldResults {
		m.byResult[r] = []metric.RecordOption{metric.WithAttributeSet(attribute.NewSet(attribute.String("result", holdResultNames[r])))}
	}
	for sc := controlstore.ScopeOp; sc <= controlstore.ScopeGlobal; sc++ {
		m.byScope[sc] = []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(attribute.String("scope", sc.String())))}
	}

	decisions, err := meter.Int64ObservableCounter(MetricDecisions,
		metric.WithDescription("Op-control gate decisions, by outcome."),
		metric.WithUnit("{decision}"))
	if err != nil {
		return m
	}
	var byOutcome [numOutcomes]metric.ObserveOption
	for o := range numOutcomes {
		byOutcome[o] = metric.WithAttributeSet(attribute.NewSet(attribute.String("outcome", outcomeNames[o])))
	}
	counts := m.counts // the callback must not reach owner
	reg, err := meter.RegisterCallback(func(_ context.Context, obs metric.Observer) error {
		for o := range numOutcomes {
			obs.ObserveInt64(decisions, counts.sum(o), byOutcome[o])
		}
		return nil
	}, decisions)
	if err == nil {
		runtime.AddCleanup(owner, func(r metric.Registration) { _ = r.Unregister() }, reg)
	}
	return m
}

// decision counts one decision. Allocation-free and a few ns.
func (m *metrics) decision(o outcome) { m.counts.add(o) }

func (m *metrics) hold(ctx context.Context, d time.Duration, r holdResult) {
	m.holds.Record(ctx, d.Seconds(), m.byResult[r]...)
}

func (m *metrics) cancel(ctx context.Context, sc controlstore.Scope) {
	if sc > controlstore.ScopeGlobal {
		sc = controlstore.ScopeOp
	}
	m.cancelled.Add(ctx, 1, m.byScope[sc]...)
}
