// Package operatorapi serves the Agent Assembly operator's REST endpoints for
// one process, on top of a *gatewaytest.Gateway: the kill switch an operator
// flips with curl while developing an agent against the local gateway.
//
//	gw, _ := gatewaytest.Start(gatewaytest.WithToken(token, agent))
//	h, _ := operatorapi.New(gw)
//	srv := &http.Server{Addr: "127.0.0.1:7391", Handler: h, ReadHeaderTimeout: 5 * time.Second}
//	_ = srv.ListenAndServe()
//
// It holds an in-memory ops registry with the real operator API's state
// machine and an op→agent mapping, and publishes what the real one
// publishes. docs/operator-api.md describes every endpoint, body and code.
//
// # Registry
//
// States are Pending, Running, Paused, Completing and Terminated. Only these
// transitions exist, and only they publish:
//
//	pause      Running → Paused                         PAUSE
//	resume     Paused → Running                         RESUME
//	terminate  Pending, Running, Paused → Terminated    TERMINATE
//	terminate  Completing, Terminated (idempotent)      nothing
//
// Anything else is refused with 409 invalid_transition and publishes
// nothing. POST /api/v1/ops registers an op as Running, idempotently: it
// never resets the state of a known op. Completing and Terminated ops are
// removed SweepRetention after their last change (checked at most every
// SweepInterval), as upstream; after that the op is unknown (404).
//
// # Owning agent
//
// A signal reaches an agent only if the registry knows which agent owns the
// op. Upstream that mapping comes from the gateway's policy check; the real
// operator API never learns it, so there its halt-agent always answers 409.
// Here POST /api/v1/ops may carry org_id, team_id and agent_id (a local
// extension) to record it. Per-op transitions of an op without an owner
// still change the registry, as upstream, but publish nothing: no agent
// sees them (a warning is logged). halt-agent of such an op answers 409.
//
// # Publishing
//
// Per-op signals always go to the in-process gateway (Gateway.Publish for the
// owner's triple), from inside the registry's lock, so every agent sees an
// op's signals in the order of the registry's transitions. Agent and global
// halts go to the gateway too (HaltAgent, HaltAll), unless WithPublisher
// sends them to another channel (for example a JetStream bus) instead, or
// WithBridgedPublisher sends them there first and then to the gateway, as the
// real gateway's bus bridge would. A publisher's error answers 503
// channel_unavailable and nothing reaches the gateway. Halts are published
// one at a time, so the bus and the gateway see them in the same order.
//
// # Not modelled
//
// No authentication, tenant filtering or 403 (the real API has Read, Write
// and Admin roles): serve it on loopback only. No WebSocket ops_change
// events. Op ids "*" and "agent:…" are refused (400), because agents would
// read them as halts.
package operatorapi
