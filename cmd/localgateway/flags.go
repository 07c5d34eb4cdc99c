package main

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/stream/gatewaytest/operatorapi"
)

const (
	// defaultGRPCAddr is the real gateway's default listen address and the
	// SDKs' default endpoint, so an agent set up for a local Agent Assembly
	// finds this gateway where it looks.
	defaultGRPCAddr = "127.0.0.1:50051"
	// defaultHTTPAddr is the port of Agent Assembly's HTTP control plane,
	// where the real operator API answers in local mode, so curl lines
	// written for it work here unchanged. Loopback, because the operator
	// API has no authentication (see checkAddr).
	defaultHTTPAddr = "127.0.0.1:7391"
	// defaultNATSPort is NATS's own default port. The embedded server
	// listens on loopback only: the bus has no authentication here either.
	defaultNATSPort = 4222
	// defaultAgentID is the agent registered when no -agent is given.
	defaultAgentID = "did:key:z6MkLocalDevAgent"
)

// config is what the command runs with. parseFlags builds it; tests may
// shorten the timeouts before calling serve.
type config struct {
	grpcAddr string
	httpAddr string
	// nats, when set, embeds a JetStream bus on natsAddr (see bus.go),
	// with its file store in natsStore (a temporary directory if empty).
	nats      bool
	natsPort  int
	natsStore string
	agents    []agentCred
	timeouts  httpTimeouts
}

// agentCred is one agent the gateway admits: its triple and its token.
type agentCred struct {
	agent controlstore.Agent
	token string
}

// httpTimeouts bound every phase of the operator API's connections, so
// that no client can hold the server or its shutdown for ever.
type httpTimeouts struct {
	readHeader, read, write, idle time.Duration
	// shutdown bounds the wait for requests in progress on SIGINT/SIGTERM.
	shutdown time.Duration
}

func defaultHTTPTimeouts() httpTimeouts {
	// A halt answers once its publisher accepted it, which may take up to
	// the handler's publish timeout; writing and draining allow for that.
	slowest := operatorapi.DefaultPublishTimeout + 5*time.Second
	return httpTimeouts{
		readHeader: 5 * time.Second,
		read:       10 * time.Second, // bodies are at most operatorapi.MaxBodyBytes
		write:      slowest,
		idle:       60 * time.Second,
		shutdown:   slowest,
	}
}

// agentFlags collects the raw -agent values; parseAgent checks them once
// every flag is read, so that an error never repeats a token.
type agentFlags []string

func (a *agentFlags) String() string     { return "" } // never print tokens
func (a *agentFlags) Set(v string) error { *a = append(*a, v); return nil }

const agentSyntax = "id=did:key:…[,org=…][,team=…][,token=…], or only the agent id"

