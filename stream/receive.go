package stream

import (
	"context"
	"encoding/hex"
	"errors"
	"log/slog"
	"time"

	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/stream/internal/wirecodec"
)

// maxFrameSize is the largest frame the subscriber reads (grpc-go's
// default is 4 MiB, which a frame the gateway can be made to publish
// exceeds: see the package documentation, "Input"). 64 MiB is the default
// ceiling of a NATS message, the largest input the gateway forwards. Above
// it, grpc refuses the frame from its length prefix without reading it and
// ends the stream with ResourceExhausted (recv counts it). Frames are read
// one at a time; decoding one costs up to about three times its size,
// transiently.
const maxFrameSize = 64 << 20

// largeFrame is the size above which the decoded message is cleared once
// handled, so that the subscriber does not keep the last frame's huge op
// id alive until the next frame arrives.
const largeFrame = 64 << 10

// handle applies one received frame. It never blocks: Apply is O(1) and
// waits for no reader.
func (s *Subscriber) handle(m *wirecodec.Message) {
	s.apply(m)
	if m.Len > largeFrame {
		m.Msg.Reset()
	}
}

func (s *Subscriber) apply(m *wirecodec.Message) {
	s.received.Add(1)
	if m.Err != nil {
		s.drop(reasonMalformed, "dropped an op-control frame that does not decode",
			slog.Int("len", m.Len), slog.String("prefix_hex", hex.EncodeToString(m.Prefix)), slog.String("error", m.Err.Error()))
		return
	}
	sig := controlstore.Signal(m.Msg.GetSignal())
	s.metrics.signal(sig)
	seq := m.Msg.GetSequence()
	if prev := s.lastSeq.Load(); s.haveSeq && seq < prev {
		if ok, _ := s.limits.Allow("sequence", time.Now()); ok {
			s.log.LogAttrs(context.Background(), slog.LevelInfo,
				"op-control sequence went backwards: the gateway restarted, or this is another replica",
				slog.Uint64("previous", prev), slog.Uint64("sequence", seq))
		}
	}
	s.lastSeq.Store(seq)
	s.haveSeq = true
	if err := s.guard.apply(m.Msg.GetOpId(), sig); err != nil {
		reason := reasonOther
		opID := ""
		var re *controlstore.RejectedError
		if errors.As(err, &re) {
			reason, opID = string(re.Reason), re.OpID
		}
		s.drop(reason, "dropped an op-control signal the store refused",
			slog.String("reason", reason), slog.String("signal", sig.String()), slog.String("op_id", opID),
			slog.Uint64("sequence", seq))
	}
}

// droppedTooLarge counts a frame over maxFrameSize, which ended the stream.
func (s *Subscriber) droppedTooLarge(err error) {
	s.received.Add(1)
	s.tooLarge.Add(1)
	s.drop(reasonTooLarge, "an op-control frame exceeded the size limit: the stream ended and is re-established",
		slog.Int("limit", maxFrameSize), slog.String("error", err.Error()))
}

// drop counts and, at a bounded rate, logs dropped input.
func (s *Subscriber) drop(reason, msg string, attrs ...slog.Attr) {
	s.dropped.Add(1)
	s.metrics.reject(reason)
	ok, n := s.limits.Allow(reason, time.Now())
	if !ok {
		return
	}
	if n > 0 {
		attrs = append(attrs, slog.Uint64("suppressed_since_last", n))
	}
	s.log.LogAttrs(context.Background(), slog.LevelWarn, msg, attrs...)
}
