// Package contract holds the names of the gateway's op-control contract that
// more than one opcontrol package uses: the stream's method path and the
// credential metadata keys. Each is defined here once; the public names
// (stream.FullMethod, interceptor.OpControlStreamMethod, …) are aliases.
//
// docs/gateway-contract.md describes the whole contract in prose.
package contract

const (
	// ServiceName is the gateway's policy service.
	ServiceName = "assembly.policy.v1.PolicyService"
	// OpControlStreamName is the server-streaming method of ServiceName
	// that pushes op-control signals.
	OpControlStreamName = "OpControlStream"
	// OpControlStreamMethod is the full method path a client calls.
	OpControlStreamMethod = "/" + ServiceName + "/" + OpControlStreamName

	// CredentialTokenKey is the metadata key under which the gateway looks
	// for the agent's credential token first (lowercase, value trimmed; an
	// empty value counts as absent).
	CredentialTokenKey = "x-aa-credential-token"
	// AuthorizationKey is the metadata key the gateway reads second, for
	// "Bearer <token>" or "bearer <token>".
	AuthorizationKey = "authorization"
)
