package jetstream

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/opcontrol/opcontrol"
)

// The environment variables FromEnv reads: the gateway's own names, with
// the same meanings.
const (
	EnvURL         = opcontrol.EnvNATSURL
	EnvCreds       = "AA_OPCONTROL_NATS_CREDS"
	EnvNKey        = "AA_OPCONTROL_NATS_NKEY"
	EnvTLS         = "AA_OPCONTROL_NATS_TLS"
	EnvRequireAuth = "AA_OPCONTROL_NATS_REQUIRE_AUTH"
)

// Connection timing set by Connect.
const (
	// PingInterval and MaxPingsOutstanding: a link that stops answering is
	// noticed after two unanswered pings, 20 to 30 s (nats.go's defaults,
	// 2 min and 2, take up to 6 min).
	PingInterval        = 10 * time.Second
	MaxPingsOutstanding = 2
	// ReconnectInitialWait and ReconnectMaxWait bound the waits between
	// reconnect attempts: 100 ms doubling to 2 s, each drawn uniformly
	// from its upper half so that a fleet does not reconnect in lockstep.
	// Attempts never stop (nats.go gives up after 60 by default, about
	// 2 minutes).
	ReconnectInitialWait = 100 * time.Millisecond
	ReconnectMaxWait     = 2 * time.Second
	// ConnectTimeout bounds one dial and handshake.
	ConnectTimeout = 2 * time.Second
	// DefaultConnectionName is the connection's name when Config.Name is
	// empty, as seen in the server's monitoring.
	DefaultConnectionName = "opcontrol-jetstream"
)

// ErrNotConfigured is returned by FromEnv when AA_OPCONTROL_NATS_URL is
// unset or blank: the bus is not in use.
var ErrNotConfigured = errors.New("jetstream: " + EnvURL + " is not set: no bus configured")

// Config says how to reach the bus. The zero value of every field but URL
// is valid. Connect never reads the environment: build a Config from it
// with FromEnv, and set fields afterwards to override it (explicit beats
// environment).
type Config struct {
	// URL is the server URL, or several separated by commas (nats://,
	// tls://, ws:// or wss://; a bare host:port means nats://).
	URL string
	// CredsFile is the path of a JWT .creds file. It wins over NKeySeed,
	// as in the gateway.
	CredsFile string
	// NKeySeed is an nkey user seed ("SU..."), the seed itself, not a path.
	NKeySeed string
	// TLS requires TLS, verified against the system roots (or TLSConfig).
	TLS bool
	// TLSConfig, when set, is the TLS configuration to use (custom roots,
	// client certificates); it implies TLS. Never read from the
	// environment.
	TLSConfig *tls.Config
	// RequireAuth refuses a bus that is not both authenticated (CredsFile
	// or NKeySeed) and encrypted (TLS, TLSConfig, or only tls:// and
	// wss:// URLs): Connect returns an error. Without it such a bus is used
	// with a warning.
	RequireAuth bool
	// Name is the connection's name (default DefaultConnectionName).
	Name string
	// InboxPrefix replaces "_INBOX" as the prefix of the connection's reply
	// and delivery subjects, so that the agent's subscribe permission can
	// be narrowed to "<prefix>.>" (see the package documentation).
	InboxPrefix string
	// Logger receives the insecure-bus warning and the connection's
	// disconnects and reconnects (default slog.Default(); use a handler
	// that discards to silence it).
	Logger *slog.Logger
}

// FromEnv returns the Config the gateway's variables describe:
//
//	AA_OPCONTROL_NATS_URL           URL (required: unset or blank → ErrNotConfigured)
//	AA_OPCONTROL_NATS_CREDS         CredsFile (wins over the nkey)
//	AA_OPCONTROL_NATS_NKEY          NKeySeed (the seed string itself)
//	AA_OPCONTROL_NATS_TLS           TLS
//	AA_OPCONTROL_NATS_REQUIRE_AUTH  RequireAuth
//
// Values are trimmed of spaces. The two switches are true for 1, true, yes
// or on and false for 0, false, no, off or empty (case-insensitive); any
// other value is an error rather than a silent false, since a mistyped
// REQUIRE_AUTH would otherwise turn the check off. Every error names the
// variable and says what is wrong, without echoing a secret; FromEnv never
// panics.
func FromEnv() (Config, error) {
	return fromLookup(os.LookupEnv)
}

func fromLookup(lookup func(string) (string, bool)) (Config, error) {
	get := func(name string) string {
		v, _ := lookup(name)
		return strings.TrimSpace(v)
	}
	var cfg Config
	cfg.URL = get(EnvURL)
	if cfg.URL == "" {
		return Config{}, ErrNotConfigured
	}
	cfg.CredsFile = get(EnvCreds)
	cfg.NKeySeed = get(EnvNKey)
	var errs []error
	for _, b := range []struct {
		name string
		dst  *bool
	}{{EnvTLS, &cfg.TLS}, {EnvRequireAuth, &cfg.RequireAuth}} {
		v, err := parseSwitch(get(b.name))
		if err != nil {
			errs = append(errs, fmt.Errorf("jetstream: %s: %w", b.name, err))
		}
		*b.dst = v
	}
	for _, f := range cfg.check() {
		errs = append(errs, fmt.Errorf("jetstream: %s: %w", f.env, f.err))
	}
	if len(errs) > 0 {
		return Config{}, errors.Join(errs...)
	}
	return cfg, nil
}

