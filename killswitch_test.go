package opcontrol_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/opcontrol/opcontrol"
	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/internal/testutil"
	"github.com/opcontrol/opcontrol/stream/gatewaytest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var testAgent = controlstore.Agent{OrgID: "acme", TeamID: "platform", AgentID: "did:key:z6MkKillSwitch"}

const testToken = "5b3c1f8e-7b0e-4c55-9d8e-2f1d7a0c9b22"

func setEnv(t *testing.T, gatewayAddr string) {
	t.Setenv(opcontrol.EnvAgentID, testAgent.AgentID)
	t.Setenv(opcontrol.EnvOrgID, testAgent.OrgID)
	t.Setenv(opcontrol.EnvTeamID, testAgent.TeamID)
	t.Setenv(opcontrol.EnvGatewayURL, gatewayAddr)
	t.Setenv(opcontrol.EnvCredentialToken, testToken)
	t.Setenv(opcontrol.EnvFailClosedAfter, "")
	t.Setenv(opcontrol.EnvNATSURL, "")
}

func startGateway(t *testing.T) *gatewaytest.Gateway {
	t.Helper()
	gw, err := gatewaytest.Start(gatewaytest.WithToken(testToken, testAgent))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(gw.Close)
	return gw
}

func start(t *testing.T, opts ...opcontrol.Option) *opcontrol.KillSwitch {
	t.Helper()
	k, err := opcontrol.FromEnv(context.Background(), append([]opcontrol.Option{opcontrol.WithLogger(nil)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := k.Shutdown(context.Background()); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
	return k
}

// Every malformed or missing value is an error that names where it came
// from, and a bad token is never repeated.
func TestFromEnvRefusesBadConfiguration(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		opts []opcontrol.Option
		want []string // all in the error
	}{
		{"no agent id", map[string]string{opcontrol.EnvAgentID: ""}, nil, []string{opcontrol.EnvAgentID}},
		{"no gateway", map[string]string{opcontrol.EnvGatewayURL: ""}, nil, []string{opcontrol.EnvGatewayURL}},
		{"both missing", map[string]string{opcontrol.EnvAgentID: "", opcontrol.EnvGatewayURL: ""}, nil,
			[]string{opcontrol.EnvAgentID, opcontrol.EnvGatewayURL}},
		{"gateway url with a path", map[string]string{opcontrol.EnvGatewayURL: "http://gw:50051/x"}, nil, []string{opcontrol.EnvGatewayURL, "no path"}},
		{"gateway url with no host", map[string]string{opcontrol.EnvGatewayURL: "https://"}, nil, []string{opcontrol.EnvGatewayURL}},
		{"fail-closed not a duration", map[string]string{opcontrol.EnvFailClosedAfter: "soon"}, nil, []string{opcontrol.EnvFailClosedAfter}},
		{"fail-closed negative", map[string]string{opcontrol.EnvFailClosedAfter: "-1s"}, nil, []string{opcontrol.EnvFailClosedAfter}},
		{"token with a control byte", map[string]string{opcontrol.EnvCredentialToken: "sec\x01ret"}, nil, []string{opcontrol.EnvCredentialToken, "byte 3"}},
		{"agent id not UTF-8", map[string]string{opcontrol.EnvAgentID: "a\xff"}, nil, []string{"AgentID", "UTF-8"}},
		{"negative option", nil, []opcontrol.Option{opcontrol.WithFailClosedAfter(-time.Second)}, []string{"WithFailClosedAfter"}},
		{"nil source", nil, []opcontrol.Option{opcontrol.WithSource(nil)}, []string{"source 0 is nil"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			setEnv(t, "127.0.0.1:1")
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			k, err := opcontrol.FromEnv(context.Background(), append([]opcontrol.Option{opcontrol.WithLogger(nil)}, tc.opts...)...)
			if err == nil {
				_ = k.Shutdown(context.Background())
				t.Fatal("FromEnv accepted it")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if strings.Contains(err.Error(), "sec\x01ret") {
				t.Errorf("error %q repeats the token", err)
			}
		})
	}
}

// An explicit option wins over the environment.
func TestOptionsOverrideTheEnvironment(t *testing.T) {
	setEnv(t, "127.0.0.1:1")
	other := controlstore.Agent{AgentID: "did:key:z6MkOther"}
	k := start(t, opcontrol.WithAgent(other), nil)
	if got := k.Store().Agent(); got != other {
		t.Fatalf("store agent %+v, want the option's %+v", got, other)
	}
}

func readiness(t *testing.T, h http.Handler) (int, opcontrol.Status, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
	var st opcontrol.Status
	if err := json.Unmarshal(rec.Body.Bytes(), &st); err != nil {
		t.Fatalf("readiness body %q: %v", rec.Body.String(), err)
	}
	return rec.Code, st, rec.Body.String()
}

func servingStatus(t *testing.T, srv *health.Server, service string) healthpb.HealthCheckResponse_ServingStatus {
	t.Helper()
	resp, err := srv.Check(context.Background(), &healthpb.HealthCheckRequest{Service: service})
	if err != nil {
		return healthpb.HealthCheckResponse_SERVICE_UNKNOWN
	}
	return resp.GetStatus()
}

// The readiness handler and the health reporter follow the gateway as it
// goes down and comes back, and never show the token.
func TestReadinessAndHealthFollowTheGateway(t *testing.T) {
	gw := startGateway(t)
	setEnv(t, gw.Addr())
	k := start(t)
	h := k.ReadinessHandler()
	srv := health.NewServer()
	ctx, stop := context.WithCancel(context.Background())
	reported := make(chan struct{})
	go func() { defer close(reported); k.ReportHealth(ctx, srv, "opcontrol") }()
	defer func() { stop(); <-reported }()

	<-k.Ready()
	testutil.Eventually(t, testutil.WaitShort, func() bool { c, _, _ := readiness(t, h); return c == http.StatusOK }, "not ready once live")
	testutil.Eventually(t, testutil.WaitShort, func() bool {
		return servingStatus(t, srv, "opcontrol") == healthpb.HealthCheckResponse_SERVING
	}, "health not SERVING once live")

	gw.Stop()
	var body string
	var st opcontrol.Status
	testutil.Eventually(t, testutil.WaitLong, func() bool {
		var code int
		code, st, body = readiness(t, h)
		return code == http.StatusServiceUnavailable && len(st.Sources) == 1 && st.Sources[0].State != "live" && st.Sources[0].LastError != ""
	}, "readiness does not report the gateway down: %s", body)
	if src := st.Sources[0]; src.Name != "stream" || src.Live || src.Since.IsZero() {
		t.Fatalf("down: source %+v, want stream, not live, since set", src)
	}
	if strings.Contains(body, testToken) {
		t.Fatalf("readiness body shows the token: %s", body)
	}
	testutil.Eventually(t, testutil.WaitShort, func() bool {
		return servingStatus(t, srv, "opcontrol") == healthpb.HealthCheckResponse_NOT_SERVING
	}, "health still SERVING with the gateway down")

	if err := gw.Restart(); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, testutil.WaitLong, func() bool { c, _, _ := readiness(t, h); return c == http.StatusOK }, "not ready again after the gateway came back")
	testutil.Eventually(t, testutil.WaitShort, func() bool {
		return servingStatus(t, srv, "opcontrol") == healthpb.HealthCheckResponse_SERVING
	}, "health not SERVING again")

	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/readyz", nil))
	if rec.Code != http.StatusMethodNotAllowed {
		t.Fatalf("POST readiness = %d, want 405", rec.Code)
	}
}

// fakeSource is a further source for the plug-in tests: live when told.
type fakeSource struct {
	src  *controlstore.Source
	mu   sync.Mutex
	live bool
	ran  chan struct{}
}

func (f *fakeSource) Run(ctx context.Context) error {
	f.src.Start()
	defer f.src.Stop()
	close(f.ran)
	<-ctx.Done()
	return nil
}

func (f *fakeSource) setLive(live bool) {
	f.mu.Lock()
	f.live = live
	f.mu.Unlock()
	f.src.SetLive(live)
}

func (f *fakeSource) Health() opcontrol.SourceHealth {
	f.mu.Lock()
	defer f.mu.Unlock()
	state := "connecting"
	if f.live {
		state = "live"
	}
	return opcontrol.SourceHealth{Name: "fake", State: state, Live: f.live}
}

func TestFurtherSourcesCountForReadiness(t *testing.T) {
	gw := startGateway(t)
	setEnv(t, gw.Addr())
	fake := &fakeSource{ran: make(chan struct{})}
	k := start(t, opcontrol.WithSource(func(store *controlstore.Store, _ *slog.Logger) (opcontrol.Source, error) {
		fake.src = store.AddSource("fake", controlstore.SourceBus)
		return fake, nil
	}))
	<-k.Ready()
	<-fake.ran
	code, st, _ := readiness(t, k.ReadinessHandler())
	if code != http.StatusServiceUnavailable || len(st.Sources) != 2 || st.Sources[1].Name != "fake" {
		t.Fatalf("bus not live: %d %+v, want 503 naming the fake source", code, st)
	}
	fake.setLive(true)
	testutil.Eventually(t, testutil.WaitShort, func() bool { c, _, _ := readiness(t, k.ReadinessHandler()); return c == http.StatusOK },
		"not ready with both sources live")
}

func TestSourceFactoryErrorStopsNew(t *testing.T) {
	setEnv(t, "127.0.0.1:1")
	boom := errors.New("bus credentials unreadable")
	k, err := opcontrol.FromEnv(context.Background(), opcontrol.WithLogger(nil),
		opcontrol.WithSource(func(*controlstore.Store, *slog.Logger) (opcontrol.Source, error) { return nil, boom }))
	if !errors.Is(err, boom) || k != nil {
		t.Fatalf("FromEnv = %v, %v; want the factory's error", k, err)
	}
}

// The platform configured a bus but the agent added no bus source: say so,
// loudly, once.
func TestBusConfiguredWithoutSourceIsLogged(t *testing.T) {
	setEnv(t, "127.0.0.1:1")
	t.Setenv(opcontrol.EnvNATSURL, "nats://127.0.0.1:4222")
	var buf bytes.Buffer
	var mu sync.Mutex
	logger := slog.New(slog.NewTextHandler(writerFunc(func(p []byte) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		return buf.Write(p)
	}), &slog.HandlerOptions{Level: slog.LevelError}))
	start(t, opcontrol.WithLogger(logger))
	mu.Lock()
	defer mu.Unlock()
	if got := buf.String(); !strings.Contains(got, opcontrol.EnvNATSURL) || strings.Count(got, "level=ERROR") != 1 {
		t.Fatalf("log %q, want one error naming %s", got, opcontrol.EnvNATSURL)
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

var _ io.Writer = writerFunc(nil)

// Shutdown stops everything even when the gateway never answered, and a
// second Shutdown is harmless; goleak in TestMain checks nothing is left.
func TestShutdownWithTheGatewayAway(t *testing.T) {
	setEnv(t, "127.0.0.1:1")
	k, err := opcontrol.FromEnv(context.Background(), opcontrol.WithLogger(nil))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), testutil.WaitShort)
	defer cancel()
	if err := k.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown = %v", err)
	}
	if err := k.Close(); err != nil {
		t.Fatalf("second Close = %v", err)
	}
}
