// Command envagent is an agent whose kill switch is configured only through
// the environment, to try the operator's controls by hand. Start the local
// gateway first (go run ./cmd/localgateway); it prints the environment and
// the command line for this agent.
//
// The agent runs one op: an OpenTelemetry span, which the gateway knows as
// "{trace_id}:{span_id}" and which the agent prints as OP=…. It registers
// the op and its owning agent with the local gateway's operator API
// (POST /api/v1/ops; a local extension, as a real deployment learns the
// owner from the gateway's policy check), then calls a tool under that
// span every second and prints each call's outcome:
//
//	call 3: ok
//	call 4: held: op paused (4bf9…:00f0…)      ← curl -X POST $OPS/$OP/pause
//	call 4: ok after 5.2s held                  ← curl -X POST $OPS/$OP/resume
//	call 9: terminated: FailedPrecondition …    ← curl -X POST $OPS/$OP/terminate
//
// It exits 0 once its op is terminated, or on SIGINT or SIGTERM.
//
// Usage:
//
//	AA_GATEWAY_URL=http://127.0.0.1:50051 AA_AGENT_ID=did:key:… AA_AGENT_CREDENTIAL_TOKEN=… \
//	    go run ./examples/envagent [-api http://127.0.0.1:7391] [-every 1s]
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/opcontrol/opcontrol"
	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/internal/toolserver"
	"github.com/opcontrol/opcontrol/jetstream"
	"github.com/opcontrol/opcontrol/stream/gatewaytest/operatorapi"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// config is the agent's own settings; the kill switch's come from the
// environment.
type config struct {
	api   string        // the operator API's base URL; "" skips registering the op
	every time.Duration // between tool calls
	wait  time.Duration // for the gateway stream to be live
}

// run parses args, runs the agent until its op is terminated or ctx ends,
// and returns the exit status: 0 then, 1 on failure, 2 for bad flags.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("envagent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg config
	fs.StringVar(&cfg.api, "api", "http://127.0.0.1:7391", "the local gateway's operator API, where the op is registered (empty: do not register)")
	fs.DurationVar(&cfg.every, "every", time.Second, "time between tool calls")
	fs.DurationVar(&cfg.wait, "wait", 30*time.Second, "how long to wait for the gateway stream to be live")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if err := cfg.check(fs.NArg()); err != nil {
		fmt.Fprintf(stderr, "envagent: %v\n", err)
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	if err := agent(ctx, cfg, stdout, log); err != nil {
		fmt.Fprintf(stderr, "envagent: %v\n", err)
		return 1
	}
	return 0
}

func (c config) check(nargs int) error {
	if c.every <= 0 || c.wait <= 0 || nargs > 0 {
		return errors.New("-every and -wait must be positive, and no arguments are taken")
	}
	if c.api != "" {
		if u, err := url.Parse(c.api); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("-api %q: want http://host:port", c.api)
		}
	}
	return nil
}

