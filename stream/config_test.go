package stream_test

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"strings"
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

// TestNilOptionsIgnored: a nil Option, or a nil grpc.CallOption handed to
// WithCallOptions, is ignored rather than dereferenced.
func TestNilOptionsIgnored(t *testing.T) {
	gw := startGateway(t)
	var none stream.Option
	sub := stream.NewSubscriber(dial(t, gw.Addr()), testutil.NewStore(t, agent),
		nil, stream.WithCredentialToken(token), none, stream.WithLogger(nil),
		stream.WithCallOptions(nil, grpc.MaxCallSendMsgSize(1<<20), nil))
	start(t, sub)
	waitReady(t, sub)
}

// countingDialer counts the connections a ClientConn tries to open.
func countingDialer(n *atomic.Int64) grpc.DialOption {
	return grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
		n.Add(1)
		return (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	})
}

// TestBadTokenIsMisconfigured: a token that can never authenticate, as one
// read from a badly written environment variable, does not panic: the
// subscriber reports it as Misconfigured, says what is wrong without
// quoting the token, logs it once, never dials, and keeps checking slowly.
func TestBadTokenIsMisconfigured(t *testing.T) {
	for _, tc := range []struct {
		name, token, want string
	}{
		{"empty", "", "empty"},
		{"only spaces", " \t ", "empty"},
		{"inner newline", "0f3c1f8e-7b0e\n4c55-9d8e", "control character at offset 13"},
		{"NUL", "0f3c1f8e\x00secret", "control character at offset 8"},
		{"not ASCII", "0f3c1f8e-tökén", "not ASCII at offset 10"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			gw := startGateway(t)
			var dials atomic.Int64
			logs, logOpt := newLogs()
			sub := stream.NewSubscriber(dialWith(t, gw.Addr(), countingDialer(&dials)), testutil.NewStore(t, agent),
				stream.WithCredentialToken(tc.token), logOpt)
			r := start(t, sub)
			testutil.Eventually(t, waitShort, func() bool { return !sub.Status().NextAttempt.IsZero() }, "no failed attempt")
			st := sub.Status()
			if st.State != stream.Misconfigured || st.LastCode != codes.InvalidArgument || status.Code(st.LastError) != codes.InvalidArgument {
				t.Fatalf("status %+v, want Misconfigured with InvalidArgument", st)
			}
			msg := st.LastError.Error()
			if !strings.Contains(msg, "WithCredentialToken") || !strings.Contains(msg, tc.want) {
				t.Fatalf("LastError %q, want it to name WithCredentialToken and say %q", msg, tc.want)
			}
			if secret := strings.TrimSpace(tc.token); secret != "" && (strings.Contains(msg, secret) || logs.Mentions(secret)) {
				t.Fatalf("the token leaked into LastError %q or the logs", msg)
			}
			if wait := st.NextAttempt.Sub(st.LastErrorAt); wait < stream.MisconfiguredRetryInterval || wait > stream.MisconfiguredRetryInterval*3/2 {
				t.Fatalf("next check in %v, want 5-7.5 s", wait)
			}
			// The status is recorded before the line is written.
			testutil.Eventually(t, waitShort, func() bool { return logs.Count(slog.LevelError, "not live") >= 1 }, "no error line")
			if n := logs.Count(slog.LevelError, "not live"); n != 1 {
				t.Fatalf("%d error lines, want 1", n)
			}
			if took := r.stop(t); took > 100*time.Millisecond {
				t.Fatalf("Run returned %v after cancel, want <= 100ms", took)
			}
			if n, s := dials.Load(), gw.Stats(); n != 0 || s.Accepted+s.Rejected != 0 {
				t.Fatalf("%d dials and %d subscribes with a bad token, want none", n, s.Accepted+s.Rejected)
			}
		})
	}
	t.Run("keeps checking, logs once", func(t *testing.T) {
		t.Parallel()
		var dials atomic.Int64
		logs, logOpt := newLogs()
		sub := stream.NewSubscriber(dialWith(t, "127.0.0.1:1", countingDialer(&dials)), testutil.NewStore(t, agent),
			stream.WithCredentialToken(" "), logOpt, stream.WithMisconfiguredRetryForTest(5*time.Millisecond))
		start(t, sub)
		testutil.Eventually(t, waitShort, func() bool { return sub.Status().Attempts >= 5 }, "not checking again")
		if n := logs.Count(slog.LevelError, "not live"); n != 1 {
			t.Fatalf("%d error lines for one misconfiguration, want 1", n)
		}
		select {
		case <-sub.Ready():
			t.Fatal("Ready with a bad token")
		default:
		}
		if n := dials.Load(); n != 0 || sub.Connected() {
			t.Fatalf("%d dials, connected %v: want none", n, sub.Connected())
		}
	})
}

// TestOutOfRangeDurations: a negative duration is taken as 0 and logged,
// not a panic.
func TestOutOfRangeDurations(t *testing.T) {
	t.Run("WithFailClosedAfter", func(t *testing.T) {
		gw := startGateway(t)
		gw.Stop()
		store := testutil.NewStore(t, agent)
		logs, logOpt := newLogs()
		sub := stream.NewSubscriber(dial(t, gw.Addr()), store, stream.WithCredentialToken(token), logOpt,
			stream.WithFailClosedAfter(-time.Second))
		if !logs.Mentions("negative duration is taken as 0") {
			t.Fatal("the adjustment was not logged")
		}
		start(t, sub)
		testutil.Eventually(t, waitShort, func() bool { return store.SyncStatus().FailClosed }, "not failing closed at once, as with 0")
		if err := store.Check(unknownOp); !errors.Is(err, controlstore.ErrUnavailable) {
			t.Fatalf("Check = %v, want ErrUnavailable", err)
		}
	})
	t.Run("WithReconnectSpread", func(t *testing.T) {
		gw := startGateway(t)
		logs, logOpt := newLogs()
		sub := stream.NewSubscriber(dial(t, gw.Addr()), testutil.NewStore(t, agent), stream.WithCredentialToken(token), logOpt,
			stream.WithBackoff(fastBackoff), stream.WithReconnectSpread(-time.Hour))
		if !logs.Mentions("negative spread is taken as 0") {
			t.Fatal("the adjustment was not logged")
		}
		start(t, sub)
		waitReady(t, sub)
		gw.DropAll(codes.Unavailable)
		testutil.Eventually(t, waitShort, func() bool { return gw.Stats().Accepted == 2 && sub.Connected() }, "not back at once, as with 0")
	})
}