// parseSwitch reads a boolean variable with the gateway's meanings.
func parseSwitch(v string) (bool, error) {
	switch strings.ToLower(v) {
	case "1", "true", "yes", "on":
		return true, nil
	case "", "0", "false", "no", "off":
		return false, nil
	}
	return false, fmt.Errorf("%q is not a switch: use 1, true, yes or on (or 0, false, no, off)", v)
}

// fieldError is a problem with one Config field; env names the variable
// that sets it.
type fieldError struct {
	field, env string
	err        error
}

// check validates the fields that can be checked before connecting.
func (c Config) check() []fieldError {
	var errs []fieldError
	if _, err := c.urls(); err != nil {
		errs = append(errs, fieldError{"URL", EnvURL, err})
	}
	if c.CredsFile != "" {
		if err := checkCreds(c.CredsFile); err != nil {
			errs = append(errs, fieldError{"CredsFile", EnvCreds, err})
		}
	}
	if c.NKeySeed != "" {
		if _, err := userKey(c.NKeySeed); err != nil {
			errs = append(errs, fieldError{"NKeySeed", EnvNKey, err})
		}
	}
	return errs
}

// urls parses URL into its servers.
func (c Config) urls() ([]*url.URL, error) {
	if strings.TrimSpace(c.URL) == "" {
		return nil, errors.New("no server URL")
	}
	var out []*url.URL
	for _, raw := range strings.Split(c.URL, ",") {
		raw = strings.TrimSpace(raw)
		if raw == "" {
			return nil, errors.New("an empty server URL in the list")
		}
		if !strings.Contains(raw, "://") {
			raw = "nats://" + raw
		}
		u, err := url.Parse(raw)
		if err != nil {
			// url's error quotes the URL, which may hold a password.
			return nil, errors.New("a server URL does not parse")
		}
		switch u.Scheme {
		case "nats", "tls", "ws", "wss":
		default:
			return nil, fmt.Errorf("scheme %q: want nats, tls, ws or wss", u.Scheme)
		}
		if u.Host == "" {
			return nil, errors.New("a server URL has no host")
		}
		out = append(out, u)
	}
	return out, nil
}

func checkCreds(path string) error {
	st, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("the creds file cannot be read: %w", err)
	}
	if st.IsDir() {
		return fmt.Errorf("the creds file %q is a directory", path)
	}
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("the creds file cannot be read: %w", err)
	}
	return f.Close()
}

// userKey parses an nkey user seed. The error never quotes the seed.
func userKey(seed string) (nkeys.KeyPair, error) {
	kp, err := nkeys.FromSeed([]byte(seed))
	if err != nil {
		return nil, errors.New("not a valid nkey seed")
	}
	pub, err := kp.PublicKey()
	if err != nil || !nkeys.IsValidPublicUserKey(pub) {
		kp.Wipe()
		return nil, errors.New("not an nkey user seed (it must start with SU)")
	}
	return kp, nil
}

// authenticated reports whether the config authenticates the client.
func (c Config) authenticated() bool { return c.CredsFile != "" || c.NKeySeed != "" }

// encrypted reports whether the config makes the link TLS.
func (c Config) encrypted(urls []*url.URL) bool {
	if c.TLS || c.TLSConfig != nil {
		return true
	}
	for _, u := range urls {
		if u.Scheme != "tls" && u.Scheme != "wss" {
			return false
		}
	}
	return len(urls) > 0
}

