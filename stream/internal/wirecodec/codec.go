// Package wirecodec is the gRPC codec shared by package stream and its test
// gateway. It is named "proto", so calls keep the content type
// application/grpc+proto, but it never lets a bad frame fail a stream:
//
//   - *Raw is passed through as bytes both ways (the subscribe request is
//     marshalled once; the test gateway sends arbitrary frames);
//   - *Message is decoded inside the codec, and a frame that does not decode
//     is reported in Message.Err instead of as an error, because grpc-go ends
//     the whole stream when a codec's Unmarshal fails.
//
// Any other proto.Message is handled like grpc's own proto codec.
package wirecodec

import (
	"fmt"

	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"

	wirev1 "github.com/opcontrol/opcontrol/proto/opcontrol/wire/v1"
)

// Name is the codec's name and the call's content-subtype.
const Name = "proto"

// Raw is a frame's bytes, sent or received as they are.
type Raw []byte

// Message receives one OpControlMessage frame. After RecvMsg, either Err is
// nil and Msg holds the decoded message, or Err says why the frame did not
// decode (then Msg is unspecified), Len is the frame's length and Prefix up
// to its first 16 bytes, for logs.
type Message struct {
	Msg    wirev1.OpControlMessage
	Err    error
	Len    int
	Prefix []byte
}

// prefixLen is how many leading bytes of a bad frame Message keeps.
const prefixLen = 16

// Codec implements encoding.CodecV2.
type Codec struct{}

var _ encoding.CodecV2 = Codec{}

// Name returns "proto".
func (Codec) Name() string { return Name }

// Marshal encodes v.
func (Codec) Marshal(v any) (mem.BufferSlice, error) {
	switch v := v.(type) {
	case *Raw:
		return mem.BufferSlice{mem.SliceBuffer(*v)}, nil
	case proto.Message:
		b, err := proto.Marshal(v)
		if err != nil {
			return nil, err
		}
		return mem.BufferSlice{mem.SliceBuffer(b)}, nil
	}
	return nil, fmt.Errorf("wirecodec: cannot marshal %T", v)
}

// Unmarshal decodes data into v. For *Message it never fails.
func (Codec) Unmarshal(data mem.BufferSlice, v any) error {
	switch v := v.(type) {
	case *Message:
		// Unknown fields are discarded (nothing reads them); the proto3
		// UTF-8 check stays: invalid UTF-8 in op_id is a malformed frame.
		unmarshalOpts := proto.UnmarshalOptions{DiscardUnknown: true}
		v.Err, v.Len, v.Prefix = nil, data.Len(), v.Prefix[:0]
		var err error
		if len(data) == 1 {
			err = unmarshalOpts.Unmarshal(data[0].ReadOnlyData(), &v.Msg)
		} else {
			buf := data.MaterializeToBuffer(mem.DefaultBufferPool())
			err = unmarshalOpts.Unmarshal(buf.ReadOnlyData(), &v.Msg)
			buf.Free()
		}
		if err != nil {
			v.Err = err
			for _, b := range data {
				need := prefixLen - len(v.Prefix)
				if need <= 0 {
					break
				}
				d := b.ReadOnlyData()
				v.Prefix = append(v.Prefix, d[:min(len(d), need)]...)
			}
		}
		return nil
	case *Raw:
		n := data.Len()
		if cap(*v) < n {
			*v = make(Raw, n)
		}
		*v = (*v)[:n]
		data.CopyTo(*v)
		return nil
	case proto.Message:
		buf := data.MaterializeToBuffer(mem.DefaultBufferPool())
		defer buf.Free()
		return proto.Unmarshal(buf.ReadOnlyData(), v)
	}
	return fmt.Errorf("wirecodec: cannot unmarshal into %T", v)
}