// parseFlags reads the command line. It prints what went wrong (or the
// usage, for -h) to stderr and returns flag.ErrHelp or an error; both mean
// "do not start".
func parseFlags(args []string, stderr io.Writer) (config, error) {
	fs := flag.NewFlagSet("localgateway", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfg := config{timeouts: defaultHTTPTimeouts()}
	var agents agentFlags
	fs.StringVar(&cfg.grpcAddr, "grpc", defaultGRPCAddr, "`host:port` of the gateway's gRPC OpControlStream (port 0: any free port)")
	fs.StringVar(&cfg.httpAddr, "http", defaultHTTPAddr, "loopback `host:port` of the operator REST API (port 0: any free port)")
	fs.BoolVar(&cfg.nats, "nats", false, "also run the deployment's NATS JetStream bus in-process: halt-agent and global halts are\npublished on it as the operator API does, and bridged to the gRPC stream as the gateway does")
	fs.IntVar(&cfg.natsPort, "nats-port", defaultNATSPort, "`port` of the embedded NATS server on 127.0.0.1, with -nats (0: any free port)")
	fs.StringVar(&cfg.natsStore, "nats-store", "", "`directory` of the bus's file store, with -nats (default: a temporary directory, removed at exit)")
	fs.Var(&agents, "agent", "an agent the gateway admits: `"+agentSyntax+"`;\nrepeat for more agents. Without token=, a random token is issued.\nWithout -agent, one agent "+defaultAgentID+" is registered")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: localgateway [flags]

A local Agent Assembly gateway to develop agents against: the OpControlStream
gRPC service (stream/gatewaytest, the real gateway's semantics) and the
operator's REST API (stream/gatewaytest/operatorapi) to pause, resume and
terminate ops with curl. It prints the environment each agent needs.
For development only: the REST API has no authentication.

Flags:
`)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return config{}, err // the flag package has printed it
	}
	var errs []error
	if fs.NArg() > 0 {
		errs = append(errs, fmt.Errorf("unexpected arguments %q: every setting is a flag", fs.Args()))
	}
	errs = append(errs, checkAddr("-grpc", cfg.grpcAddr, defaultGRPCAddr, false), checkAddr("-http", cfg.httpAddr, defaultHTTPAddr, true))
	if sameListener(cfg.grpcAddr, cfg.httpAddr) {
		errs = append(errs, fmt.Errorf("-grpc and -http are both %q: give them different ports", cfg.grpcAddr))
	}
	if cfg.nats {
		natsAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(cfg.natsPort))
		if cfg.natsPort < 0 || cfg.natsPort > 65535 {
			errs = append(errs, fmt.Errorf("-nats-port %d: want 0 to 65535", cfg.natsPort))
		}
		for _, other := range []struct{ name, addr string }{{"-grpc", cfg.grpcAddr}, {"-http", cfg.httpAddr}} {
			if cfg.natsPort != 0 && sameListener(natsAddr, other.addr) {
				errs = append(errs, fmt.Errorf("-nats-port and %s are both %q: give them different ports", other.name, natsAddr))
			}
		}
	} else if cfg.natsStore != "" || cfg.natsPort != defaultNATSPort {
		errs = append(errs, errors.New("-nats-port and -nats-store need -nats"))
	}
	if len(agents) == 0 {
		agents = agentFlags{defaultAgentID}
	}
	tokens := map[string]int{}
	triples := map[controlstore.Agent]int{}
	for i, raw := range agents {
		a, err := parseAgent(raw)
		if err != nil {
			errs = append(errs, fmt.Errorf("-agent #%d: %w", i+1, err))
			continue
		}
		if j, dup := triples[a.agent]; dup {
			errs = append(errs, fmt.Errorf("-agent #%d: the same agent as -agent #%d", i+1, j+1))
			continue
		}
		if j, dup := tokens[a.token]; dup {
			// The gateway maps a token to one identity: the later would
			// silently replace the earlier.
			errs = append(errs, fmt.Errorf("-agent #%d: the same token as -agent #%d; each agent needs its own", i+1, j+1))
			continue
		}
		triples[a.agent], tokens[a.token] = i, i
		cfg.agents = append(cfg.agents, a)
	}
	if err := errors.Join(errs...); err != nil {
		fmt.Fprintf(fs.Output(), "localgateway: %v\nRun localgateway -h for the flags.\n", strings.ReplaceAll(err.Error(), "\n", "\nlocalgateway: "))
		return config{}, err
	}
	return cfg, nil
}

// parseAgent reads one -agent value: comma-separated key=value fields (so
// values cannot contain commas), or a bare agent id. Errors name fields
// and keys, never values, so that a token is not echoed.
func parseAgent(raw string) (agentCred, error) {
	if strings.TrimSpace(raw) == "" {
		return agentCred{}, fmt.Errorf("empty; want %s", agentSyntax)
	}
	if !strings.Contains(raw, "=") {
		raw = "id=" + raw
	}
	var a agentCred
	hasToken := false
	seen := map[string]bool{}
	for i, field := range strings.Split(raw, ",") {
		key, val, ok := strings.Cut(field, "=")
		if !ok {
			return agentCred{}, fmt.Errorf("field %d is not key=value (values cannot contain commas); want %s", i+1, agentSyntax)
		}
		if seen[key] {
			return agentCred{}, fmt.Errorf("%s= given twice", key)
		}
		seen[key] = true
		switch key {
		case "id":
			a.agent.AgentID = val
		case "org":
			a.agent.OrgID = val
		case "team":
			a.agent.TeamID = val
		case "token":
			a.token, hasToken = val, true
		default:
			return agentCred{}, fmt.Errorf("unknown key %q: want id, org, team or token", key)
		}
	}
	if a.agent.AgentID == "" {
		return agentCred{}, fmt.Errorf("no agent id: want %s", agentSyntax)
	}
	for _, f := range []struct{ key, val string }{{"id", a.agent.AgentID}, {"org", a.agent.OrgID}, {"team", a.agent.TeamID}} {
		if err := checkName(f.val); err != nil {
			return agentCred{}, fmt.Errorf("%s=: %w", f.key, err)
		}
	}
	if !hasToken {
		a.token = newToken()
		return a, nil
	}
	if err := checkToken(a.token); err != nil {
		return agentCred{}, fmt.Errorf("token=: %w", err)
	}
	return a, nil
}

// checkName refuses a part of the triple that no agent configured from the
// environment could present: the triple is compared byte for byte, and
// opcontrol.FromEnv trims the variables.
func checkName(s string) error {
	if !utf8.ValidString(s) {
		return errors.New("not valid UTF-8")
	}
	if strings.TrimSpace(s) != s {
		return errors.New("leading or trailing white space, which the agent's environment loses")
	}
	for _, r := range s {
		if unicode.IsControl(r) {
			return fmt.Errorf("control character %U", r)
		}
	}
	return nil
}

// checkToken refuses a token the gateway could not match: it trims the
// metadata value it reads, and metadata values are printable ASCII.
func checkToken(tok string) error {
	if tok == "" {
		return errors.New("empty: leave token= out to have one issued")
	}
	for i := 0; i < len(tok); i++ {
		if c := tok[i]; c <= ' ' || c > '~' {
			return fmt.Errorf("byte %d is not printable ASCII (space excluded)", i+1)
		}
	}
	return nil
}

// newToken issues a token as the gateway's Register would: 128 random
// bits, in hex.
func newToken() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24+)
	return hex.EncodeToString(b[:])
}

// checkAddr refuses an address that cannot be listened on, and, for the
// operator API, one beyond loopback: it has no authentication, so anyone
// who reached it could halt every agent.
func checkAddr(name, addr, example string, loopbackOnly bool) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%s %q: want host:port, such as %s", name, addr, example)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("%s %q: the port must be a number from 0 to 65535", name, addr)
	}
	if loopbackOnly && !isLoopback(host) {
		return fmt.Errorf("%s %q: the operator API has no authentication, so it is served on loopback only (127.0.0.1, ::1 or localhost)", name, addr)
	}
	return nil
}

func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// sameListener reports whether both flags name one fixed port on one host.
func sameListener(a, b string) bool {
	ha, pa, errA := net.SplitHostPort(a)
	hb, pb, errB := net.SplitHostPort(b)
	return errA == nil && errB == nil && pa != "0" && pa == pb && strings.EqualFold(ha, hb)
}
