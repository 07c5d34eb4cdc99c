package jetstream_test

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/internal/testutil"
	"github.com/opcontrol/opcontrol/jetstream"
	"github.com/opcontrol/opcontrol/jetstream/internal/natstest"
	"github.com/opcontrol/opcontrol/jetstream/jetstreamtest"
)

func env(vars map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := vars[k]; return v, ok }
}

func TestFromEnv(t *testing.T) {
	creds := filepath.Join(t.TempDir(), "agent.creds")
	if err := os.WriteFile(creds, []byte("-----BEGIN NATS USER JWT-----\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	seed := natstest.NewUser(t).Seed
	for _, tc := range []struct {
		name string
		vars map[string]string
		want jetstream.Config
		err  string // substring of the error; "" for none
	}{
		{"unset", map[string]string{}, jetstream.Config{}, "not set"},
		{"blank", map[string]string{jetstream.EnvURL: "  "}, jetstream.Config{}, "not set"},
		{"url only", map[string]string{jetstream.EnvURL: " nats://bus:4222 "}, jetstream.Config{URL: "nats://bus:4222"}, ""},
		{"several urls", map[string]string{jetstream.EnvURL: "nats://a:4222,tls://b:4222"}, jetstream.Config{URL: "nats://a:4222,tls://b:4222"}, ""},
		{"bare host", map[string]string{jetstream.EnvURL: "bus:4222"}, jetstream.Config{URL: "bus:4222"}, ""},
		{"bad scheme", map[string]string{jetstream.EnvURL: "http://bus"}, jetstream.Config{}, jetstream.EnvURL + `: scheme "http"`},
		{"empty in list", map[string]string{jetstream.EnvURL: "nats://a,,nats://b"}, jetstream.Config{}, jetstream.EnvURL + ": an empty server URL"},
		{"truthy", map[string]string{jetstream.EnvURL: "nats://a", jetstream.EnvTLS: " On ", jetstream.EnvRequireAuth: "YES"},
			jetstream.Config{URL: "nats://a", TLS: true, RequireAuth: true}, ""},
		{"truthy 1 and true", map[string]string{jetstream.EnvURL: "nats://a", jetstream.EnvTLS: "1", jetstream.EnvRequireAuth: "True"},
			jetstream.Config{URL: "nats://a", TLS: true, RequireAuth: true}, ""},
		{"falsy", map[string]string{jetstream.EnvURL: "nats://a", jetstream.EnvTLS: "off", jetstream.EnvRequireAuth: "0"},
			jetstream.Config{URL: "nats://a"}, ""},
		{"empty switch", map[string]string{jetstream.EnvURL: "nats://a", jetstream.EnvTLS: ""}, jetstream.Config{URL: "nats://a"}, ""},
		{"mistyped switch", map[string]string{jetstream.EnvURL: "nats://a", jetstream.EnvRequireAuth: "ture"}, jetstream.Config{},
			jetstream.EnvRequireAuth + `: "ture" is not a switch`},
		{"creds", map[string]string{jetstream.EnvURL: "nats://a", jetstream.EnvCreds: creds}, jetstream.Config{URL: "nats://a", CredsFile: creds}, ""},
		{"creds missing", map[string]string{jetstream.EnvURL: "nats://a", jetstream.EnvCreds: creds + ".nope"}, jetstream.Config{}, jetstream.EnvCreds + ": the creds file cannot be read"},
		{"creds is a directory", map[string]string{jetstream.EnvURL: "nats://a", jetstream.EnvCreds: t.TempDir()}, jetstream.Config{}, jetstream.EnvCreds + ": the creds file"},
		{"nkey", map[string]string{jetstream.EnvURL: "nats://a", jetstream.EnvNKey: " " + seed + " "}, jetstream.Config{URL: "nats://a", NKeySeed: seed}, ""},
		{"bad nkey", map[string]string{jetstream.EnvURL: "nats://a", jetstream.EnvNKey: "SUnotaseed"}, jetstream.Config{}, jetstream.EnvNKey + ": not a valid nkey seed"},
		{"both, creds wins at connect", map[string]string{jetstream.EnvURL: "nats://a", jetstream.EnvCreds: creds, jetstream.EnvNKey: seed},
			jetstream.Config{URL: "nats://a", CredsFile: creds, NKeySeed: seed}, ""},
		{"every error at once", map[string]string{jetstream.EnvURL: "ftp://a", jetstream.EnvTLS: "maybe", jetstream.EnvNKey: "x"}, jetstream.Config{},
			jetstream.EnvTLS},
	} {
		got, err := jetstream.FromLookup(env(tc.vars))
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("%s: error %v", tc.name, err)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%s: error %v, want one containing %q", tc.name, err, tc.err)
		case tc.err == "" && got != tc.want:
			t.Errorf("%s: %+v, want %+v", tc.name, got, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), seed) {
			t.Errorf("%s: the error quotes the nkey seed", tc.name)
		}
	}
	// Every problem is reported, each with its variable.
	_, err := jetstream.FromLookup(env(map[string]string{jetstream.EnvURL: "ftp://a", jetstream.EnvTLS: "maybe", jetstream.EnvNKey: "x"}))
	for _, v := range []string{jetstream.EnvURL, jetstream.EnvTLS, jetstream.EnvNKey} {
		if err == nil || !strings.Contains(err.Error(), v) {
			t.Errorf("error %v does not name %s", err, v)
		}
	}
	if _, err := jetstream.FromLookup(env(nil)); !errors.Is(err, jetstream.ErrNotConfigured) {
		t.Errorf("unset: %v, want ErrNotConfigured", err)
	}
}

// FromEnv reads the process environment.
func TestFromEnvReadsEnvironment(t *testing.T) {
	t.Setenv(jetstream.EnvURL, "nats://bus.example:4222")
	t.Setenv(jetstream.EnvTLS, "yes")
	t.Setenv(jetstream.EnvRequireAuth, "")
	cfg, err := jetstream.FromEnv()
	if err != nil || cfg != (jetstream.Config{URL: "nats://bus.example:4222", TLS: true}) {
		t.Fatalf("FromEnv = %+v, %v", cfg, err)
	}
}

func TestConnectRefuses(t *testing.T) {
	seed := natstest.NewUser(t).Seed
	quiet := slog.New(slog.DiscardHandler)
	for _, tc := range []struct {
		name string
		cfg  jetstream.Config
		err  string
	}{
		{"no url", jetstream.Config{}, "Config.URL"},
		{"bad url", jetstream.Config{URL: "http://x"}, "Config.URL"},
		{"bad nkey", jetstream.Config{URL: "nats://127.0.0.1:1", NKeySeed: "nope"}, "Config.NKeySeed"},
		{"missing creds", jetstream.Config{URL: "nats://127.0.0.1:1", CredsFile: "/nonexistent/x.creds"}, "Config.CredsFile"},
		{"require auth, nothing", jetstream.Config{URL: "nats://127.0.0.1:1", RequireAuth: true}, "not both authenticated (false) and encrypted (false)"},
		{"require auth, no tls", jetstream.Config{URL: "nats://127.0.0.1:1", NKeySeed: seed, RequireAuth: true}, "authenticated (true) and encrypted (false)"},
		{"require auth, no credentials", jetstream.Config{URL: "tls://127.0.0.1:1", RequireAuth: true}, "authenticated (false) and encrypted (true)"},
		{"require auth, mixed schemes", jetstream.Config{URL: "tls://127.0.0.1:1,nats://127.0.0.1:2", NKeySeed: seed, RequireAuth: true}, "encrypted (false)"},
	} {
		tc.cfg.Logger = quiet
		nc, err := jetstream.Connect(tc.cfg)
		if err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%s: Connect error %v, want one containing %q", tc.name, err, tc.err)
		}
		if nc != nil {
			nc.Close()
			t.Errorf("%s: Connect returned a connection with its error", tc.name)
		}
	}
}

