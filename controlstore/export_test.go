package controlstore

import "time"

// WithAfterFunc replaces time.AfterFunc for every timer of the store
// (settle, bus grace, fail-closed limits), so that tests decide when time
// passes. after must return a stop function with the meaning of
// time.Timer.Stop.
func WithAfterFunc(after func(d time.Duration, f func()) (stop func() bool)) Option {
	return func(o *options) { o.afterFunc = after }
}
