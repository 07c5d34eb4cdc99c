// Package e2e holds opcontrol's end-to-end tests and latency benchmarks: the
// whole path over real TCP on loopback, from the gateway's publish
// (stream/gatewaytest) through stream.Subscriber and controlstore.Store to
// the interceptor on a real grpc.ClientConn and the tool server
// (internal/toolserver), with real OpenTelemetry SDK spans. It has no API;
// everything is in its tests.
//
//	go test -race ./e2e/
//	go test -run '^$' -bench . -benchtime 10000x ./e2e/
package e2e