// Without RequireAuth an insecure bus is used, with a warning.
func TestConnectWarnsInsecure(t *testing.T) {
	srv := startServer(t)
	l := &testutil.Logs{}
	nc := connectWith(t, jetstream.Config{URL: srv.URL(), Logger: slog.New(l)})
	testutil.Eventually(t, waitShort, nc.IsConnected, "connected")
	if n := l.Count(slog.LevelWarn, "not both authenticated and encrypted"); n != 1 {
		t.Errorf("%d insecure-bus warnings, want 1", n)
	}
}

// The settings a kill switch needs, whatever the caller's options said.
func TestConnectSettings(t *testing.T) {
	srv := startServer(t)
	nc := connect(t, srv.URL(), nats.MaxReconnects(3), nats.PingInterval(time.Hour), nats.ReconnectBufSize(1<<20))
	o := nc.Opts
	if o.MaxReconnect != -1 || !o.AllowReconnect || !o.RetryOnFailedConnect || !o.IgnoreAuthErrorAbort {
		t.Errorf("reconnect settings: max %d allow %t retry-at-start %t ignore-auth-abort %t",
			o.MaxReconnect, o.AllowReconnect, o.RetryOnFailedConnect, o.IgnoreAuthErrorAbort)
	}
	if o.PingInterval != jetstream.PingInterval || o.MaxPingsOut != jetstream.MaxPingsOutstanding {
		t.Errorf("pings every %v, %d outstanding", o.PingInterval, o.MaxPingsOut)
	}
	if o.ReconnectBufSize != -1 {
		t.Errorf("reconnect buffer %d, want none", o.ReconnectBufSize)
	}
	if o.CustomReconnectDelayCB == nil {
		t.Fatal("no reconnect delay")
	}
	for attempt := 1; attempt < 100; attempt++ {
		d := o.CustomReconnectDelayCB(attempt)
		hi := min(jetstream.ReconnectInitialWait<<(attempt-1), jetstream.ReconnectMaxWait)
		if attempt > 20 {
			hi = jetstream.ReconnectMaxWait
		}
		if d < hi/2 || d > hi {
			t.Fatalf("attempt %d waits %v, want in [%v, %v]", attempt, d, hi/2, hi)
		}
	}
}

