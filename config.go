package opcontrol

import (
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"time"

	"go.opentelemetry.io/otel/metric"
	"google.golang.org/grpc/credentials"

	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/interceptor"
	"github.com/opcontrol/opcontrol/stream"
)

// The environment variables Load reads. The first five are the ones an
// Agent Assembly platform already sets for its runtime and SDKs; the token
// variable is opcontrol's own (no upstream consumer sends the credential).
const (
	// EnvAgentID is the agent id the gateway registered (required),
	// usually a did:key:z… string.
	EnvAgentID = "AA_AGENT_ID"
	// EnvOrgID and EnvTeamID complete the agent's triple; they default to
	// empty, and must equal the registration exactly.
	EnvOrgID  = "AA_AGENT_ORG_ID"
	EnvTeamID = "AA_AGENT_TEAM_ID"
	// EnvGatewayURL is the gateway's gRPC address: host:port, or
	// http://host:port (plaintext, what the gateway serves), or
	// https://host:port (TLS with the system roots, for a TLS-terminating
	// proxy in front of the gateway). Required.
	EnvGatewayURL = "AA_GATEWAY_URL"
	// EnvCredentialToken is the credential token the gateway's Register
	// issued to this agent, sent as x-aa-credential-token. Without it the
	// real gateway refuses the stream (the kill switch then reports
	// Unauthorized).
	EnvCredentialToken = "AA_AGENT_CREDENTIAL_TOKEN"
	// EnvFailClosedAfter, a Go duration ("30s"), makes gated calls fail
	// once the gateway stream has not been live that long. Optional.
	EnvFailClosedAfter = "AA_OPCONTROL_FAIL_CLOSED_AFTER"
	// EnvNATSURL is the bus the platform configured for its gateways. The
	// bus source lives in the jetstream module; when this is set and no
	// source was added, New logs an error: halts published while the
	// gateway stream is down will be missed.
	EnvNATSURL = "AA_OPCONTROL_NATS_URL"
)

// Config is everything the kill switch needs. Load fills it from the
// environment; options and explicit fields override it.
type Config struct {
	// Agent is the triple the agent registered with the gateway.
	Agent controlstore.Agent
	// GatewayAddr is the gateway's gRPC target (host:port or any grpc-go
	// target). Required.
	GatewayAddr string
	// GatewayCredentials secures the gateway connection. nil means
	// plaintext, which is what the gateway serves (put a TLS-terminating
	// proxy in front of it on an untrusted network).
	GatewayCredentials credentials.TransportCredentials
	// CredentialToken is sent on the stream; see EnvCredentialToken.
	CredentialToken string
	// FailClosedAfter, when set, makes every gated call fail with
	// Unavailable once no gateway stream has been live for that long.
	FailClosedAfter *time.Duration
	// Sources are further feeds of signals, such as the jetstream
	// module's durable bus source.
	Sources []SourceFactory

	// Logger receives the kill switch's logs (default slog.Default()).
	Logger *slog.Logger
	// MeterProvider receives its metrics (default: the global provider).
	MeterProvider metric.MeterProvider

	// Advanced: options handed to the packages underneath, after the
	// ones Config sets.
	StoreOptions       []controlstore.Option
	StreamOptions      []stream.Option
	InterceptorOptions []interceptor.Option
}

// Option changes a Config; options are applied after the environment, so
// an explicit option wins over a variable. A nil Option is ignored.
type Option func(*Config)

// WithAgent sets the agent's triple.
func WithAgent(a controlstore.Agent) Option { return func(c *Config) { c.Agent = a } }

// WithGatewayAddr sets the gateway's gRPC target.
func WithGatewayAddr(addr string) Option { return func(c *Config) { c.GatewayAddr = addr } }

// WithGatewayCredentials secures the gateway connection.
func WithGatewayCredentials(creds credentials.TransportCredentials) Option {
	return func(c *Config) { c.GatewayCredentials = creds }
}

// WithCredentialToken sets the credential token sent on the stream.
func WithCredentialToken(token string) Option { return func(c *Config) { c.CredentialToken = token } }

// WithFailClosedAfter makes gated calls fail once no gateway stream has
// been live for d (0: whenever none is live). New refuses a negative d.
func WithFailClosedAfter(d time.Duration) Option {
	return func(c *Config) { c.FailClosedAfter = &d }
}

