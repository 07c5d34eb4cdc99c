package main

import (
	"context"
	"strings"
	"testing"

	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/internal/testutil"
)

// A malformed command line is exit status 2 with a message saying what is
// wrong, before anything listens; a token is never repeated.
func TestBadFlags(t *testing.T) {
	const secret = "s3cret-token"
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"unknown flag", []string{"-bus", "nats://127.0.0.1:4222"}, "flag provided but not defined: -bus"},
		{"-nats takes no value", []string{"-nats=nats://127.0.0.1:4222"}, "invalid boolean value"},
		{"nats port out of range", []string{"-nats", "-nats-port", "70000"}, "-nats-port 70000: want 0 to 65535"},
		{"nats port is the gateway's", []string{"-nats", "-nats-port", "50051"}, "-nats-port and -grpc are both"},
		{"nats settings without -nats", []string{"-nats-store", "/tmp/x"}, "need -nats"},
		{"argument", []string{"serve"}, `unexpected arguments ["serve"]`},
		{"grpc without port", []string{"-grpc", "127.0.0.1"}, `-grpc "127.0.0.1": want host:port`},
		{"grpc named port", []string{"-grpc", "127.0.0.1:grpc"}, "the port must be a number"},
		{"grpc port too large", []string{"-grpc", "127.0.0.1:65536"}, "the port must be a number from 0 to 65535"},
		{"http on every interface", []string{"-http", ":7391"}, "served on loopback only"},
		{"http on a public address", []string{"-http", "0.0.0.0:7391"}, "served on loopback only"},
		{"http on a name", []string{"-http", "example.com:7391"}, "served on loopback only"},
		{"same port twice", []string{"-grpc", "127.0.0.1:7391", "-http", "127.0.0.1:7391"}, "give them different ports"},
		{"empty agent", []string{"-agent", " "}, "-agent #1: empty"},
		{"no id", []string{"-agent", "org=acme,token=" + secret}, "-agent #1: no agent id"},
		{"empty id", []string{"-agent", "id=,token=" + secret}, "-agent #1: no agent id"},
		{"unknown key", []string{"-agent", "id=did:key:z6MkA,colour=red"}, `unknown key "colour": want id, org, team or token`},
		{"key twice", []string{"-agent", "id=did:key:z6MkA,id=did:key:z6MkB"}, "id= given twice"},
		{"comma in a value", []string{"-agent", "id=did:key:z6MkA,token=" + secret + ",more"}, "field 3 is not key=value (values cannot contain commas)"},
		{"space around the id", []string{"-agent", "id= did:key:z6MkA"}, "id=: leading or trailing white space"},
		{"control character", []string{"-agent", "id=did:key:z6MkA,team=a\tb"}, "team=: control character U+0009"},
		{"invalid UTF-8", []string{"-agent", "id=did:key:\xff"}, "id=: not valid UTF-8"},
		{"empty token", []string{"-agent", "id=did:key:z6MkA,token="}, "token=: empty"},
		{"space in token", []string{"-agent", "id=did:key:z6MkA,token=" + secret + " x"}, "token=: byte 13 is not printable ASCII"},
		{"same agent twice", []string{"-agent", "did:key:z6MkA", "-agent", "id=did:key:z6MkA"}, "-agent #2: the same agent as -agent #1"},
		{"same token twice", []string{"-agent", "id=did:key:z6MkA,token=" + secret, "-agent", "id=did:key:z6MkB,token=" + secret}, "-agent #2: the same token as -agent #1"},
		{"every error at once", []string{"-grpc", "x", "-agent", "org=a"}, "localgateway: -agent #1: no agent id"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr testutil.SyncBuffer
			if code := run(context.Background(), tt.args, &stdout, &stderr); code != 2 {
				t.Fatalf("exit status %d, want 2; stderr:\n%s", code, stderr.String())
			}
			if !strings.Contains(stderr.String(), tt.want) {
				t.Fatalf("stderr does not say %q:\n%s", tt.want, stderr.String())
			}
			if strings.Contains(stderr.String(), secret) {
				t.Fatalf("stderr repeats the token:\n%s", stderr.String())
			}
			if stdout.String() != "" {
				t.Fatalf("stdout %q, want nothing", stdout.String())
			}
		})
	}
}

