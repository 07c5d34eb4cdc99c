// Package gatewaytest is an in-process Agent Assembly gateway serving
// /assembly.policy.v1.PolicyService/OpControlStream with the real gateway's
// semantics, over real TCP on a loopback port, plus controls for tests and
// demos.
//
// Semantics, as in the real gateway:
//
//   - Checks, in order, each a trailers-only rejection: the request has no
//     agent_id (InvalidArgument); no valid credential token
//     (Unauthenticated); the requested triple is not the token's registered
//     identity (PermissionDenied); no publisher attached (Unavailable). The
//     token is read from x-aa-credential-token (trimmed; empty means
//     absent), otherwise from authorization, trimmed, as "Bearer <token>"
//     or "bearer <token>".
//   - The identity check compares the triples as the real gateway does, by
//     the joined string "{org}/{team}/{agent}": byte for byte, so case and
//     an empty org or team count, but a "/" inside a field is not told
//     apart from the separator (org "a/b" with team "c" passes for org "a"
//     with team "b/c").
//   - An admitted stream is subscribed to the broadcast ring, then the
//     response headers are sent: headers received means nothing published
//     from then on is missed.
//   - Per-agent envelopes reach the subscriptions of exactly their triple;
//     global ones ("*") reach every subscription.
//   - One sequence counter per gateway process, starting at 0, so the first
//     message carries no sequence field; Restart resets it.
//   - One bounded ring (DefaultRingCapacity) for all agents: publishing
//     never blocks and succeeds with nobody listening; a subscription more
//     than the capacity behind skips envelopes, counted in Stats and
//     SubscriberInfo but not told to the client.
//   - Nothing is replayed to a new subscription.
//
// Controls: Publish, HaltAgent, HaltAll, and PublishMessage / PublishRaw
// for arbitrary field values or bytes; RegisterToken and RevokeToken;
// RejectNext, DropNext, DropAll, SetPublisherAttached, HoldDelivery; Stop
// and Restart on the same address; SubscriberCount, WaitForSubscribers,
// Subscribers, Stats and WithSubscribeObserver.
package gatewaytest
