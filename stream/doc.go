// Package stream is the subscriber that keeps a controlstore.Store in step
// with the Agent Assembly gateway's op-control stream,
// /assembly.policy.v1.PolicyService/OpControlStream. While it is down the
// operator's kill switch is blind, so it comes back fast, never spins,
// never blocks on the store's readers, and says truthfully what state it is
// in.
//
//	cc, _ := grpc.NewClient(addr, append(stream.GatewayDialOptions(),
//		grpc.WithTransportCredentials(insecure.NewCredentials()))...)
//	store, _ := controlstore.New(controlstore.Agent{OrgID: org, TeamID: team, AgentID: id})
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
// according to a backoff (DefaultBackoff: 250 ms doubling to 3 s, ±50 %
// jitter, for ever; WithBackoff replaces it), also after a stream that ended
// cleanly, so that a proxy closing idle streams cannot make it spin. The
// backoff starts over once a stream has been live for 10 s.
//
// The connection's own backoff must not stand in the way: grpc-go waits up
// to 120 s between dials of a connection that keeps failing. Each attempt
// waits for the connection to become ready for up to the next backoff
// interval (at least 1 s), and meanwhile has it dialled every 250 ms
// (ResetConnectBackoff; Connect when idle), then starts over. So the
// connection is ready again within about 250 ms of the gateway's return,
// however long the gateway was away.
//
// A gateway's restart would then bring its whole fleet back in the same
// instant. So after a lost stream or a failed attempt, once the connection
// is ready, the subscriber waits a random time, uniform in [0, 5 s), before
// it subscribes (WithReconnectSpread; the first attempt of Run subscribes
// at once). The draws of a fleet are independent, and uniform is the
// distribution that puts the fewest of them into any one second: of 100
// subscribers, 20 a second on average; the busiest second of a herd holds
// 28 in a typical one (the median), 31 or more in one of six, and more than
// 40 with a probability of 9e-5. The price is
// blindness: each subscriber is live again within about 5.3 s of the
// gateway's return, inside the 6 s bound RELIABILITY.md states, and 2.5 s
// later than without the spread, on average. A rejection that means
// misconfiguration is not spread: it already waits 5 to 7.5 s.
//
// This needs a connection that reports its connectivity state (GetState,
// WaitForStateChange and Connect, as *grpc.ClientConn has). With another
// ClientConnInterface, the spread is waited before the attempt, which then
// waits for the connection with WaitForReady: re-subscribes are spread
// while the connection stays up, and only as far as the connection's own
// redials when it was lost.
//
// # Rejections
//
// The gateway rejects a subscribe before sending anything (a trailers-only
// response). Unauthenticated and PermissionDenied put the subscriber in
// state Unauthorized; InvalidArgument and Unimplemented (no op-control
// service at that address) in Misconfigured. These are logged at error
// level once per change and retried no sooner than 5 s (plus up to 50 %:
// at most 12 attempts a minute). Any other error is retried on the normal
// backoff. A rejection reported by the call itself and one reported by the
// first receive are treated alike.
//
// A configuration that can never work is reported the same way rather than
// with a panic: a credential token that is empty, or holds a byte that is
// not printable ASCII, puts the subscriber in state Misconfigured with a
// Status.LastError (code InvalidArgument) that says what is wrong with the
// token without quoting it; the subscriber never dials with it, and checks
// again on the same slow schedule, so that health probes see it. Panics are
// kept for programmer errors: a nil connection, store or backoff factory.
// A negative duration given to an option is taken as 0, and logged.
//
// # Input
//
// Frames are received as bytes and decoded one by one, so a frame that
// does not decode (garbage, truncated, invalid UTF-8 in a string field) is
// dropped without failing the stream. Signals the store refuses (unspecified
// or unknown signal, empty or oversized op id, a halt of another agent) are
// dropped too. Both are counted in Status.Dropped and in metrics, and
// logged at most once per reason every 10 s. Applying a signal is O(1) and
// never waits for the store's readers.
//
// Frames of up to 64 MiB are read (grpc-go's default limit is 4 MiB). The
// gateway's own messages are under 600 bytes, but it forms op ids verbatim
// from the ids it is given, so anyone who can make it publish can make it
// publish a frame as large as what it accepts: 4 MiB for a gRPC request
// (tonic's default), and for a NATS message its max_payload, 1 MiB by
// default, which can be raised to max_pending, 64 MiB by default. Up to the
// limit, such a frame is dropped and counted
// like any other and the stream stays up, so the signal published right
// behind it is applied. A frame over the limit is refused by grpc-go from
// its length prefix, unread, and ends the stream with ResourceExhausted: the
// subscriber counts it (reason frame_too_large, Status.TooLarge, also in
// Dropped) and re-subscribes, and signals published until the new stream
// is live are missed. Memory stays bounded: one frame is read at a time,
// and decoding it costs up to about three times its size, transiently.
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
// GatewayDialOptions returns the recommended dial options for the
// connection to the gateway (the tool connection takes
// interceptor.DialOptions instead). The gateway sends nothing on an idle
// stream, so only client keepalive pings can reveal a half-open
// connection; with GatewayDialOptions one is noticed within 15 s (pings
// every 10 s, the shortest interval grpc-go allows, answered within 5 s).
// The gateway serves plaintext only.
//
// # Observability
//
// Metrics (meter "github.com/opcontrol/opcontrol/stream"; no attribute
// carries an op id):
//
//	opcontrol.stream.up                 up-down counter, 1 per live stream
//	opcontrol.stream.reconnects         attempts after the first, by "code" that ended the previous one
//	opcontrol.stream.signals.received   decoded messages, by "signal"
//	opcontrol.stream.signals.rejected   dropped frames, by "reason": malformed_frame,
//	                                    frame_too_large, or the store's reasons
//
// Logs go to WithLogger's logger (default slog.Default()), with bounded
// volume.
package stream
