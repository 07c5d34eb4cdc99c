// Package telemetry creates opcontrol's OpenTelemetry instruments. Every
// package makes its instruments through a Meter, so that a failed creation
// is handled the same way everywhere: the instrument becomes a no-op (a
// kill switch must not stop because its metrics could not be set up), and
// the failures are reported to otel.Handle once, joined, by Done.
package telemetry

import (
	"errors"
	"fmt"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
)

// Meter makes instruments for one instrumentation scope.
type Meter struct {
	metric.Meter
	scope string
	errs  []error
}

// NewMeter returns a Meter of mp for scope; a nil mp means the global
// provider (a no-op unless the application set one).
func NewMeter(mp metric.MeterProvider, scope string) *Meter {
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	return &Meter{Meter: mp.Meter(scope), scope: scope}
}

func keep[T any](m *Meter, name string, inst T, err error, fallback T) T {
	if err != nil {
		m.errs = append(m.errs, fmt.Errorf("%s: %w", name, err))
		return fallback
	}
	return inst
}

// Int64Counter returns the counter, or a no-op one if it cannot be made.
func (m *Meter) Int64Counter(name string, opts ...metric.Int64CounterOption) metric.Int64Counter {
	c, err := m.Meter.Int64Counter(name, opts...)
	return keep[metric.Int64Counter](m, name, c, err, noop.Int64Counter{})
}

// Int64UpDownCounter returns the counter, or a no-op one if it cannot be made.
func (m *Meter) Int64UpDownCounter(name string, opts ...metric.Int64UpDownCounterOption) metric.Int64UpDownCounter {
	c, err := m.Meter.Int64UpDownCounter(name, opts...)
	return keep[metric.Int64UpDownCounter](m, name, c, err, noop.Int64UpDownCounter{})
}

// Float64Histogram returns the histogram, or a no-op one if it cannot be made.
func (m *Meter) Float64Histogram(name string, opts ...metric.Float64HistogramOption) metric.Float64Histogram {
	h, err := m.Meter.Float64Histogram(name, opts...)
	return keep[metric.Float64Histogram](m, name, h, err, noop.Float64Histogram{})
}

// Int64ObservableCounter returns the counter, or a no-op one if it cannot be made.
func (m *Meter) Int64ObservableCounter(name string, opts ...metric.Int64ObservableCounterOption) metric.Int64ObservableCounter {
	c, err := m.Meter.Int64ObservableCounter(name, opts...)
	return keep[metric.Int64ObservableCounter](m, name, c, err, noop.Int64ObservableCounter{})
}

// Int64ObservableGauge returns the gauge, or a no-op one if it cannot be made.
func (m *Meter) Int64ObservableGauge(name string, opts ...metric.Int64ObservableGaugeOption) metric.Int64ObservableGauge {
	g, err := m.Meter.Int64ObservableGauge(name, opts...)
	return keep[metric.Int64ObservableGauge](m, name, g, err, noop.Int64ObservableGauge{})
}

// RegisterCallback registers f, or returns nil (and records why) if it
// cannot be registered.
func (m *Meter) RegisterCallback(f metric.Callback, insts ...metric.Observable) metric.Registration {
	r, err := m.Meter.RegisterCallback(f, insts...)
	if err != nil {
		m.errs = append(m.errs, fmt.Errorf("callback: %w", err))
		return nil
	}
	return r
}

// Done reports every failure so far to otel.Handle, once, and forgets
// them. It returns the joined error (nil if nothing failed), for tests.
func (m *Meter) Done() error {
	if len(m.errs) == 0 {
		return nil
	}
	err := fmt.Errorf("opcontrol: %s: some metrics are disabled: %w", m.scope, errors.Join(m.errs...))
	m.errs = nil
	otel.Handle(err)
	return err
}
