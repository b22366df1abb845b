package retry

import (
	"fmt"
	"strconv"
)

// Values of a route's retryOn list (internal/proxyconfig RetryPolicy.RetryOn), and the outcomes they make retryable.
const (
	// OnConnectFailure: no connection could be established, so the request was never sent. Always retryable.
	OnConnectFailure = "connect-failure"
	// OnRefusedStream: the server refused the HTTP/2 stream without processing it. Always retryable.
	OnRefusedStream = "refused-stream"
	// On5xx: a response with status 500-599.
	On5xx = "5xx"
	// OnGatewayError: a response with status 502, 503 or 504.
	OnGatewayError = "gateway-error"
	// OnReset: no response arrived after the request was sent (connection or stream reset or closed, per-try timeout).
	OnReset = "reset"
	// OnCancelled and the following name gRPC status codes: a gRPC response whose grpc-status is that code.
	OnCancelled = "cancelled"
	// OnDeadlineExceeded is grpc-status 4.
	OnDeadlineExceeded = "deadline-exceeded"
	// OnResourceExhausted is grpc-status 8.
	OnResourceExhausted = "resource-exhausted"
	// OnInternal is grpc-status 13.
	OnInternal = "internal"
	// OnUnavailable is grpc-status 14.
	OnUnavailable = "unavailable"
)

// gRPC status codes a Policy can name.
const (
	grpcCancelled         = 1
	grpcDeadlineExceeded  = 4
	grpcResourceExhausted = 8
	grpcInternal          = 13
	grpcUnavailable       = 14
)

var grpcNames = map[string]int{
	OnCancelled: grpcCancelled, OnDeadlineExceeded: grpcDeadlineExceeded, OnResourceExhausted: grpcResourceExhausted,
	OnInternal: grpcInternal, OnUnavailable: grpcUnavailable,
}

// Outcome is how one attempt ended, as the relay saw it. The zero value is a success without a response status.
type Outcome struct {
	// ConnectFailure: no connection to the endpoint could be established (refused, unreachable, connect timeout, mesh
	// TLS handshake failure); the request was not sent.
	ConnectFailure bool
	// RefusedStream: the server refused the HTTP/2 stream (RST_STREAM with REFUSED_STREAM, or a GOAWAY whose last
	// stream ID is below the stream's); by the protocol, it did not process the request.
	RefusedStream bool
	// Reset: no response headers arrived after the request was (perhaps partly) sent: the connection or stream was
	// reset or closed.
	Reset bool
	// Timeout: the attempt's per-try timeout expired before response headers arrived. It is retryable under "reset",
	// "5xx" and "gateway-error" (the proxy would answer 504).
	Timeout bool
	// Status is the HTTP response status; 0 when no response arrived.
	Status int
	// GRPCStatus is the response's grpc-status (headers or trailers); 0 for OK or when absent.
	GRPCStatus int
}

// PolicyOptions are a Policy's settings beyond its retryOn list.
type PolicyOptions struct {
	// RetryNonIdempotent allows retrying requests with methods that are not idempotent (POST, PATCH, CONNECT, others)
	// for the method-gated outcomes (5xx, gateway-error, reset, status codes). Default false.
	RetryNonIdempotent bool
}

// Policy decides whether a failed attempt is retryable. It is immutable and safe for concurrent use; Retryable does not
// allocate.
//
// Rules, in order:
//  1. connect failures and refused streams are always retryable, whatever the method and the list: the server did not
//     process the request;
//  2. a gRPC status named in the list is retryable whatever the method (gRPC calls are all POST; naming a code states
//     the route's calls are safe to repeat);
//  3. otherwise the method must be idempotent (GET, HEAD, OPTIONS, TRACE, PUT, DELETE), unless RetryNonIdempotent;
//  4. then "reset" makes Reset retryable, "5xx" any status 500-599, "gateway-error" 502, 503 and 504, and a
//     three-digit code that status.
type Policy struct {
	reset, any5xx, gateway bool
	nonIdempotent          bool
	grpc                   uint32    // bit n: grpc-status n
	codes                  [8]uint64 // bit n-100: HTTP status n, 100-599
}

// NewPolicy compiles a retryOn list ("connect-failure", "refused-stream", "5xx", "gateway-error", "reset", an HTTP
// status code 100-599, or a gRPC code name: "cancelled", "deadline-exceeded", "resource-exhausted", "internal",
// "unavailable"). An empty list retries only connect failures and refused streams.
func NewPolicy(retryOn []string, o PolicyOptions) (*Policy, error) {
	p := &Policy{nonIdempotent: o.RetryNonIdempotent}
	for _, on := range retryOn {
		switch on {
		case OnConnectFailure, OnRefusedStream:
		case On5xx:
			p.any5xx = true
		case OnGatewayError:
			p.gateway = true
		case OnReset:
			p.reset = true
		default:
			if c, ok := grpcNames[on]; ok {
				p.grpc |= 1 << c
				continue
			}
			code, err := strconv.Atoi(on)
			if err != nil || len(on) != 3 || code < 100 || code > 599 {
				return nil, fmt.Errorf("retryOn %q: want connect-failure, refused-stream, 5xx, gateway-error, reset, "+
					"an HTTP status code or a gRPC code name", on)
			}
			p.codes[(code-100)/64] |= 1 << ((code - 100) % 64)
		}
	}
	return p, nil
}

// Retryable reports whether an attempt of a request with the given method that ended with o may be retried (the
// budget and the attempt limit permitting).
func (p *Policy) Retryable(method string, o Outcome) bool {
	if o.ConnectFailure || o.RefusedStream {
		return true
	}
	if o.GRPCStatus > 0 && o.GRPCStatus < 32 && p.grpc&(1<<o.GRPCStatus) != 0 {
		return true
	}
	if !p.nonIdempotent && !Idempotent(method) {
		return false
	}
	if o.Reset {
		return p.reset
	}
	if o.Timeout {
		return p.reset || p.any5xx || p.gateway
	}
	s := o.Status
	switch {
	case s < 100 || s > 599:
		return false
	case p.any5xx && s >= 500:
		return true
	case p.gateway && (s == 502 || s == 503 || s == 504):
		return true
	}
	return p.codes[(s-100)/64]&(1<<((s-100)%64)) != 0
}

// Failure reports whether the outcome counts as a failure of the endpoint: no response (connect failure, refused
// stream, reset, timeout), a 5xx status, or a gRPC status that gRPC maps to a 5xx (UNKNOWN, DEADLINE_EXCEEDED,
// UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS). Other gRPC errors (NOT_FOUND, PERMISSION_DENIED, ...) are answers
// of a healthy server.
func (o Outcome) Failure() bool {
	return o.ConnectFailure || o.RefusedStream || o.Reset || o.Timeout || o.Status >= 500 || GRPCFailure(o.GRPCStatus)
}

// GRPCFailure reports whether a grpc-status counts as a server failure: UNKNOWN (2), DEADLINE_EXCEEDED (4),
// UNIMPLEMENTED (12), INTERNAL (13), UNAVAILABLE (14) or DATA_LOSS (15), the codes whose HTTP equivalents are 5xx.
func GRPCFailure(code int) bool {
	switch code {
	case 2, 4, 12, 13, 14, 15:
		return true
	}
	return false
}

// Idempotent reports whether an HTTP method is idempotent by RFC 9110 §9.2.2 (methods are case-sensitive).
func Idempotent(method string) bool {
	switch method {
	case "GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE":
		return true
	}
	return false
}