func TestHelp(t *testing.T) {
	var stdout, stderr testutil.SyncBuffer
	if code := run(context.Background(), []string{"-h"}, &stdout, &stderr); code != 0 {
		t.Fatalf("exit status %d, want 0", code)
	}
	for _, want := range []string{"Usage: localgateway", "-agent", "-grpc", "-http", defaultAgentID} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("usage does not mention %q:\n%s", want, stderr.String())
		}
	}
}

func TestGoodFlags(t *testing.T) {
	tests := []struct {
		name           string
		args           []string
		grpc, http     string
		agents         []controlstore.Agent
		tokens         []string // "" means issued
		issuedTokenLen int
	}{
		{"defaults", nil, defaultGRPCAddr, defaultHTTPAddr,
			[]controlstore.Agent{{AgentID: defaultAgentID}}, []string{""}, 32},
		{"the common case: one agent by id", []string{"-agent", "did:key:z6MkA"}, defaultGRPCAddr, defaultHTTPAddr,
			[]controlstore.Agent{{AgentID: "did:key:z6MkA"}}, []string{""}, 32},
		{"every field, any order", []string{"-agent", "token=t0k=en,team=platform,org=acme,id=did:key:z6MkA"}, defaultGRPCAddr, defaultHTTPAddr,
			[]controlstore.Agent{{OrgID: "acme", TeamID: "platform", AgentID: "did:key:z6MkA"}}, []string{"t0k=en"}, 0},
		{"empty org and team", []string{"-agent", "id=did:key:z6MkA,org=,team="}, defaultGRPCAddr, defaultHTTPAddr,
			[]controlstore.Agent{{AgentID: "did:key:z6MkA"}}, []string{""}, 32},
		{"two agents, addresses", []string{"-grpc", "0.0.0.0:50052", "-http", "[::1]:0", "-agent", "did:key:z6MkA", "-agent", "id=did:key:z6MkA,org=other"},
			"0.0.0.0:50052", "[::1]:0",
			[]controlstore.Agent{{AgentID: "did:key:z6MkA"}, {OrgID: "other", AgentID: "did:key:z6MkA"}}, []string{"", ""}, 32},
		{"localhost", []string{"-http", "localhost:7391"}, defaultGRPCAddr, "localhost:7391",
			[]controlstore.Agent{{AgentID: defaultAgentID}}, []string{""}, 32},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stderr testutil.SyncBuffer
			cfg, err := parseFlags(tt.args, &stderr)
			if err != nil {
				t.Fatalf("%v; stderr:\n%s", err, stderr.String())
			}
			if cfg.grpcAddr != tt.grpc || cfg.httpAddr != tt.http {
				t.Errorf("addresses %q, %q; want %q, %q", cfg.grpcAddr, cfg.httpAddr, tt.grpc, tt.http)
			}
			if len(cfg.agents) != len(tt.agents) {
				t.Fatalf("agents %+v, want %+v", cfg.agents, tt.agents)
			}
			issued := map[string]bool{}
			for i, a := range cfg.agents {
				if a.agent != tt.agents[i] {
					t.Errorf("agent %d: %+v, want %+v", i, a.agent, tt.agents[i])
				}
				switch {
				case tt.tokens[i] != "" && a.token != tt.tokens[i]:
					t.Errorf("agent %d: token %q, want %q", i, a.token, tt.tokens[i])
				case tt.tokens[i] == "" && (len(a.token) != tt.issuedTokenLen || checkToken(a.token) != nil || issued[a.token]):
					t.Errorf("agent %d: issued token %q, want %d fresh printable characters", i, a.token, tt.issuedTokenLen)
				}
				issued[a.token] = true
			}
			if cfg.timeouts.readHeader <= 0 || cfg.timeouts.read <= 0 || cfg.timeouts.write <= 0 || cfg.timeouts.idle <= 0 || cfg.timeouts.shutdown <= 0 {
				t.Errorf("an unbounded HTTP phase: %+v", cfg.timeouts)
			}
		})
	}
}
