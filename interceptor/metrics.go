package interceptor

import (
	"context"
	"runtime"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/internal/percpu"
	"github.com/opcontrol/opcontrol/internal/telemetry"
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
	// MetricInFlightCancelled counts running calls (a stream counts once)
	// stopped by a terminate, by "scope" (op, agent, global).
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
// rest of the gate. Holds and cancellations are rare and use synchronous
// instruments.
type metrics struct {
	counts *decisionCounts

	holds     metric.Float64Histogram
	cancelled metric.Int64Counter

	byResult [numHoldResults][]metric.RecordOption
	byScope  [controlstore.ScopeGlobal + 1][]metric.AddOption
}

// decisionCounts counts decisions per processor: every allowed call adds
// one, so a single shared counter would be a cache line that every core
// writes on every call. A call adds to the stripe of the P it runs on;
// reading sums the stripes, which is exact because each stripe is atomic.
type decisionCounts struct {
	stripes [percpu.Stripes]struct {
		n [numOutcomes]atomic.Int64
		_ [64 - 8*numOutcomes%64]byte
	}
}

func (c *decisionCounts) add(o outcome) { c.stripes[percpu.Index()].n[o].Add(1) }

func (c *decisionCounts) sum(o outcome) int64 {
	var n int64
	for i := range c.stripes {
		n += c.stripes[i].n[o].Load()
	}
	return n
}

// newMetrics creates the instruments and registers the callback that reports
// the decision counts. owner is the gate; when it becomes unreachable the
// callback is unregistered, so interceptors built and dropped repeatedly do
// not pile up callbacks in a long-lived meter provider. (Gates sharing a
// provider are summed by the SDK; a dropped gate's counts leave the sum,
// which a backend sees as a counter reset.) Instruments that cannot be made
// are no-ops, reported once to otel.Handle.
func newMetrics(mp metric.MeterProvider, owner *gate) *metrics {
	meter := telemetry.NewMeter(mp, meterName)
	defer func() { _ = meter.Done() }()
	m := &metrics{counts: new(decisionCounts)}
	m.holds = meter.Float64Histogram(MetricHoldDuration,
		metric.WithDescription("Time calls were held by a paused op, by how the hold ended."),
		metric.WithUnit("s"),
		metric.WithExplicitBucketBoundaries(0.001, 0.01, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600))
	m.cancelled = meter.Int64Counter(MetricInFlightCancelled,
		metric.WithDescription("Running calls stopped because their op, agent or every agent was terminated, by scope."),
		metric.WithUnit("{call}"))
	for r := range numHoldResults {
		m.byResult[r] = []metric.RecordOption{metric.WithAttributeSet(attribute.NewSet(attribute.String("result", holdResultNames[r])))}
	}
	for sc := controlstore.ScopeOp; sc <= controlstore.ScopeGlobal; sc++ {
		m.byScope[sc] = []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(attribute.String("scope", sc.String())))}
	}

	decisions := meter.Int64ObservableCounter(MetricDecisions,
		metric.WithDescription("Op-control gate decisions, by outcome."),
		metric.WithUnit("{decision}"))
	var byOutcome [numOutcomes]metric.ObserveOption
	for o := range numOutcomes {
		byOutcome[o] = metric.WithAttributeSet(attribute.NewSet(attribute.String("outcome", outcomeNames[o])))
	}
	counts := m.counts // the callback must not reach owner
	reg := meter.RegisterCallback(func(_ context.Context, obs metric.Observer) error {
		for o := range numOutcomes {
			obs.ObserveInt64(decisions, counts.sum(o), byOutcome[o])
		}
		return nil
	}, decisions)
	if reg != nil {
		runtime.AddCleanup(owner, func(r metric.Registration) { _ = r.Unregister() }, reg)
	}
	return m
}

// decision counts one decision. Allocation-free, about 10 ns, and it writes
// only the current processor's stripe.
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
