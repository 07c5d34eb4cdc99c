package stream

import (
	"context"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"google.golang.org/grpc/codes"

	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/internal/telemetry"
)

// meterName is the instrumentation scope of the subscriber's metrics.
const meterName = "github.com/opcontrol/opcontrol/stream"

// Rejected-signal reasons of the subscriber's own; the others are
// controlstore.RejectReason values.
const (
	// reasonMalformed: a frame that did not decode.
	reasonMalformed = "malformed_frame"
	// reasonTooLarge: a frame over maxFrameSize, which ended its stream.
	reasonTooLarge = "frame_too_large"
	// reasonOther: a refusal the store did not explain (none today).
	reasonOther = "other"
)

// metrics holds the instruments and precomputed attribute sets, so that
// recording allocates nothing. No attribute carries an op id.
type metrics struct {
	up         metric.Int64UpDownCounter
	reconnects metric.Int64Counter
	received   metric.Int64Counter
	rejected   metric.Int64Counter

	bySignal [5]metric.MeasurementOption // unspecified, pause, resume, terminate, unknown
	byReason map[string]metric.MeasurementOption
	byCode   [codes.Unauthenticated + 1]metric.MeasurementOption
}

func newMetrics(mp metric.MeterProvider) *metrics {
	meter := telemetry.NewMeter(mp, meterName)
	defer func() { _ = meter.Done() }()
	m := &metrics{
		up: meter.Int64UpDownCounter("opcontrol.stream.up",
			metric.WithDescription("Op-control streams currently live (1 per live subscriber)."),
			metric.WithUnit("{stream}")),
		reconnects: meter.Int64Counter("opcontrol.stream.reconnects",
			metric.WithDescription("Subscribe attempts after the first of a Run, by the status code that ended the previous attempt or stream."),
			metric.WithUnit("{attempt}")),
		received: meter.Int64Counter("opcontrol.stream.signals.received",
			metric.WithDescription("Op-control messages received and decoded, by signal."),
			metric.WithUnit("{signal}")),
		rejected: meter.Int64Counter("opcontrol.stream.signals.rejected",
			metric.WithDescription("Frames dropped, by reason: undecodable (malformed_frame), over the size limit, which ends the stream (frame_too_large), or refused by the store."),
			metric.WithUnit("{signal}")),
	}
	for i, name := range [...]string{"unspecified", "pause", "resume", "terminate", "unknown"} {
		m.bySignal[i] = metric.WithAttributeSet(attribute.NewSet(attribute.String("signal", name)))
	}
	m.byReason = make(map[string]metric.MeasurementOption)
	for _, r := range []string{reasonMalformed, reasonTooLarge,
		string(controlstore.ReasonUnspecifiedSignal), string(controlstore.ReasonUnknownSignal),
		string(controlstore.ReasonEmptyOpID), string(controlstore.ReasonOpIDTooLong),
		string(controlstore.ReasonForeignAgent), reasonOther} {
		m.byReason[r] = metric.WithAttributeSet(attribute.NewSet(attribute.String("reason", r)))
	}
	for c := range m.byCode {
		m.byCode[c] = metric.WithAttributeSet(attribute.NewSet(attribute.String("code", codes.Code(c).String())))
	}
	return m
}

func (m *metrics) setUp(up bool) {
	d := int64(-1)
	if up {
		d = 1
	}
	m.up.Add(context.Background(), d)
}

func (m *metrics) reconnect(prev codes.Code) {
	if int(prev) >= len(m.byCode) {
		prev = codes.Unknown
	}
	m.reconnects.Add(context.Background(), 1, m.byCode[prev])
}

func (m *metrics) signal(sig controlstore.Signal) {
	i := int(sig)
	if sig < controlstore.SignalUnspecified || sig > controlstore.SignalTerminate {
		i = len(m.bySignal) - 1
	}
	m.received.Add(context.Background(), 1, m.bySignal[i])
}

func (m *metrics) reject(reason string) {
	opt, ok := m.byReason[reason]
	if !ok {
		opt = m.byReason[reasonOther]
	}
	m.rejected.Add(context.Background(), 1, opt)
}
