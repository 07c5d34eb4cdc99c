package telemetry_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"

	"go.opentelemetry.io/otel"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/opcontrol/opcontrol/internal/telemetry"
)

type handler struct {
	mu   sync.Mutex
	errs []error
}

func (h *handler) Handle(err error) { h.mu.Lock(); h.errs = append(h.errs, err); h.mu.Unlock() }

func TestFailedInstrumentsAreNoOpsReportedOnce(t *testing.T) {
	h := &handler{}
	otel.SetErrorHandler(h)
	t.Cleanup(func() { otel.SetErrorHandler(otel.ErrorHandlerFunc(func(error) {})) })

	reader := sdkmetric.NewManualReader()
	m := telemetry.NewMeter(sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader)), "test")
	good := m.Int64Counter("good.counter")
	bad := m.Int64Counter("1 is not a valid name") // the SDK refuses it
	badHist := m.Float64Histogram("")
	good.Add(context.Background(), 2)
	bad.Add(context.Background(), 1) // must not panic
	badHist.Record(context.Background(), 1)

	err := m.Done()
	if err == nil || !strings.Contains(err.Error(), "1 is not a valid name") {
		t.Fatalf("Done() = %v, want the refused instrument named", err)
	}
	if m.Done() != nil {
		t.Fatal("second Done reported again")
	}
	h.mu.Lock()
	n := len(h.errs)
	h.mu.Unlock()
	if n != 1 || !errors.Is(h.errs[0], errors.Unwrap(err)) && h.errs[0].Error() != err.Error() {
		t.Fatalf("otel.Handle got %d errors (%v), want exactly the joined one", n, h.errs)
	}

	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	if len(rm.ScopeMetrics) != 1 || len(rm.ScopeMetrics[0].Metrics) != 1 || rm.ScopeMetrics[0].Metrics[0].Name != "good.counter" {
		t.Fatalf("collected %+v, want only good.counter", rm.ScopeMetrics)
	}
}

func TestNothingFailedReportsNothing(t *testing.T) {
	m := telemetry.NewMeter(nil, "test")
	_ = m.Int64UpDownCounter("a.b")
	if err := m.Done(); err != nil {
		t.Fatalf("Done() = %v, want nil", err)
	}
}
