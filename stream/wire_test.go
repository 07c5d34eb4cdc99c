package stream_test

import (
	"bytes"
	"net"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/internal/testutil"
	"github.com/opcontrol/opcontrol/stream"
)

type rawFrame []byte

type captureCodec struct{}

func (captureCodec) Marshal(v any) ([]byte, error) { return *v.(*rawFrame), nil }
func (captureCodec) Unmarshal(b []byte, v any) error {
	*v.(*rawFrame) = append([]byte(nil), b...)
	return nil
}
func (captureCodec) Name() string { return "proto" }

// TestWireContract checks what a subscribe puts on the wire: the literal
// method path, the content type, the credential metadata, and the request
// bytes.
func TestWireContract(t *testing.T) {
	type call struct {
		method string
		md     metadata.MD
		req    []byte
	}
	calls := make(chan call, 1)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.ForceServerCodec(captureCodec{}), grpc.UnknownServiceHandler(func(_ any, ss grpc.ServerStream) error {
		var req rawFrame
		if err := ss.RecvMsg(&req); err != nil {
			return err
		}
		method, _ := grpc.MethodFromServerStream(ss)
		md, _ := metadata.FromIncomingContext(ss.Context())
		select {
		case calls <- call{method, md, req}:
		default:
		}
		return status.Error(codes.Unimplemented, "capture only")
	}))
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(lis) }()
	t.Cleanup(func() { srv.Stop(); <-done })

	a := controlstore.Agent{OrgID: "org", TeamID: "team", AgentID: "a"}
	sub := stream.NewSubscriber(dial(t, lis.Addr().String()), testutil.NewStore(t, a), stream.WithCredentialToken(token), stream.WithLogger(nil))
	start(t, sub)
	c := <-calls
	if c.method != "/assembly.policy.v1.PolicyService/OpControlStream" {
		t.Errorf("method %q", c.method)
	}
	if ct := c.md.Get("content-type"); len(ct) != 1 || ct[0] != "application/grpc+proto" {
		t.Errorf("content-type %q", ct)
	}
	if tok := c.md.Get("x-aa-credential-token"); len(tok) != 1 || tok[0] != token {
		t.Errorf("x-aa-credential-token %q", tok)
	}
	want := []byte{0x0a, 0x0e, 0x0a, 0x03, 'o', 'r', 'g', 0x12, 0x04, 't', 'e', 'a', 'm', 0x1a, 0x01, 'a'}
	if !bytes.Equal(c.req, want) {
		t.Errorf("request % x, want % x", c.req, want)
	}
}
