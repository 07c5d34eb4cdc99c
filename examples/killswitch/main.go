// Command killswitch shows opcontrol's kill switch working end to end, in one
// process, on loopback only, with nothing to install or start by hand, in the
// real deployment's topology:
//
//   - the deployment's NATS JetStream bus (an embedded server, file store in a
//     temporary directory), on which the operator publishes agent and fleet
//     halts exactly as the operator API does;
//   - an Agent Assembly gateway (the in-process stream/gatewaytest, with the
//     real gateway's semantics) that knows a credential token for each agent,
//     with the bridge that republishes the bus's halts on its op-control
//     stream, as every gateway replica does;
//   - a tool server with a unary tool (Echo), a slow unary tool (Work) and a
//     streaming tool (Progress);
//   - two agents, each wired exactly as a real agent is (see startAgent): the
//     one-call kill switch (opcontrol.New) fed by the gateway stream and by
//     the bus (the jetstream module's source), and a tool client connection
//     dialled with its dial options. Each agent reaches the gateway through a
//     link the demo can cut. Every op runs under its own OpenTelemetry SDK
//     span, whose "trace_id:span_id" is the op id the operator targets.
//
// A scripted operator then acts, exactly as the real operator API and gateway
// do when a human presses a button: it pauses an op and resumes it,
// terminates an op in the middle of a call and another in the middle of a
// stream, pauses an agent while its link to the gateway is cut (the bus
// delivers it; the stream alone would have lost it), halts one agent and
// finally every agent, while other ops keep running where they should. Each
// step is checked against what must happen; the command exits 0 only if every
// step behaved, and otherwise exits 1 naming the step that did not.
//
// Usage:
//
//	go run ./examples/killswitch            # about 3 s
//	go run ./examples/killswitch -speed 0.25 -v
//
// -speed scales the demo's pacing (how long the operator lets a call be held
// or run before acting); correctness never depends on it, because every step
// waits for the store, the gateway or the tool server to confirm what happened.
// -v adds the sources' logs, the gateway's sequence numbers and the span
// events the interceptor recorded.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/opcontrol/opcontrol"
	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/internal/faultproxy"
	"github.com/opcontrol/opcontrol/internal/toolserver"
	"github.com/opcontrol/opcontrol/jetstream"
	"github.com/opcontrol/opcontrol/stream"
)

func main() {
	var cfg config
	flag.Float64Var(&cfg.speed, "speed", 1, "pacing factor: 2 runs the demo twice as fast, 0.25 four times slower (for a live audience)")
	flag.BoolVar(&cfg.verbose, "v", false, "verbose: subscriber log, gateway sequence numbers, span events")
	flag.DurationVar(&cfg.stepTimeout, "timeout", 15*time.Second, "how long one step may take before it counts as failed")
	flag.Parse()
	if cfg.speed <= 0 || cfg.stepTimeout <= 0 || flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "killswitch: -speed and -timeout must be positive, and no arguments are taken")
		flag.Usage()
		os.Exit(2)
	}
	cfg.out = os.Stdout

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	err := run(ctx, cfg)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "killswitch: FAIL: %v\n", err)
		os.Exit(1)
	}
}

// config is what main passes to run; tests build their own.
type config struct {
	out         io.Writer
	speed       float64
	verbose     bool
	stepTimeout time.Duration
	// withoutBus leaves the bus source out of the agents' kill switches:
	// tests use it to prove that the durable step needs it.
	withoutBus bool
	// gate returns the op-control dial options of a tool connection.
	// Nil means the kill switch's own; tests replace it to prove that the
	// demo's checks fail when the gate is missing.
	gate func(*opcontrol.KillSwitch) []grpc.DialOption
}

// run sets the world up, plays the scenario and tears everything down. It
// returns nil only if every step behaved as expected.
func run(ctx context.Context, cfg config) error {
	if cfg.gate == nil {
		cfg.gate = func(k *opcontrol.KillSwitch) []grpc.DialOption { return k.DialOptions() }
	}
	tl := newTimeline(cfg.out, cfg.verbose)
	w, err := newWorld(ctx, cfg, tl)
	if err != nil {
		return fmt.Errorf("setup: %w", err)
	}
	defer w.close()
	return newScenario(w).run(ctx)
}

