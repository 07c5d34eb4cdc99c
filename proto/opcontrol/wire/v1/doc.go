// Package wirev1 holds the protobuf messages of the Agent Assembly gateway's
// op-control stream, /assembly.policy.v1.PolicyService/OpControlStream:
// OpControlSubscribeRequest goes up once, OpControlMessage comes down.
//
// # Why a private proto package
//
// Upstream defines these messages as assembly.common.v1.AgentId and
// assembly.policy.v1.{OpControlSubscribeRequest,OpControlMessage,
// OpControlSignal} in files named common.proto and policy.proto. protobuf-go
// registers every generated file path and full name in a process-wide
// registry and panics at init when one is registered twice. Agent binaries
// often link another generated copy of those names (go-sdk's internal/proto
// does), so a library that generated the upstream names would crash them.
//
// This package therefore declares the same fields, numbers and types under the
// proto package opcontrol.wire.v1 (file opcontrol/wire/v1/wire.proto). Message
// names never travel on the wire, so the bytes are identical; the stream is
// opened by its literal method path rather than by generated gRPC stubs, which
// would register the upstream service name. The tests in this directory prove
// both halves: they link an upstream-named copy (proto/internal/upstreampb)
// into the same binary and check that either copy decodes the other's bytes,
// and they pin the encoding to golden vectors in testdata/wire.
//
// # Regenerating
//
// wire.pb.go is generated; edit wire.proto and run `make generate` at the
// repository root, which uses the generator versions pinned in tools/go.mod.
package wirev1
