package stream

import (
	"errors"
	"io"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// classify maps the error that ended an attempt or a stream to the state
// to wait in and its status code.
func classify(err error) (State, codes.Code) {
	if err == nil || errors.Is(err, io.EOF) {
		return Backoff, codes.OK
	}
	code := status.Code(err)
	switch code {
	case codes.Unauthenticated, codes.PermissionDenied:
		return Unauthorized, code
	case codes.InvalidArgument, codes.Unimplemented:
		return Misconfigured, code
	}
	return Backoff, code
}

// hint says what to fix for a misconfiguration code.
func hint(code codes.Code) string {
	switch code {
	case codes.Unauthenticated:
		return "the gateway needs a valid credential token: check WithCredentialToken"
	case codes.PermissionDenied:
		return "the store's org/team/agent triple must equal the token's registered identity byte for byte"
	case codes.InvalidArgument:
		return "the gateway refused the subscribe request"
	case codes.Unimplemented:
		return "no op-control service at this address (is it aa-api rather than aa-gateway?)"
	}
	return ""
}
