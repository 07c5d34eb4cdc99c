// Package faultproxy is a TCP proxy for fault-injection tests: it sits
// between a client and a server on loopback and can reset connections,
// blackhole them (stop forwarding without closing: a half-open link), delay
// them, or cut them after a number of bytes, mid-frame.
//
// It is internal test infrastructure: only loopback addresses, and every
// connection ends when the proxy is closed.
package faultproxy