// An unreachable bus at start is not fatal: the connection is returned
// and connects when the server appears.
func TestConnectUnreachableAtStart(t *testing.T) {
	srv := startServer(t)
	url := srv.URL()
	srv.Stop()
	nc := connect(t, url)
	if nc.IsConnected() {
		t.Fatal("connected to a stopped server")
	}
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, waitLong, nc.IsConnected, "connected after the server started")
}

// A secure bus: nkey authentication and TLS, with RequireAuth; the
// subscriber goes live on it.
func TestConnectSecure(t *testing.T) {
	srvTLS, clientTLS := natstest.TLS(t)
	user := natstest.NewUser(t)
	srv := startServer(t,
		jetstreamtest.WithServerOptions(func(o *server.Options) {
			natstest.Auth(map[natstest.User]*jetstream.Permissions{user: nil})(o)
			o.TLSConfig = srvTLS
			o.TLS = true
		}),
		jetstreamtest.WithAdmin(nats.UserInfo(natstest.AdminUser, natstest.AdminPassword), nats.Secure(clientTLS)))
	nc := connectWith(t, jetstream.Config{URL: srv.URL(), NKeySeed: user.Seed, TLSConfig: clientTLS, RequireAuth: true})
	testutil.Eventually(t, waitLong, nc.IsConnected, "connected; last error %v", nc.LastError())
	if _, err := nc.TLSConnectionState(); err != nil {
		t.Errorf("not TLS: %v", err)
	}
	store := newStore(t)
	sub := newSubscriber(t, nc, store)
	start(t, sub)
	waitReady(t, sub)
	if _, err := publisher(t, srv).HaltAgent(ctxTimeout(t), agent, controlstore.SignalTerminate); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, waitShort, func() bool { return store.Stats().Applied == 1 }, "terminate applied")

	// The same server refuses a client without the nkey: the subscriber
	// says Unauthorized.
	bad := natstest.NewUser(t)
	nc2 := connectWith(t, jetstream.Config{URL: srv.URL(), NKeySeed: bad.Seed, TLSConfig: clientTLS})
	sub2 := newSubscriber(t, nc2, newStore(t))
	start(t, sub2)
	waitState(t, sub2, jetstream.Unauthorized)
}

// Closing the connection is the owner's doing (Run ended), not an outage:
// nothing is logged as a disconnect; a real outage is.
func TestCloseIsNotADisconnect(t *testing.T) {
	srv := startServer(t)
	l := &testutil.Logs{}
	// nats.go runs its callbacks in order on one goroutine per connection:
	// once the closed callback has run, so has any disconnect callback.
	closed := make(chan struct{})
	nc, err := jetstream.Connect(jetstream.Config{URL: srv.URL(), Logger: l.Logger()},
		nats.ClosedHandler(func(*nats.Conn) { close(closed) }))
	if err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, waitShort, nc.IsConnected, "connected")
	nc.Close()
	select {
	case <-closed:
	case <-time.After(waitShort):
		t.Fatal("the closed callback never ran")
	}
	if n := l.Count(slog.LevelWarn, "disconnected"); n != 0 {
		t.Fatalf("%d disconnect warnings after Close, want none", n)
	}

	nc, err = jetstream.Connect(jetstream.Config{URL: srv.URL(), Logger: l.Logger()})
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	testutil.Eventually(t, waitShort, nc.IsConnected, "connected")
	srv.Stop()
	testutil.Eventually(t, waitShort, func() bool { return l.Count(slog.LevelWarn, "disconnected") == 1 }, "no warning for a server that went away")
}
