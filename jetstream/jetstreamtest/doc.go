// Package jetstreamtest runs the deployment's NATS JetStream bus in one
// process, for tests and demos: an embedded JetStream server with a file
// store (restartable on the same port with the store kept), the stream
// AA_OPCONTROL created exactly as the gateway creates it, a publisher that
// publishes halts exactly as the operator API does, and a bridge that
// consumes the stream as the real gateway does and forwards to a
// *gatewaytest.Gateway, so that the gateway stream and the bus carry the
// same halts as in production.
//
// It embeds github.com/nats-io/nats-server/v2 (about 11 MB in a binary);
// import it from tests and demos only. Package jetstream never imports it.
package jetstreamtest
