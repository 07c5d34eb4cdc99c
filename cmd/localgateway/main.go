// Command localgateway is a local Agent Assembly gateway to develop agents
// against, in one process, on loopback:
//
//   - the gateway's gRPC service assembly.policy.v1.PolicyService/OpControlStream
//     (stream/gatewaytest: the real gateway's checks, fan-out and sequence
//     numbers), admitting the agents given with -agent, each with its
//     credential token;
//   - the operator's REST API (stream/gatewaytest/operatorapi), so that a
//     person can pause, resume and terminate an agent's ops, halt one agent
//     or every agent, with curl. docs/operator-api.md describes it;
//   - with -nats, the deployment's NATS JetStream bus (an embedded server
//     with the stream AA_OPCONTROL), on which the REST API publishes agent
//     and global halts as the real operator API does, and a bridge that
//     republishes them on the gRPC stream as the real gateway does, so that
//     an agent's bus source (the jetstream module) can be tried locally.
//
// At start it prints the environment each agent needs (AA_GATEWAY_URL,
// AA_AGENT_ID, AA_AGENT_CREDENTIAL_TOKEN, …, as opcontrol.FromEnv reads it)
// and example curl lines. It logs subscribes and operator actions to stderr,
// and stops cleanly on SIGINT or SIGTERM (a second one kills it at once).
//
// Usage:
//
//	go run ./cmd/localgateway                                  # one agent, did:key:z6MkLocalDevAgent
//	go run ./cmd/localgateway -agent 'id=did:key:z6MkExample,org=acme,team=platform,token=dev-token'
//	go run ./cmd/localgateway -agent did:key:z6MkA -agent did:key:z6MkB -grpc 127.0.0.1:50052
//	go run ./cmd/localgateway -nats                            # with the bus on 127.0.0.1:4222
//
// Exit status: 0 after a clean shutdown, 1 when it cannot start (an address
// in use), 2 for a malformed flag.
//
// For development only: the REST API has no authentication, so -http must
// be a loopback address.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"

	"google.golang.org/grpc/codes"

	"github.com/opcontrol/opcontrol/stream/gatewaytest"
	"github.com/opcontrol/opcontrol/stream/gatewaytest/operatorapi"
)

func main() {
	os.Exit(run(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}

// run is the command: it reads args, serves until ctx ends or SIGINT or
// SIGTERM arrives, and returns the exit status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cfg, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		return 2
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewTextHandler(stderr, nil))
	if err := serve(ctx, cfg, stdout, log, stop); err != nil {
		fmt.Fprintf(stderr, "localgateway: %v\n", err)
		return 1
	}
	return 0
}

// serve runs the gateway and the operator API until ctx ends, then shuts
// both down and waits for them. It prints the banner to stdout once both
// listen. onStop is called as shutdown begins (run passes the signal
// context's stop, so that a second signal kills the process at once).
func serve(ctx context.Context, cfg config, stdout io.Writer, log *slog.Logger, onStop func()) error {
	gwOpts := []gatewaytest.Option{
		gatewaytest.WithAddress(cfg.grpcAddr),
		gatewaytest.WithSubscribeObserver(logSubscribe(log)),
	}
	for _, a := range cfg.agents {
		gwOpts = append(gwOpts, gatewaytest.WithToken(a.token, a.agent))
	}
	gw, err := gatewaytest.Start(gwOpts...)
	if err != nil {
		return fmt.Errorf("gRPC on %s: %w", cfg.grpcAddr, err)
	}
	defer gw.Close()

	apiOpts := []operatorapi.Option{operatorapi.WithLogger(log)}
	natsURL := ""
	if cfg.nats {
		// The deployment's bus: the operator API publishes halts on it and
		// the gateway's bridge republishes them on the op-control stream,
		// so the gateway delivers each halt once, as in production (the
		// operator API never publishes in-process when NATS is set).
		b, err := startBus(cfg, gw, log)
		if err != nil {
			return err
		}
		// Deferred after gw.Close: it runs first, once the HTTP server
		// has drained (no more publishes), before the gateway closes.
		defer b.close()
		natsURL = b.srv.URL()
		apiOpts = append(apiOpts, operatorapi.WithPublisher(b))
	}
	api, err := operatorapi.New(gw, apiOpts...)
	if err != nil {
		return fmt.Errorf("operator API: %w", err)
	}
	lis, err := net.Listen("tcp", cfg.httpAddr)
	if err != nil {
		return fmt.Errorf("operator API on %s: %w", cfg.httpAddr, err)
	}
	// The handler is served directly, not behind a ServeMux: a mux would
	// redirect paths such as /api/v1/ops//pause before the handler could
	// answer 400 blank_op_id.
	srv := &http.Server{
		Handler:           api,
		ReadHeaderTimeout: cfg.timeouts.readHeader,
		ReadTimeout:       cfg.timeouts.read,
		WriteTimeout:      cfg.timeouts.write,
		IdleTimeout:       cfg.timeouts.idle,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()

	printBanner(stdout, gw.Addr(), lis.Addr().String(), natsURL, cfg.agents)
	log.Info("serving", "grpc", gw.Addr(), "http", lis.Addr().String(), "agents", len(cfg.agents))

	select {
	case <-ctx.Done():
	case err := <-served: // only a failing listener ends Serve early
		return fmt.Errorf("operator API: %w", err)
	}
	onStop()
	log.Info("shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), cfg.timeouts.shutdown)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		log.Warn("requests still in progress were cut off", "err", err)
		_ = srv.Close()
	}
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("operator API: %w", err)
	}
	return nil
}

// logSubscribe logs every subscribe the gateway decides, saying why a
// refused one was refused. It never logs the token.
func logSubscribe(log *slog.Logger) func(gatewaytest.SubscribeEvent) {
	return func(ev gatewaytest.SubscribeEvent) {
		attrs := []any{"org", ev.Agent.OrgID, "team", ev.Agent.TeamID, "agent", ev.Agent.AgentID, "token_sent", ev.Token != ""}
		if ev.Code == codes.OK {
			log.Info("agent subscribed", attrs...)
			return
		}
		why := ""
		switch ev.Code {
		case codes.InvalidArgument:
			why = "the request has no agent id"
		case codes.Unauthenticated:
			why = "no credential token, or one this gateway did not issue (see -agent token=)"
		case codes.PermissionDenied:
			why = "the org/team/agent triple is not the one registered with this token"
		}
		log.Warn("subscribe refused", append(attrs, "code", ev.Code.String(), "why", why)...)
	}
}