// WithSource adds a feed of signals beside the gateway stream.
func WithSource(f SourceFactory) Option {
	return func(c *Config) { c.Sources = append(c.Sources, f) }
}

// WithLogger sets where the kill switch logs; nil discards.
func WithLogger(l *slog.Logger) Option {
	return func(c *Config) {
		if l == nil {
			l = slog.New(slog.DiscardHandler)
		}
		c.Logger = l
	}
}

// WithMeterProvider sets where the kill switch's metrics go.
func WithMeterProvider(mp metric.MeterProvider) Option {
	return func(c *Config) { c.MeterProvider = mp }
}

// Load reads the Config from the environment (see the Env constants). It
// returns an error naming the variable for a malformed value; missing
// required values are reported by New, after options had their chance.
func Load() (Config, error) { return loadFrom(os.LookupEnv) }

func loadFrom(lookup func(string) (string, bool)) (Config, error) {
	get := func(name string) string {
		v, _ := lookup(name)
		return strings.TrimSpace(v)
	}
	var c Config
	c.Agent = controlstore.Agent{OrgID: get(EnvOrgID), TeamID: get(EnvTeamID), AgentID: get(EnvAgentID)}
	c.CredentialToken = get(EnvCredentialToken)
	if raw := get(EnvGatewayURL); raw != "" {
		addr, creds, err := parseGatewayURL(raw)
		if err != nil {
			return Config{}, fmt.Errorf("opcontrol: %s=%q: %w", EnvGatewayURL, raw, err)
		}
		c.GatewayAddr, c.GatewayCredentials = addr, creds
	}
	if raw := get(EnvFailClosedAfter); raw != "" {
		d, err := time.ParseDuration(raw)
		if err != nil || d < 0 {
			return Config{}, fmt.Errorf("opcontrol: %s=%q: want a non-negative Go duration such as 30s", EnvFailClosedAfter, raw)
		}
		c.FailClosedAfter = &d
	}
	return c, nil
}

// parseGatewayURL turns AA_GATEWAY_URL into a grpc-go target and transport
// credentials (nil: plaintext).
func parseGatewayURL(raw string) (string, credentials.TransportCredentials, error) {
	scheme, rest, ok := strings.Cut(raw, "://")
	if !ok {
		return raw, nil, nil // host:port, or a grpc-go target such as dns:host:port
	}
	u, err := url.Parse(raw)
	if err != nil {
		return "", nil, err
	}
	switch strings.ToLower(scheme) {
	case "http", "grpc":
		if u.Host == "" || (u.Path != "" && u.Path != "/") {
			return "", nil, errors.New("want http://host:port with no path")
		}
		return u.Host, nil, nil
	case "https", "grpcs":
		if u.Host == "" || (u.Path != "" && u.Path != "/") {
			return "", nil, errors.New("want https://host:port with no path")
		}
		return u.Host, systemTLS(), nil
	}
	// Any other scheme is a grpc-go resolver target (dns:///, unix:///…).
	_ = rest
	return raw, nil, nil
}

// validate reports what is missing or wrong, naming where it comes from.
func (c *Config) validate() error {
	var errs []error
	if c.Agent.AgentID == "" {
		errs = append(errs, fmt.Errorf("no agent id: set %s or use WithAgent", EnvAgentID))
	}
	if c.GatewayAddr == "" {
		errs = append(errs, fmt.Errorf("no gateway address: set %s or use WithGatewayAddr", EnvGatewayURL))
	}
	if c.FailClosedAfter != nil && *c.FailClosedAfter < 0 {
		errs = append(errs, fmt.Errorf("WithFailClosedAfter(%v): want >= 0", *c.FailClosedAfter))
	}
	if tok := c.CredentialToken; tok != "" {
		if err := checkToken(tok); err != nil {
			errs = append(errs, fmt.Errorf("credential token (%s or WithCredentialToken): %w", EnvCredentialToken, err))
		}
	}
	for i, f := range c.Sources {
		if f == nil {
			errs = append(errs, fmt.Errorf("source %d is nil", i))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("opcontrol: %w", errors.Join(errs...))
	}
	return nil
}

// checkToken refuses a token that could never authenticate. It never
// repeats the token.
func checkToken(tok string) error {
	for i := 0; i < len(tok); i++ {
		if c := tok[i]; c < 0x20 || c > 0x7e {
			return fmt.Errorf("byte %d is not printable ASCII", i)
		}
	}
	return nil
}