// agent is one agent of the demo, wired as in production.
type agent struct {
	n      int // 1 or 2, as in the timeline's "1/A"
	name   string
	id     controlstore.Agent
	token  string
	k      *opcontrol.KillSwitch
	store  *controlstore.Store // k.Store()
	bus    *jetstream.BusSource
	link   *faultproxy.Proxy // the agent's link to the gateway, which the demo cuts
	client *toolserver.Client

	toolConn *grpc.ClientConn
}

// startAgent wires one agent exactly as a real agent is wired; these are the
// lines a platform engineer copies (with opcontrol.FromEnv, the values come
// from the platform's AA_* variables instead). gatewayAddr, natsURL and
// toolAddr are loopback addresses here; the gateway speaks plaintext (put a
// TLS-terminating proxy in front of it in production).
func startAgent(ctx context.Context, cfg config, tl *timeline, n int, id controlstore.Agent, token, gatewayAddr, natsURL, toolAddr string) (*agent, error) {
	a := &agent{n: n, name: fmt.Sprintf("agent-%d", n), id: id, token: token}
	var err error
	if a.link, err = faultproxy.New(gatewayAddr); err != nil {
		return nil, err
	}

	// 1. The kill switch: the agent's record of op control, kept in step
	// with the gateway's op-control stream (with the credential token the
	// gateway's agent registry issued) and with the deployment's bus, which
	// resumes where it left off after any outage. Both reconnect for ever.
	a.bus = jetstream.NewBusSource(jetstream.Config{URL: natsURL})
	sources := []opcontrol.SourceFactory{a.bus.Factory}
	if cfg.withoutBus {
		sources = nil
	}
	a.k, err = opcontrol.New(ctx, opcontrol.Config{
		Agent:           id,
		GatewayAddr:     a.link.Addr(),
		CredentialToken: token,
		Sources:         sources,
		Logger:          slog.New(tl.logHandler(a.name)),
		// A fleet spreads its re-subscribes over 5 s after a gateway
		// restart (stream.WithReconnectSpread); a demo of two agents
		// need not wait for that.
		StreamOptions: []stream.Option{stream.WithReconnectSpread(0)},
	})
	if err != nil {
		_ = a.link.Close()
		return nil, err
	}
	a.store = a.k.Store()

	// 2. Every tool client connection gates its calls on the kill switch.
	// The gate must be the outermost interceptor: list it first.
	a.toolConn, err = grpc.NewClient(toolAddr, append(cfg.gate(a.k),
		grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		a.stop()
		return nil, err
	}
	a.client = toolserver.NewClient(a.toolConn)

	// Wait until both sources are live: from then on no signal published
	// for the agent is missed.
	wctx, cancel := context.WithTimeout(ctx, cfg.stepTimeout)
	defer cancel()
	if err := poll(wctx, func() bool { return a.k.Status().Live }); err != nil {
		status := describe(a.k.Status())
		a.stop()
		return nil, fmt.Errorf("%s: kill switch not live after %v: %s", a.name, cfg.stepTimeout, status)
	}
	return a, nil
}

// describe summarises a kill switch's health for an error message.
func describe(st opcontrol.Status) string {
	parts := make([]string, 0, len(st.Sources))
	for _, h := range st.Sources {
		p := h.Name + " " + h.State
		if h.LastError != "" {
			p += " (" + h.LastError + ")"
		}
		parts = append(parts, p)
	}
	return strings.Join(parts, ", ")
}

// stop closes the agent's tool connection, shuts its kill switch down and
// closes its link. It is safe to call on a partly started agent.
func (a *agent) stop() {
	if a.toolConn != nil {
		_ = a.toolConn.Close()
	}
	if a.k != nil {
		_ = a.k.Shutdown(context.Background())
	}
	if a.link != nil {
		_ = a.link.Close()
	}
}