// Connect connects to the bus with the settings a kill switch needs, which
// are not nats.go's defaults: reconnect for ever with jittered waits
// (ReconnectInitialWait to ReconnectMaxWait), keep trying when the bus is
// unreachable at start (the connection is returned at once and connects
// later; the subscriber reports Connecting meanwhile), go on after
// repeated authorization errors (credentials may be fixed on the server),
// pings every PingInterval, no reconnect buffer (a request while
// disconnected fails at once instead of being sent late), and credentials
// and TLS from cfg.
//
// opts are applied first; Connect's own settings win over them, except
// the connection event handlers (by default Connect logs connects,
// disconnects and reconnects; a handler in opts replaces that). It returns
// an error, and connects to nothing, when cfg is invalid, or when
// cfg.RequireAuth is set and the bus would not be both authenticated and
// encrypted.
func Connect(cfg Config, opts ...nats.Option) (*nats.Conn, error) {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With(slog.String("component", "opcontrol/jetstream"))
	if errs := cfg.check(); len(errs) > 0 {
		all := make([]error, len(errs))
		for i, f := range errs {
			all[i] = fmt.Errorf("jetstream: Config.%s: %w", f.field, f.err)
		}
		return nil, errors.Join(all...)
	}
	urls, _ := cfg.urls()
	secure := cfg.authenticated() && cfg.encrypted(urls)
	if !secure {
		if cfg.RequireAuth {
			return nil, fmt.Errorf("jetstream: refusing a bus that is not both authenticated (%t) and encrypted (%t): RequireAuth is set",
				cfg.authenticated(), cfg.encrypted(urls))
		}
		log.LogAttrs(context.Background(), slog.LevelWarn,
			"op-control bus is not both authenticated and encrypted: anyone who can reach it may read or forge halts; set credentials and TLS, and RequireAuth",
			slog.Bool("authenticated", cfg.authenticated()), slog.Bool("encrypted", cfg.encrypted(urls)))
	}
	name := cfg.Name
	if name == "" {
		name = DefaultConnectionName
	}
	// Logging first, so that the caller's own handlers replace it.
	all := append(connLogging(log), opts...)
	all = append(all,
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.RetryOnFailedConnect(true),
		nats.CustomReconnectDelay(reconnectDelay),
		nats.IgnoreAuthErrorAbort(),
		nats.PingInterval(PingInterval),
		nats.MaxPingsOutstanding(MaxPingsOutstanding),
		nats.ReconnectBufSize(-1),
		nats.Timeout(ConnectTimeout),
	)
	if cfg.InboxPrefix != "" {
		all = append(all, nats.CustomInboxPrefix(cfg.InboxPrefix))
	}
	switch {
	case cfg.CredsFile != "":
		if cfg.NKeySeed != "" {
			log.LogAttrs(context.Background(), slog.LevelWarn,
				"op-control bus: both a creds file and an nkey seed are set; the creds file wins")
		}
		all = append(all, nats.UserCredentials(cfg.CredsFile))
	case cfg.NKeySeed != "":
		kp, err := userKey(cfg.NKeySeed)
		if err != nil {
			return nil, fmt.Errorf("jetstream: Config.NKeySeed: %w", err)
		}
		pub, _ := kp.PublicKey()
		all = append(all, nats.Nkey(pub, kp.Sign))
	}
	if cfg.TLS || cfg.TLSConfig != nil {
		tc := &tls.Config{MinVersion: tls.VersionTLS12}
		if cfg.TLSConfig != nil {
			tc = cfg.TLSConfig.Clone()
			if tc.MinVersion < tls.VersionTLS12 {
				tc.MinVersion = tls.VersionTLS12
			}
		}
		all = append(all, nats.Secure(tc))
	}
	servers := make([]string, len(urls))
	for i, u := range urls {
		servers[i] = u.String()
	}
	nc, err := nats.Connect(strings.Join(servers, ","), all...)
	if err != nil {
		return nil, fmt.Errorf("jetstream: connect: %w", err)
	}
	return nc, nil
}

// reconnectDelay is the wait before the attempts-th pass over the server
// list: ReconnectInitialWait doubling to ReconnectMaxWait, drawn from the
// upper half.
func reconnectDelay(attempts int) time.Duration {
	d := ReconnectMaxWait
	if attempts < 16 {
		d = min(ReconnectInitialWait<<max(attempts-1, 0), ReconnectMaxWait)
	}
	return d/2 + rand.N(d/2+1)
}

// connLogging logs the connection's transitions, once each.
func connLogging(log *slog.Logger) []nats.Option {
	return []nats.Option{
		nats.DisconnectErrHandler(func(nc *nats.Conn, err error) {
			if nc.IsClosed() {
				return // closed by its owner (Run ended): nothing to reconnect
			}
			attrs := []slog.Attr{}
			if err != nil {
				attrs = append(attrs, slog.String("error", err.Error()))
			}
			log.LogAttrs(context.Background(), slog.LevelWarn, "op-control bus disconnected; reconnecting", attrs...)
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.LogAttrs(context.Background(), slog.LevelInfo, "op-control bus reconnected",
				slog.String("server", nc.ConnectedUrlRedacted()))
		}),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			// Permission violations are reported by the subscriber, as
			// Unauthorized; anything else (a slow consumer dropping
			// messages) matters here.
			level := slog.LevelWarn
			if errors.Is(err, nats.ErrPermissionViolation) {
				level = slog.LevelDebug
			}
			attrs := []slog.Attr{slog.String("error", err.Error())}
			if sub != nil {
				attrs = append(attrs, slog.String("subject", sub.Subject))
			}
			log.LogAttrs(context.Background(), level, "op-control bus error", attrs...)
		}),
		nats.ConnectHandler(func(nc *nats.Conn) {
			log.LogAttrs(context.Background(), slog.LevelInfo, "op-control bus connected",
				slog.String("server", nc.ConnectedUrlRedacted()))
		}),
	}
}
