package stream

import (
	"errors"
	"io"
	"strconv"
	"strings"

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

// frameTooLarge reports whether err is grpc-go's refusal of a received
// message over the size limit ("grpc: received message larger than max",
// or the same after decompression). grpc-go gives it no other mark than
// this text, and the gateway never ends a stream with ResourceExhausted
// itself.
func frameTooLarge(err error) bool {
	st, ok := status.FromError(err)
	return ok && st.Code() == codes.ResourceExhausted && strings.Contains(st.Message(), "larger than max")
}

// hint says what to do about the error that ended an attempt or a stream.
func hint(code codes.Code, err error) string {
	if _, ok := errors.AsType[*configError](err); ok {
		return "fix the subscriber's configuration; it will not dial the gateway until then"
	}
	if frameTooLarge(err) {
		return "the gateway sent a frame over the " + strconv.Itoa(maxFrameSize>>20) + " MiB limit; signals published until the stream is live again are missed"
	}
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
