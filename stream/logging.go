package stream

import "time"

// limit returns the log limiter of key (a drop reason, or "sequence").
// Owned by the goroutine in Run.
func (s *Subscriber) limit(key string) *logLimit {
	l, ok := s.limits[key]
	if !ok {
		l = &logLimit{}
		s.limits[key] = l
	}
	return l
}

// logLimit lets one line through per LogInterval and counts the rest.
type logLimit struct {
	last       time.Time
	suppressed uint64
}

func (l *logLimit) allow(now time.Time) bool {
	if !l.last.IsZero() && now.Sub(l.last) < LogInterval {
		l.suppressed++
		return false
	}
	l.last = now
	return true
}

func (l *logLimit) takeSuppressed() uint64 {
	n := l.suppressed
	l.suppressed = 0
	return n
}
