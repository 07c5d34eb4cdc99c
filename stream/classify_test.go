package stream_test

import (
	"context"
	"log/slog"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/internal/testutil"
	"github.com/opcontrol/opcontrol/stream"
)

// rejecting is a ClientConnInterface whose NewStream itself fails with a
// status, as a client interceptor or another client stack may do.
type rejecting struct {
	code  codes.Code
	calls atomic.Int32
}

func (r *rejecting) Invoke(context.Context, string, any, any, ...grpc.CallOption) error {
	return status.Error(codes.Unimplemented, "unused")
}

func (r *rejecting) NewStream(context.Context, *grpc.StreamDesc, string, ...grpc.CallOption) (grpc.ClientStream, error) {
	r.calls.Add(1)
	return nil, status.Error(r.code, "rejected by the call")
}

// unimplementedServer is a gRPC server without the op-control service,
// like aa-api holding the gateway's port.
func unimplementedServer(t *testing.T) string {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(lis) }()
	t.Cleanup(func() { srv.Stop(); <-done })
	return lis.Addr().String()
}

func TestRejectionsAreClassified(t *testing.T) {
	cases := []struct {
		name  string
		setup func(t *testing.T) (addr string, opts []stream.Option, store *controlstore.Store)
		code  codes.Code
		state stream.State
	}{
		{"no token", func(t *testing.T) (string, []stream.Option, *controlstore.Store) {
			return startGateway(t).Addr(), nil, testutil.NewStore(t, agent)
		}, codes.Unauthenticated, stream.Unauthorized},
		{"unknown token", func(t *testing.T) (string, []stream.Option, *controlstore.Store) {
			return startGateway(t).Addr(), []stream.Option{stream.WithCredentialToken("not-registered")}, testutil.NewStore(t, agent)
		}, codes.Unauthenticated, stream.Unauthorized},
		{"another agent's triple", func(t *testing.T) (string, []stream.Option, *controlstore.Store) {
			return startGateway(t).Addr(), []stream.Option{stream.WithCredentialToken(token)}, testutil.NewStore(t, other)
		}, codes.PermissionDenied, stream.Unauthorized},
		{"empty org differs", func(t *testing.T) (string, []stream.Option, *controlstore.Store) {
			a := agent
			a.OrgID = ""
			return startGateway(t).Addr(), []stream.Option{stream.WithCredentialToken(token)}, testutil.NewStore(t, a)
		}, codes.PermissionDenied, stream.Unauthorized},
		{"invalid argument", func(t *testing.T) (string, []stream.Option, *controlstore.Store) {
			gw := startGateway(t)
			gw.RejectNext(1<<30, codes.InvalidArgument)
			return gw.Addr(), []stream.Option{stream.WithCredentialToken(token)}, testutil.NewStore(t, agent)
		}, codes.InvalidArgument, stream.Misconfigured},
		{"no op-control service", func(t *testing.T) (string, []stream.Option, *controlstore.Store) {
			return unimplementedServer(t), []stream.Option{stream.WithCredentialToken(token)}, testutil.NewStore(t, agent)
		}, codes.Unimplemented, stream.Misconfigured},
		{"no publisher", func(t *testing.T) (string, []stream.Option, *controlstore.Store) {
			gw := startGateway(t)
			gw.SetPublisherAttached(false)
			return gw.Addr(), []stream.Option{stream.WithCredentialToken(token)}, testutil.NewStore(t, agent)
		}, codes.Unavailable, stream.Backoff},
		{"resource exhausted", func(t *testing.T) (string, []stream.Option, *controlstore.Store) {
			gw := startGateway(t)
			gw.RejectNext(1<<30, codes.ResourceExhausted)
			return gw.Addr(), []stream.Option{stream.WithCredentialToken(token)}, testutil.NewStore(t, agent)
		}, codes.ResourceExhausted, stream.Backoff},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			addr, opts, store := tc.setup(t)
			logs, logOpt := newLogs()
			sub := stream.NewSubscriber(dial(t, addr), store, append(opts, logOpt)...)
			start(t, sub)
			checkClassified(t, sub, tc.code, tc.state)
			if tc.state != stream.Backoff {
				// Logged once, at error level (the log line follows the
				// status update).
				testutil.Eventually(t, waitShort, func() bool { return logs.Count(slog.LevelError, "not live") > 0 }, "misconfiguration not logged as an error")
				if n := logs.Count(slog.LevelError, "not live"); n != 1 {
					t.Errorf("logged %d errors for one misconfiguration, want 1", n)
				}
			}
		})
		// The same rejection returned by the call itself, not by the
		// first Recv, is classified alike.
		t.Run(tc.name+"/from the call", func(t *testing.T) {
			t.Parallel()
			rc := &rejecting{code: tc.code}
			sub := stream.NewSubscriber(rc, testutil.NewStore(t, agent), stream.WithLogger(nil))
			start(t, sub)
			checkClassified(t, sub, tc.code, tc.state)
		})
	}
}

func checkClassified(t *testing.T, sub *stream.Subscriber, code codes.Code, state stream.State) {
	t.Helper()
	testutil.Eventually(t, waitLong, func() bool { return !sub.Status().NextAttempt.IsZero() }, "no failed attempt; status %+v", sub.Status())
	st := sub.Status()
	if st.State != state || st.LastCode != code || status.Code(st.LastError) != code {
		t.Fatalf("status %+v, want state %v code %v", st, state, code)
	}
	wait := st.NextAttempt.Sub(st.LastErrorAt)
	misconfig := state == stream.Unauthorized || state == stream.Misconfigured
	switch {
	case misconfig && wait < stream.MisconfiguredRetryInterval:
		t.Fatalf("%v retried after %v, want >= %v (at most 12 attempts a minute)", code, wait, stream.MisconfiguredRetryInterval)
	case misconfig && wait >= stream.MisconfiguredRetryInterval*3/2+time.Millisecond:
		t.Fatalf("%v retried after %v, want < %v", code, wait, stream.MisconfiguredRetryInterval*3/2)
	case !misconfig && wait > stream.DefaultMaxInterval*3/2:
		t.Fatalf("%v retried after %v, want the normal backoff", code, wait)
	}
	select {
	case <-sub.Ready():
		t.Fatal("Ready closed after a rejection")
	default:
	}
	if sub.Connected() {
		t.Fatal("Connected after a rejection")
	}
}
