// Package ratelog bounds how often a source logs input it drops: the first
// line of each kind goes through, then at most one per interval, and the
// next line that goes through says how many were suppressed. A hostile
// gateway or bus can send a million bad frames; the log sees a few lines.
package ratelog

import "time"

// Interval is how often, at most, one kind of line is logged.
const Interval = 10 * time.Second

// Limiter tracks the kinds of one source. It is not safe for concurrent
// use: each source's receive loop owns one.
type Limiter struct {
	kinds map[string]*kind
}

type kind struct {
	last       time.Time
	suppressed uint64
}

// Allow reports whether a line of kind key may be logged at now, and if
// so how many lines of that kind were suppressed since the last one.
func (l *Limiter) Allow(key string, now time.Time) (ok bool, suppressed uint64) {
	if l.kinds == nil {
		l.kinds = make(map[string]*kind)
	}
	k := l.kinds[key]
	if k == nil {
		k = &kind{}
		l.kinds[key] = k
	}
	if !k.last.IsZero() && now.Sub(k.last) < Interval {
		k.suppressed++
		return false, 0
	}
	k.last = now
	n := k.suppressed
	k.suppressed = 0
	return true, n
}