// agent is the agent proper.
func agent(ctx context.Context, cfg config, out io.Writer, log *slog.Logger) error {
	// The kill switch, from AA_AGENT_ID, AA_GATEWAY_URL, … alone; with
	// AA_OPCONTROL_NATS_URL set (localgateway -nats prints it), it reads
	// the bus too, so that a halt published while its gateway stream is
	// down is not lost.
	k, err := opcontrol.FromEnv(ctx, opcontrol.WithLogger(log), opcontrol.WithSource(jetstream.SourceFromEnv()))
	if err != nil {
		return err
	}
	defer func() { _ = k.Close() }()

	// A tool server, and a connection on which the kill switch gates every
	// call by the OpenTelemetry span in its context.
	tools, err := toolserver.Start()
	if err != nil {
		return err
	}
	defer tools.Close()
	conn, err := grpc.NewClient(tools.Addr(), k.DialOptions(grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		return err
	}
	defer func() { _ = conn.Close() }()
	tool := toolserver.NewClient(conn)

	// The gateway replays nothing: a signal published before the stream
	// is live never arrives, so the op starts only then.
	fmt.Fprintln(out, "waiting for the gateway stream…")
	timer := time.NewTimer(cfg.wait)
	defer timer.Stop()
	select {
	case <-k.Ready():
	case <-ctx.Done():
		return nil
	case <-timer.C:
		return fmt.Errorf("the gateway stream is not live after %v: %s", cfg.wait, describe(k.Status()))
	}

	// The op: one span, under which every tool call runs.
	tp := sdktrace.NewTracerProvider()
	defer func() { _ = tp.Shutdown(context.Background()) }()
	ctx, span := tp.Tracer("envagent").Start(ctx, "envagent.op")
	defer span.End()
	op := controlstore.OpFromSpanContext(span.SpanContext())
	if cfg.api != "" {
		if err := register(ctx, cfg.api, op.String(), k.Store().Agent()); err != nil {
			return err
		}
		fmt.Fprintf(out, "live; op registered with %s; its id, for the operator:\n  OP=%s\n", cfg.api, op)
	} else {
		fmt.Fprintf(out, "live; the op's id, for the operator:\n  OP=%s\n", op)
	}

	tick := time.NewTicker(cfg.every)
	defer tick.Stop()
	for n := 1; ; n++ {
		if stop := call(ctx, out, n, tool, k.Store(), op); stop {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// call makes one tool call and prints its outcome. It reports whether the
// agent must stop: its op was terminated, or ctx ended.
func call(ctx context.Context, out io.Writer, n int, tool *toolserver.Client, store *controlstore.Store, op controlstore.Op) bool {
	// Check says what the gate will do, without waiting: only to print it.
	var paused *controlstore.PausedError
	held := errors.As(store.Check(op), &paused)
	if held {
		fmt.Fprintf(out, "call %d: held: %s paused (%s)\n", n, paused.Scope, paused.OpID)
	}
	start := time.Now()
	_, err := tool.Echo(ctx, fmt.Sprintf("call %d", n))
	var terminated *controlstore.TerminatedError
	switch {
	case err == nil && held:
		fmt.Fprintf(out, "call %d: ok after %v held\n", n, time.Since(start).Round(100*time.Millisecond))
	case err == nil:
		fmt.Fprintf(out, "call %d: ok\n", n)
	case errors.As(err, &terminated):
		fmt.Fprintf(out, "call %d: terminated: %s, %s terminated (%s)\n", n, status.Code(err), terminated.Scope, terminated.OpID)
		return true
	case ctx.Err() != nil:
		fmt.Fprintf(out, "call %d: interrupted\n", n)
		return true
	default:
		fmt.Fprintf(out, "call %d: failed: %s: %s\n", n, status.Code(err), status.Convert(err).Message())
	}
	return false
}

// register records op and its owning agent in the operator API's registry,
// so that the operator's pause, resume and terminate reach this agent.
func register(ctx context.Context, api, op string, a controlstore.Agent) error {
	body, err := json.Marshal(struct {
		OpID    string `json:"op_id"`
		OrgID   string `json:"org_id,omitempty"`
		TeamID  string `json:"team_id,omitempty"`
		AgentID string `json:"agent_id"`
	}{op, a.OrgID, a.TeamID, a.AgentID})
	if err != nil {
		return err
	}
	target := strings.TrimSuffix(api, "/") + operatorapi.OpsPath
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("registering the op: %w", err)
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode == http.StatusCreated {
		return nil
	}
	var e operatorapi.ErrorBody
	_ = json.NewDecoder(io.LimitReader(resp.Body, 4<<10)).Decode(&e)
	return fmt.Errorf("registering the op: POST %s: %s %s %s", target, resp.Status, e.Code, e.Message)
}

// describe says why the kill switch is not live, in the subscriber's words.
func describe(st opcontrol.Status) string {
	var parts []string
	for _, s := range st.Sources {
		if !s.Live {
			p := s.Name + " " + s.State
			if s.LastError != "" {
				p += " (" + s.LastError + ")"
			}
			parts = append(parts, p)
		}
	}
	return strings.Join(parts, ", ")
}
