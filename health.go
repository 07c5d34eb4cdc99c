package opcontrol

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"net/http"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// ReadinessHandler returns an http.Handler for a readiness probe: 200 with
// {"live":true,…} while every source of the kill switch is live, 503 with
// the same JSON body otherwise, saying which source is down, since when,
// and the class of its last error. The body never includes the token.
//
// Readiness and failing closed answer different questions. A failed
// readiness probe takes the agent out of its Service's endpoints, so no
// new work is routed to it, but the agent keeps calling its tools: a
// terminate published meanwhile is missed until a source is live again.
// Failing closed (WithFailClosedAfter) stops the tool calls themselves.
// Use readiness alone where an agent without new work is safe enough, both
// where a blind agent must not act.
func (k *KillSwitch) ReadinessHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		st := k.Status()
		body, _ := json.Marshal(st) // plain strings, bools and times: cannot fail
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		if st.Live {
			w.WriteHeader(http.StatusOK)
		} else {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		if r.Method == http.MethodGet {
			_, _ = w.Write(append(body, '\n'))
		}
	})
}

// ReportHealth drives srv's serving status for service from the kill
// switch until ctx ends: SERVING while every source is live, NOT_SERVING
// otherwise. It returns when ctx ends, leaving the last status set. Run
// it in its own goroutine; it wakes only when the store's sources change.
func (k *KillSwitch) ReportHealth(ctx context.Context, srv *health.Server, service string) {
	for {
		changed := k.store.SyncChanged()
		status := healthpb.HealthCheckResponse_NOT_SERVING
		if k.Status().Live {
			status = healthpb.HealthCheckResponse_SERVING
		}
		srv.SetServingStatus(service, status)
		select {
		case <-ctx.Done():
			return
		case <-changed:
		}
	}
}

func systemTLS() credentials.TransportCredentials {
	return credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS12})
}
