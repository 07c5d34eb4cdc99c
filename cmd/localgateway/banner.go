package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"strings"

	"github.com/opcontrol/opcontrol"
	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/stream/gatewaytest/operatorapi"
)

// printBanner prints, in one write, what a person needs to use the
// gateway: each agent's environment, a command running the example agent
// with it, and the operator's curl lines. Every line is shell-ready.
func printBanner(w io.Writer, grpcAddr, httpAddr, natsURL string, agents []agentCred) {
	gatewayURL := "http://" + dialable(grpcAddr)
	apiURL := "http://" + dialable(httpAddr)
	ops := apiURL + operatorapi.OpsPath

	var b strings.Builder
	fmt.Fprintf(&b, "opcontrol local gateway, for development only (the operator API has no authentication)\n")
	fmt.Fprintf(&b, "  gRPC OpControlStream  %s\n", grpcAddr)
	fmt.Fprintf(&b, "  operator REST API     %s\n", ops)
	if natsURL != "" {
		fmt.Fprintf(&b, "  NATS JetStream bus    %s  (halts are published here and bridged to the gRPC stream)\n", natsURL)
	}
	for _, a := range agents {
		fmt.Fprintf(&b, "\nAgent %s: its environment, and the example agent run with it from the repository root:\n", a.agent.AgentID)
		fmt.Fprintf(&b, "  %s \\\n    go run ./examples/envagent -api %s\n", envLine(agentEnv(gatewayURL, natsURL, a)), apiURL)
	}
	fmt.Fprintf(&b, "\nOperator, with OP set to an op id the agent printed ({trace_id}:{span_id}):\n")
	fmt.Fprintf(&b, "  OPS=%s\n", ops)
	for _, a := range agents {
		fmt.Fprintf(&b, "  curl --json %s $OPS   # register an op with its agent (envagent does it itself)\n", registerBody(a.agent))
	}
	fmt.Fprintf(&b, `  curl -X POST $OPS/$OP/pause       # its calls are held
  curl -X POST $OPS/$OP/resume      # and run again
  curl -X POST $OPS/$OP/terminate   # fail with FailedPrecondition, for good
  curl --json '{"action":"pause"}' $OPS/$OP/halt-agent   # every op of its agent (pause, resume, terminate)
  curl --json '{"action":"terminate"}' $OPS/global/halt  # every agent
  curl $OPS                         # every op and its state
`)
	_, _ = io.WriteString(w, b.String())
}

// agentEnv is the environment that opcontrol.FromEnv needs to reach this
// gateway as agent a. All five variables are set, empty ones included, so
// that none is taken from the shell.
func agentEnv(gatewayURL, natsURL string, a agentCred) [][2]string {
	env := [][2]string{
		{opcontrol.EnvGatewayURL, gatewayURL},
		{opcontrol.EnvOrgID, a.agent.OrgID},
		{opcontrol.EnvTeamID, a.agent.TeamID},
		{opcontrol.EnvAgentID, a.agent.AgentID},
		{opcontrol.EnvCredentialToken, a.token},
	}
	if natsURL != "" {
		env = append(env, [2]string{opcontrol.EnvNATSURL, natsURL})
	}
	return env
}

// envLine writes env as NAME=value assignments for a POSIX shell.
func envLine(env [][2]string) string {
	parts := make([]string, len(env))
	for i, kv := range env {
		parts[i] = kv[0] + "=" + shellQuote(kv[1])
	}
	return strings.Join(parts, " ")
}

// registerBody is the quoted JSON body of POST /api/v1/ops for an op of
// agent, with the shell variable $OP as the op id.
func registerBody(agent controlstore.Agent) string {
	const placeholder = "@OP@" // op_id is the first member, so the first match is it
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(struct {
		OpID    string `json:"op_id"`
		OrgID   string `json:"org_id,omitempty"`
		TeamID  string `json:"team_id,omitempty"`
		AgentID string `json:"agent_id"`
	}{placeholder, agent.OrgID, agent.TeamID, agent.AgentID})
	before, after, _ := strings.Cut(strings.TrimSpace(buf.String()), placeholder)
	return shellQuote(before) + `"$OP"` + shellQuote(after)
}

// shellQuote returns s as one word of a POSIX shell: as it is when every
// byte is safe, otherwise in single quotes.
func shellQuote(s string) string {
	safe := s != ""
	for i := 0; i < len(s) && safe; i++ {
		c := s[i]
		safe = 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("@%+=:,./_-", c) >= 0
	}
	if safe {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// dialable turns a listener's address into one a client can dial: an
// unspecified host (0.0.0.0, ::) becomes loopback.
func dialable(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
		if ip.To4() == nil {
			host = "::1"
		}
	}
	return net.JoinHostPort(host, port)
}
