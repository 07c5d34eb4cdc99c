// Package stream is the subscriber that keeps a controlstore.Store in step
// with the Agent Assembly gateway's op-control stream,
// /assembly.policy.v1.PolicyService/OpControlStream. While it is down the
// operator's kill switch is blind, so it comes back fast, never spins,
// never blocks on the store's readers, and says truthfully what state it is
// in.
//
//	cc, _ := grpc.NewClient(addr, append(stream.DialOptions(),
//		grpc.WithTransportCredentials(insecure.NewCredentials()))...)
//	store := controlstore.New(controlstore.Agent{OrgID: org, TeamID: team, AgentID: id})
//	sub := stream.NewSubscriber(cc, store, stream.WithCredentialToken(token))
//	go sub.Run(ctx)
//
// The stream is opened by its literal method path with a hand-declared
// grpc.StreamDesc: there is no generated client, and the wire messages come
// from a private proto package so that no full name clashes with another
// copy of the upstream protos in the same binary.
//
// # Live
//
// The gateway subscribes a caller to its broadcast before it sends the
// response headers, so the subscriber counts the stream live when the
// headers arrive: from then on every published signal reaches the store.
// Ready is closed the first time; Connected and Status report the present.
// The gateway replays nothing: a signal published while the stream is not
// live is lost, and Status.DownSince says since when the store may have
// missed some. The gateway's broadcast ring holds 256 envelopes of all
// agents; a subscriber that falls further behind silently skips some.
//
// # Reconnecting
//
// Run reconnects until its context ends. Between attempts it waits
// according to a backoff (DefaultBackOff: 250 ms doubling to 3 s, ±50 %
// jitter, for ever; WithBackOff replaces it), also after a stream that ended
// cleanly, so that a proxy closing idle streams cannot make it spin. The
// backoff starts over once a stream has been live for StableAfter.
//
// The connection's own backoff must not stand in the way: grpc-go waits up
// to 120 s between dials of a connection that keeps failing. Each attempt
// therefore calls ResetConnectBackoff on cc (a *grpc.ClientConn has it) and
// waits, with WaitForReady, for the connection to become ready for up to
// the next backoff interval (at least MinConnectWindow), then starts over.
// The connection is thus dialled at least once per backoff interval however
// long the gateway was away, and the stream is live again within about
// 4.5 s of its return. With a ClientConnInterface that cannot reset its
// backoff, that bound is the connection's own.
//
// # Rejections
//
// The gateway rejects a subscribe before sending anything (a trailers-only
// response). Unauthenticated and PermissionDenied put the subscriber in
// state Unauthorized; InvalidArgument and Unimplemented (no op-control
// service at that address) in Misconfigured. These are logged at error
// level once per change and retried no sooner than
// MisconfiguredRetryInterval (at most 12 attempts a minute). Any other
// error is retried on the normal backoff. A rejection reported by the call
// itself and one reported by the first receive are treated alike.
//
// # Input
//
// Frames are received as bytes and decoded one by one, so a frame that
// does not decode (garbage, truncated, invalid UTF-8 in a string field) is
// dropped without failing the stream. Signals the store refuses (unspecified
// or unknown signal, empty or oversized op id, a halt of another agent) are
// dropped too. Both are counted in Status.Dropped and in metrics, and
// logged at most once per reason every LogInterval. Applying a signal is
// O(1) and never waits for the store's readers.
//
// The message's sequence number is recorded (Status.LastSequence) but used
// for nothing else: it is one counter per gateway process, shared by every
// agent, starting at 0 and reset on restart. A decrease is accepted and
// logged as a hint that the gateway restarted; messages are never
// deduplicated on it.
//
// # Fail-closed
//
// Across reconnects the store keeps its state: a terminated op stays
// terminated and a paused op stays held (a disconnect never resumes
// anything). Ops with no recorded state run while the stream is down,
// unless WithFailClosedAfter(d) is given: then, once the stream has not been
// live for d (counting from the start of Run), every gated call fails with
// controlstore.ErrUnavailable until it is live again.
//
// # Connection
//
// DialOptions returns the recommended dial options. The gateway sends
// nothing on an idle stream, so only client keepalive pings can reveal a
// half-open connection; with DialOptions one is noticed within 15 s
// (KeepaliveTime + KeepaliveTimeout). The gateway serves plaintext only.
//
// # Observability
//
// Metrics (meter "github.com/opcontrol/opcontrol/stream"; no attribute
// carries an op id):
//
//	opcontrol.stream.up                 up-down counter, 1 per live stream
//	opcontrol.stream.reconnects         attempts after the first, by "code" that ended the previous one
//	opcontrol.stream.signals.received   decoded messages, by "signal"
//	opcontrol.stream.signals.rejected   dropped frames, by "reason"
//
// Logs go to WithLogger's logger (default slog.Default()), with bounded
// volume.
package stream
