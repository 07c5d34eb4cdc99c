// Command killswitch shows opcontrol's kill switch working end to end, in one
// process, on loopback only, with nothing to install or start by hand:
//
//   - an Agent Assembly gateway (the in-process stream/gatewaytest, with the
//     real gateway's semantics) that knows a credential token for each agent;
//   - a tool server with a unary tool (Echo), a slow unary tool (Work) and a
//     streaming tool (Progress);
//   - two agents, each wired exactly as a real agent is (see startAgent): a
//     controlstore.Store, a stream.Subscriber on a gateway connection dialled
//     with stream.GatewayDialOptions, and a tool client connection dialled with
//     interceptor.DialOptions. Every op runs under its own OpenTelemetry SDK
//     span, whose "trace_id:span_id" is the op id the operator targets.
//
// A scripted operator then acts through the gateway's publish API, exactly as
// the real gateway does when a human presses a button: it pauses an op and
// resumes it, terminates an op in the middle of a call and another in the
// middle of a stream, halts one agent and finally every agent, while other ops
// keep running where they should. Each step is checked against what must
// happen; the command exits 0 only if every step behaved, and otherwise exits
// 1 naming the step that did not.
//
// Usage:
//
//	go run ./examples/killswitch            # about 3 s
//	go run ./examples/killswitch -speed 0.25 -v
//
// -speed scales the demo's pacing (how long the operator lets a call be held
// or run before acting); correctness never depends on it, because every step
// waits for the store, the gateway or the tool server to confirm what happened.
// -v adds the subscriber's log, the gateway's sequence numbers and the span
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
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/interceptor"
	"github.com/opcontrol/opcontrol/internal/toolserver"
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
	// gate returns the op-control dial options of a tool connection.
	// Nil means interceptor.DialOptions; tests replace it to prove that
	// the demo's checks fail when the gate is missing.
	gate func(*controlstore.Store) []grpc.DialOption
}

// run sets the world up, plays the scenario and tears everything down. It
// returns nil only if every step behaved as expected.
func run(ctx context.Context, cfg config) error {
	if cfg.gate == nil {
		cfg.gate = func(s *controlstore.Store) []grpc.DialOption { return interceptor.DialOptions(s) }
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
	store  *controlstore.Store
	sub    *stream.Subscriber
	client *toolserver.Client

	gwConn, toolConn *grpc.ClientConn
	stopSub          context.CancelFunc
	subDone          chan struct{} // closed when Run has returned
	runErr           error         // what Run returned; read after subDone
}

// startAgent wires one agent exactly as a real agent is wired; these are the
// lines a platform engineer copies. gatewayAddr and toolAddr are loopback
// addresses here; the gateway speaks plaintext (put a TLS-terminating proxy
// in front of it in production).
func startAgent(ctx context.Context, cfg config, tl *timeline, n int, id controlstore.Agent, token, gatewayAddr, toolAddr string) (*agent, error) {
	a := &agent{n: n, name: fmt.Sprintf("agent-%d", n), id: id, subDone: make(chan struct{})}

	// 1. The agent's local record of op control: which of its ops the
	// operator paused or terminated.
	var err error
	if a.store, err = controlstore.New(id); err != nil {
		return nil, err
	}

	// 2. The subscriber keeps the store in step with the gateway's
	// op-control stream, presenting the credential token the gateway's
	// agent registry issued, and reconnects for ever.
	a.gwConn, err = grpc.NewClient(gatewayAddr, append(stream.GatewayDialOptions(),
		grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		return nil, err
	}
	a.sub = stream.NewSubscriber(a.gwConn, a.store,
		stream.WithCredentialToken(token),
		stream.WithLogger(slog.New(tl.logHandler(a.name+" subscriber"))))
	subCtx, stopSub := context.WithCancel(context.WithoutCancel(ctx))
	a.stopSub = stopSub
	go func() {
		defer close(a.subDone)
		a.runErr = a.sub.Run(subCtx) // nil once subCtx ends
	}()

	// 3. Every tool client connection gates its calls on the store. The
	// gate must be the outermost interceptor: list it first.
	a.toolConn, err = grpc.NewClient(toolAddr, append(cfg.gate(a.store),
		grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		a.stop()
		return nil, err
	}
	a.client = toolserver.NewClient(a.toolConn)

	// Wait until the gateway has subscribed the agent: from then on no
	// signal published for it is missed (the gateway replays nothing).
	t := time.NewTimer(cfg.stepTimeout)
	defer t.Stop()
	select {
	case <-a.sub.Ready():
		return a, nil
	case <-t.C:
	case <-ctx.Done():
	}
	status := describe(a.sub.Status())
	a.stop()
	return nil, fmt.Errorf("%s: op-control stream not live after %v: %s", a.name, cfg.stepTimeout, status)
}

// describe summarises a subscriber's health for an error message.
func describe(st stream.Status) string {
	s := fmt.Sprintf("subscriber %v after %d attempt(s)", st.State, st.Attempts)
	if st.LastError != nil {
		s += ", last error: " + st.LastError.Error()
	}
	return s
}

// stop closes the agent's connections and stops its subscriber, waiting for
// Run to return. It is safe to call on a partly started agent.
func (a *agent) stop() {
	if a.toolConn != nil {
		_ = a.toolConn.Close()
	}
	if a.stopSub != nil {
		a.stopSub()
		<-a.subDone
	}
	if a.gwConn != nil {
		_ = a.gwConn.Close()
	}
}
