package testutil

import (
	"context"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

// Metrics is a real OpenTelemetry SDK meter provider with a manual
// reader, for tests that assert what was counted.
type Metrics struct {
	Reader   *sdkmetric.ManualReader
	Provider *sdkmetric.MeterProvider
}

// NewMetrics returns a provider that is shut down when the test ends.
func NewMetrics(tb testing.TB) *Metrics {
	r := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(r))
	tb.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	return &Metrics{Reader: r, Provider: mp}
}

// SumBy collects and sums the int64 sum data points of instrument name by
// the value of attribute key ("" sums everything under "").
func (m *Metrics) SumBy(tb testing.TB, name, key string) map[string]int64 {
	tb.Helper()
	return SumBy(tb, m.Reader, name, key)
}

// SumBy is Metrics.SumBy for any manual reader.
func SumBy(tb testing.TB, reader *sdkmetric.ManualReader, name, key string) map[string]int64 {
	tb.Helper()
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		tb.Fatal(err)
	}
	out := map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, md := range sm.Metrics {
			if md.Name != name {
				continue
			}
			sum, ok := md.Data.(metricdata.Sum[int64])
			if !ok {
				tb.Fatalf("%s is %T, want an int64 sum", name, md.Data)
			}
			for _, dp := range sum.DataPoints {
				v, _ := dp.Attributes.Value(attribute.Key(key))
				out[v.AsString()] += dp.Value
			}
		}
	}
	return out
}
