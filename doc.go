// Package opcontrol makes an operator's kill switch real for an AI agent's
// gRPC tool calls, in one call. It builds and runs what the lower-level
// packages provide:
//
//	controlstore   the local record of what the operator decided (the centre)
//	stream         the subscriber that keeps it in step with the gateway
//	interceptor    the gate on every outbound call, by its OpenTelemetry span
//
// and, when the deployment has one, a durable bus source from the
// jetstream module, plugged in with WithSource.
//
// FromEnv reads the variables an Agent Assembly platform already sets
// (AA_AGENT_ID, AA_AGENT_ORG_ID, AA_AGENT_TEAM_ID, AA_GATEWAY_URL) plus the
// agent's credential token (AA_AGENT_CREDENTIAL_TOKEN); explicit options
// win over the environment, and a missing or malformed value is an error
// that names it. The returned KillSwitch gives the dial options for tool
// connections, its Status, a ReadinessHandler and a gRPC health reporter
// for probes, and Shutdown.
//
//	k, err := opcontrol.FromEnv(ctx)
//	conn, err := grpc.NewClient(toolAddr, k.DialOptions(grpc.WithTransportCredentials(creds))...)
//
// A terminated op's calls then fail with codes.FailedPrecondition, a
// paused op's calls wait, and calls in flight when a terminate arrives are
// cancelled; see package interceptor for the error contract and package
// controlstore for the semantics.
package opcontrol
