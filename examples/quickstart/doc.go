// Package quickstart holds the integration that README.md shows, as a
// runnable, compiled Example: an agent subscribes to the gateway's op-control
// stream and puts its tool client under op control. A test keeps README.md's
// snippet identical to the Example, so the README cannot rot.
package quickstart
